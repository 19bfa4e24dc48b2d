// The server's accounts, read from passwd(5) and group(5) files. We parse the files
// (not NSS) because the daemon watches these exact files for changes and re-resolves
// its allowlist; paths are parameters so tests use temporary files.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace smtpfence {

struct Account {
    std::string name;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;  // primary group
    std::string home;
};

struct GroupEntry {
    std::string name;
    std::uint32_t gid = 0;
    std::vector<std::string> members;  // supplementary members (4th field)
};

class AccountDb {
  public:
    // Malformed lines are skipped (as glibc's files backend does) and reported in
    // warnings(); a missing or unreadable file is an error.
    [[nodiscard]] static Result<AccountDb> load(const std::string& passwd_path,
                                                const std::string& group_path);
    // From text, for tests and for callers that already hold the content.
    [[nodiscard]] static AccountDb parse(std::string_view passwd_text, std::string_view group_text);

    [[nodiscard]] const Account* user(std::string_view name) const;
    [[nodiscard]] const Account* user_by_uid(std::uint32_t uid) const;
    [[nodiscard]] const GroupEntry* group(std::string_view name) const;
    [[nodiscard]] const GroupEntry* group_by_gid(std::uint32_t gid) const;

    // Every uid whose account has gid as its primary group or lists the group as
    // supplementary (by member name), sorted and unique.
    [[nodiscard]] std::vector<std::uint32_t> uids_in_group(std::uint32_t gid) const;

    // The gids of the groups that list name as a member (what initgroups(3) adds to
    // the primary group), sorted and unique.
    [[nodiscard]] std::vector<std::uint32_t> supplementary_gids(std::string_view name) const;

    [[nodiscard]] const std::vector<Account>& accounts() const { return accounts_; }
    [[nodiscard]] const std::vector<std::string>& warnings() const { return warnings_; }

  private:
    std::vector<Account> accounts_;
    std::vector<GroupEntry> groups_;
    std::map<std::string, std::size_t, std::less<>> user_index_;  // first entry wins, as glibc
    std::map<std::string, std::size_t, std::less<>> group_index_;
    std::vector<std::string> warnings_;
};

}  // namespace smtpfence
