#include "policy/allow_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <optional>

#include "common/conf_reader.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/text.h"

namespace smtpfence {
namespace {

// The managed list is short (a handful of names); 1 MiB refuses a runaway file.
constexpr std::size_t kMaxAllowFileBytes = 1U << 20U;

std::string exception_line(const DestException& e) {
    switch (e.who.kind) {
        case SubjectKind::User:
            return "user " + e.who.name + " to " + e.to.text();
        case SubjectKind::Group:
            return "group " + e.who.name + " to " + e.to.text();
        case SubjectKind::Everyone:
            break;
    }
    return "everyone to " + e.to.text();
}

std::string render(const ManagedAllow& list) {
    std::string out =
        "# smtpfence managed allowlist: users and groups that may connect to remote SMTP\n"
        "# ports directly. Changed by `smtpfencectl allow` and `smtpfencectl deny`, which\n"
        "# rewrite this file whole (comments are not kept). Names are re-resolved when\n"
        "# /etc/passwd or /etc/group change.\n";
    for (const std::string& u : list.users)
        out += "user " + u + "\n";
    for (const std::string& g : list.groups)
        out += "group " + g + "\n";
    if (!list.exceptions.empty())
        out += "# Relay exceptions: who may connect to which HOST[:PORT] only.\n";
    for (const DestException& e : list.exceptions)
        out += exception_line(e) + "\n";
    return out;
}

std::vector<std::string_view> words(std::string_view s) {
    std::vector<std::string_view> out;
    while (!(s = text::trim(s)).empty()) {
        const auto end = std::min(s.find_first_of(" \t"), s.size());
        out.push_back(s.substr(0, end));
        s.remove_prefix(end);
    }
    return out;
}

// Adds item unless present, or removes it; whether the list changed.
template <class T, class Same>
bool add_or_remove(std::vector<T>& items, const T& item, bool add, Same same) {
    const auto it =
        std::ranges::find_if(items, [&](const T& x) { return std::invoke(same, x, item); });
    if (add && it == items.end()) {
        items.push_back(item);
        return true;
    }
    if (!add && it != items.end()) {
        items.erase(it);
        return true;
    }
    return false;
}

Result<void> check_subject(const Subject& who) {
    if (who.kind == SubjectKind::Everyone) {
        if (!who.name.empty())
            return fail(0, "everyone", "takes no name (got \"" + text::printable(who.name) + "\")");
        return {};
    }
    if (const std::string problem = account_name_problem(who.name); !problem.empty())
        return fail(0, "name \"" + text::printable(who.name) + "\"", problem);
    return {};
}

// "user NAME to DEST", "group NAME to DEST" or "everyone to DEST" (as words), or nullopt
// when the line is not an exception line.
std::optional<Result<void>> parse_exception(const std::vector<std::string_view>& w,
                                            const std::string& where, ManagedAllow& out) {
    DestException e;
    std::string_view dest;
    if (w[0] == "everyone") {
        if (w.size() != 3 || w[1] != "to")
            return fail(0, where, "expected \"everyone to HOST[:PORT]\"");
        dest = w[2];
    } else if ((w[0] == "user" || w[0] == "group") && w.size() >= 3 && w[2] == "to") {
        if (w.size() != 4)
            return fail(0, where, "expected \"" + std::string(w[0]) + " NAME to HOST[:PORT]\"");
        e.who = Subject{w[0] == "user" ? SubjectKind::User : SubjectKind::Group, std::string(w[1])};
        dest = w[3];
    } else {
        return std::nullopt;
    }
    if (auto ok = check_subject(e.who); !ok)
        return std::unexpected(ok.error().wrap(where));
    auto to = parse_destination(dest);
    if (!to)
        return std::unexpected(to.error().wrap(where));
    e.to = std::move(*to);
    e.origin = where;
    add_or_remove(out.exceptions, e, true, &DestException::same_rule);
    return Result<void>{};
}

Result<void> parse_line(std::string_view line, const std::string& where, ManagedAllow& out) {
    if (auto done = parse_exception(words(line), where, out))
        return *done;
    const auto space = line.find_first_of(" \t");
    if (space == std::string_view::npos) {
        return fail(
            0, where,
            "expected \"user NAME\" or \"group NAME\", got \"" + text::printable(line) + "\"");
    }
    const std::string_view kind = line.substr(0, space);
    const std::string name(text::trim(line.substr(space + 1)));
    if (const std::string problem = account_name_problem(name); !problem.empty())
        return fail(0, where, "name \"" + text::printable(name) + "\": " + problem);
    std::vector<std::string>* into = nullptr;
    if (kind == "user")
        into = &out.users;
    else if (kind == "group")
        into = &out.groups;
    else
        return fail(
            0, where,
            "unknown entry \"" + text::printable(kind) + "\" (expected user, group or everyone)");
    add_or_remove(*into, name, true, std::equal_to<>());
    return {};
}

// Runs edit on the list as the file holds it, under an exclusive lock (path + ".lock"),
// and replaces the file atomically when edit reports a change.
Result<AllowChange> change_locked(const std::string& path,
                                  const std::function<bool(ManagedAllow&)>& edit) {
    // flock on a separate lock file: the list itself is replaced by rename, and a lock
    // on a file that is renamed away would not exclude the next writer.
    const std::string lock_path = path + ".lock";
    UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock.valid())
        return fail(errno, "open lock " + lock_path);
    while (::flock(lock.get(), LOCK_EX) != 0) {
        if (errno != EINTR)
            return fail(errno, "lock " + lock_path);
    }
    auto current = load_managed_allow(path);
    if (!current)
        return std::unexpected(current.error());
    AllowChange out{std::move(*current), false};
    out.changed = edit(out.list);
    if (out.changed) {
        if (auto w = write_file_atomic(path, render(out.list), 0644); !w)
            return std::unexpected(w.error());
    }
    return out;  // the lock is released when `lock` closes
}

}  // namespace

