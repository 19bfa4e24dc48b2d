// The one rule for user and group names, wherever they come from (smtpfence.conf,
// csf.conf, allow.list, the control socket, DirectAdmin's files).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace smtpfence {

// shadow-utils' default limit for a user or group name (useradd(8) on Debian and EL).
inline constexpr std::size_t kMaxAccountNameBytes = 32;

// A user or group name as useradd(8)/groupadd(8) accept them by default, or a numeric
// id: letters, digits, '.', '_', '-', an optional final '$' (a Samba machine account),
// at most kMaxAccountNameBytes bytes, not starting with '-'. Returns what is wrong, or
// "" when the name is valid.
[[nodiscard]] std::string account_name_problem(std::string_view name);

[[nodiscard]] inline bool is_valid_account_name(std::string_view name) {
    return account_name_problem(name).empty();
}

}  // namespace smtpfence
