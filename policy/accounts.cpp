#include "policy/accounts.h"

#include <algorithm>

#include "common/conf_reader.h"
#include "common/files.h"
#include "common/text.h"

namespace smtpfence {
namespace {

using text::printable;

// (uid_t)-1 and (gid_t)-1 mean "no id" to the kernel; no account can have them.
constexpr std::uint64_t kMaxId = 4294967294U;

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    while (true) {
        const std::size_t at = s.find(sep);
        out.push_back(s.substr(0, at));
        if (at == std::string_view::npos)
            return out;
        s.remove_prefix(at + 1);
    }
}

// Calls each(line_number, line) for every line that holds an entry. As glibc's files
// backend: leading blanks skipped, empty lines and '#' comments ignored. '+' and '-'
// lines are NIS compat entries that the files backend does not resolve; ignored too.
template <class Each>
void for_each_entry(std::string_view text, Each each) {
    int number = 0;
    while (!text.empty()) {
        const std::size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        ++number;
        while (!line.empty() && is_space(line.front()))
            line.remove_prefix(1);
        if (line.empty() || line.front() == '#' || line.front() == '+' || line.front() == '-') {
            continue;
        }
        each(number, line);
    }
}

// The tail of a "malformed entry" warning. The line itself is not quoted: its second
// field may hold a password hash, which has no place in a log.
std::string describe_fields(const std::vector<std::string_view>& fields, std::size_t expected,
                            const char* layout) {
    std::string out;
    if (!fields[0].empty())
        out += " \"" + printable(fields[0]) + "\"";
    out += " (" + std::to_string(fields.size()) + " fields, expected " + std::to_string(expected) +
           ": " + layout + "); skipped";
    if (fields[0].empty() && fields.size() == expected)
        out = " (empty name); skipped";
    return out;
}

std::string where(const std::string& path, int line) {
    return path + ":" + std::to_string(line);
}

// Adds name -> index unless the name is already there (the first entry wins, as with
// getpwnam/getgrnam on the files backend), warning about the shadowed entry.
void index_name(std::map<std::string, std::size_t, std::less<>>& index, std::vector<int>& lines,
                const std::string& name, std::size_t position, const std::string& path, int line,
                const char* kind, std::vector<std::string>& warnings) {
    const auto [it, inserted] = index.try_emplace(name, position);
    if (!inserted) {
        warnings.push_back(where(path, line) + ": " + kind + " \"" + printable(name) +
                           "\" repeated (first on line " + std::to_string(lines[it->second]) +
                           "); lookups by name use the first");
    }
}

void parse_passwd(std::string_view text, const std::string& path, std::vector<Account>& accounts,
                  std::map<std::string, std::size_t, std::less<>>& index,
                  std::vector<std::string>& warnings) {
    std::vector<int> lines;  // line of each account, for messages
    for_each_entry(text, [&](int number, std::string_view line) {
        const std::vector<std::string_view> f = split(line, ':');
        if (f.size() != 7 || f[0].empty()) {
            warnings.push_back(where(path, number) + ": malformed passwd entry" +
                               describe_fields(f, 7, "name:password:uid:gid:gecos:home:shell"));
            return;
        }
        const auto uid = text::parse_unsigned(f[2], kMaxId);
        const auto gid = text::parse_unsigned(f[3], kMaxId);
        if (!uid || !gid) {
            warnings.push_back(
                where(path, number) + ": user \"" + printable(f[0]) +
                "\": " + (uid ? "gid \"" + printable(f[3]) : "uid \"" + printable(f[2])) +
                "\" is not a number from 0 to " + std::to_string(kMaxId) + "; skipped");
            return;
        }
        Account account{std::string(f[0]), static_cast<std::uint32_t>(*uid),
                        static_cast<std::uint32_t>(*gid), std::string(f[5])};
        index_name(index, lines, account.name, accounts.size(), path, number, "user", warnings);
        accounts.push_back(std::move(account));
        lines.push_back(number);
    });
}

void parse_group(std::string_view text, const std::string& path, std::vector<GroupEntry>& groups,
                 std::map<std::string, std::size_t, std::less<>>& index,
                 std::vector<std::string>& warnings) {
    std::vector<int> lines;
    for_each_entry(text, [&](int number, std::string_view line) {
        const std::vector<std::string_view> f = split(line, ':');
        if (f.size() != 4 || f[0].empty()) {
            warnings.push_back(where(path, number) + ": malformed group entry" +
                               describe_fields(f, 4, "name:password:gid:members"));
            return;
        }
        const auto gid = text::parse_unsigned(f[2], kMaxId);
        if (!gid) {
            warnings.push_back(where(path, number) + ": group \"" + printable(f[0]) + "\": gid \"" +
                               printable(f[2]) + "\" is not a number from 0 to " +
                               std::to_string(kMaxId) + "; skipped");
            return;
        }
        GroupEntry group{std::string(f[0]), static_cast<std::uint32_t>(*gid), {}};
        for (const std::string_view member : split(f[3], ',')) {
            const std::string_view m = text::trim(member);
            if (!m.empty())
                group.members.emplace_back(m);
        }
        index_name(index, lines, group.name, groups.size(), path, number, "group", warnings);
        groups.push_back(std::move(group));
        lines.push_back(number);
    });
}

}  // namespace

