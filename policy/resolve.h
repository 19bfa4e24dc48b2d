// Resolution of a Policy's names against the accounts that exist right now.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "policy/accounts.h"
#include "policy/allow_store.h"
#include "policy/policy.h"

namespace smtpfence {

struct Allowlist {
    std::set<std::uint32_t> uids;  // always contains 0 (root)
    std::set<std::uint32_t> gids;
    // Why each uid/gid is allowed, for `check` and `status`:
    // uid 8 -> "MTA user mail", uid 1002 -> "member of allowed group mail".
    std::map<std::uint32_t, std::string> uid_reasons;
    std::map<std::uint32_t, std::string> gid_reasons;
    // An unknown user or group name, naming it (never a silent skip).
    std::vector<std::string> warnings;
};

// root is always allowed; MTA users that exist; SMTP_ALLOWUSER names (or numeric
// uids); SMTP_ALLOWGROUP gids, plus the uids of every member of those groups whether
// the group is their primary or a supplementary one (meta skgid sees only the
// socket's primary gid, so supplementary members must be allowed by uid).
// managed: the names added with `smtpfencectl allow`, resolved the same way.
[[nodiscard]] Allowlist resolve_allowlist(const Policy& policy, const AccountDb& accounts,
                                          const ManagedAllow& managed = {});

}  // namespace smtpfence
