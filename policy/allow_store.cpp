#include "policy/allow_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "common/conf_reader.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/text.h"

namespace smtpfence {
namespace {

// The managed list is short (a handful of names); 1 MiB refuses a runaway file.
constexpr std::size_t kMaxAllowFileBytes = 1U << 20U;

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
    return out;
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
        const std::string where = path + ":" + std::to_string(line_no);
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
            return fail(0, where,
                        "unknown entry \"" + text::printable(kind) + "\" (expected user or group)");
        if (std::ranges::find(*into, name) == into->end())
            into->push_back(name);
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
    std::vector<std::string>& names = kind == AllowKind::User ? out.list.users : out.list.groups;
    const auto it = std::ranges::find(names, name);
    if (add && it == names.end()) {
        names.push_back(name);
        out.changed = true;
    } else if (!add && it != names.end()) {
        names.erase(it);
        out.changed = true;
    }
    if (out.changed) {
        if (auto w = write_file_atomic(path, render(out.list), 0644); !w)
            return std::unexpected(w.error());
    }
    return out;  // the lock is released when `lock` closes
}

}  // namespace smtpfence