Result<AccountDb> AccountDb::load(const std::string& passwd_path, const std::string& group_path) {
    auto passwd = read_text_file(passwd_path);
    if (!passwd)
        return std::unexpected(passwd.error());
    auto group = read_text_file(group_path);
    if (!group)
        return std::unexpected(group.error());
    AccountDb db;
    parse_passwd(*passwd, passwd_path, db.accounts_, db.user_index_, db.warnings_);
    parse_group(*group, group_path, db.groups_, db.group_index_, db.warnings_);
    return db;
}

AccountDb AccountDb::parse(std::string_view passwd_text, std::string_view group_text) {
    AccountDb db;
    parse_passwd(passwd_text, "passwd", db.accounts_, db.user_index_, db.warnings_);
    parse_group(group_text, "group", db.groups_, db.group_index_, db.warnings_);
    return db;
}

const Account* AccountDb::user(std::string_view name) const {
    const auto it = user_index_.find(name);
    return it == user_index_.end() ? nullptr : &accounts_[it->second];
}

const Account* AccountDb::user_by_uid(std::uint32_t uid) const {
    const auto it = std::find_if(accounts_.begin(), accounts_.end(),
                                 [&](const Account& a) { return a.uid == uid; });
    return it == accounts_.end() ? nullptr : &*it;
}

const GroupEntry* AccountDb::group(std::string_view name) const {
    const auto it = group_index_.find(name);
    return it == group_index_.end() ? nullptr : &groups_[it->second];
}

const GroupEntry* AccountDb::group_by_gid(std::uint32_t gid) const {
    const auto it = std::find_if(groups_.begin(), groups_.end(),
                                 [&](const GroupEntry& g) { return g.gid == gid; });
    return it == groups_.end() ? nullptr : &*it;
}

std::vector<std::uint32_t> AccountDb::uids_in_group(std::uint32_t gid) const {
    std::vector<std::uint32_t> uids;
    for (const Account& a : accounts_) {
        if (a.gid == gid)
            uids.push_back(a.uid);
    }
    // Every entry with this gid counts, as initgroups(3) scans the whole file: a gid
    // listed twice under two names gives its members from both lines.
    for (const GroupEntry& g : groups_) {
        if (g.gid != gid)
            continue;
        for (const std::string& member : g.members) {
            if (const Account* a = user(member))
                uids.push_back(a->uid);
        }
    }
    std::sort(uids.begin(), uids.end());
    uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
    return uids;
}

std::vector<std::uint32_t> AccountDb::supplementary_gids(std::string_view name) const {
    std::vector<std::uint32_t> gids;
    for (const GroupEntry& g : groups_) {
        if (std::find(g.members.begin(), g.members.end(), name) != g.members.end())
            gids.push_back(g.gid);
    }
    std::sort(gids.begin(), gids.end());
    gids.erase(std::unique(gids.begin(), gids.end()), gids.end());
    return gids;
}

}  // namespace smtpfence
