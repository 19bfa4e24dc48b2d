// The managed allowlist: users and groups added by `smtpfencectl allow`, kept in a
// file beside the configuration (default /etc/smtpfence/allow.list) so that they
// survive a daemon restart and a reboot. Names, not numbers, are stored: when an
// allowed account is deleted and its uid is reused by a new account, the new
// account is not allowed (names are re-resolved whenever /etc/passwd changes).
//
//   # comment
//   user alice
//   group webmail
//   user alice to smtp.sendgrid.net:587        relay exceptions (policy/destination.h)
//   group webmail to 198.51.100.0/24
//   everyone to [2001:db8::25]:25
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/names.h"
#include "policy/destination.h"

namespace smtpfence {

struct ManagedAllow {
    std::vector<std::string> users;   // in file order, unique
    std::vector<std::string> groups;  // in file order, unique
    // In file order, no two the same rule; origin is "PATH:LINE".
    std::vector<DestException> exceptions;
};

enum class AllowKind { User, Group };

// Parses the file's text; errors name path and line.
[[nodiscard]] Result<ManagedAllow> parse_managed_allow(std::string_view text,
                                                       const std::string& path);

// Reads path; a missing file is an empty list.
[[nodiscard]] Result<ManagedAllow> load_managed_allow(const std::string& path);

// Adds (add = true) or removes name under an exclusive lock (path + ".lock"), re-reading
// the file inside the lock and replacing it atomically (write, fsync, rename), so
// concurrent writers never lose each other's change. Returns the list as written and
// whether it changed (adding a present name, removing an absent one: unchanged).
struct AllowChange {
    ManagedAllow list;
    bool changed = false;
};
[[nodiscard]] Result<AllowChange> change_managed_allow(const std::string& path, AllowKind kind,
                                                       const std::string& name, bool add);

// The same for a relay exception (compared by DestException::same_rule). The
// destination is written in its canonical form; an added exception without an origin
// gets path as its origin.
[[nodiscard]] Result<AllowChange> change_managed_exception(const std::string& path,
                                                           const DestException& exception,
                                                           bool add);

}  // namespace smtpfence