Result<ManagedAllow> parse_managed_allow(std::string_view text, const std::string& path) {
    ManagedAllow out;
    std::size_t line_no = 0;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        const std::string_view raw = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        ++line_no;
        const std::string_view line = text::trim(raw);
        if (line.empty() || line.front() == '#')
            continue;
        if (auto done = parse_line(line, path + ":" + std::to_string(line_no), out); !done)
            return std::unexpected(done.error());
    }
    return out;
}

Result<ManagedAllow> load_managed_allow(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 && errno == ENOENT)
        return ManagedAllow{};
    auto text = read_text_file(path, kMaxAllowFileBytes);
    if (!text)
        return std::unexpected(text.error());
    return parse_managed_allow(*text, path);
}

Result<AllowChange> change_managed_allow(const std::string& path, AllowKind kind,
                                         const std::string& name, bool add) {
    if (const std::string problem = account_name_problem(name); !problem.empty())
        return fail(0, "name \"" + text::printable(name) + "\"", problem);
    return change_locked(path, [&](ManagedAllow& list) {
        return add_or_remove(kind == AllowKind::User ? list.users : list.groups, name, add,
                             std::equal_to<>());
    });
}

Result<AllowChange> change_managed_exception(const std::string& path,
                                             const DestException& exception, bool add) {
    if (auto ok = check_subject(exception.who); !ok)
        return std::unexpected(ok.error());
    // Written as text, so what is kept is what reading that text back gives.
    auto to = parse_destination(exception.to.text());
    if (!to)
        return std::unexpected(to.error());
    const DestException canonical{exception.who, std::move(*to),
                                  exception.origin.empty() ? path : exception.origin};
    return change_locked(path, [&](ManagedAllow& list) {
        return add_or_remove(list.exceptions, canonical, add, &DestException::same_rule);
    });
}

}  // namespace smtpfence
