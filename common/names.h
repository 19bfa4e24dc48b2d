// The one rule for user and group names, wherever they come from (smtpfence.conf,
// csf.conf, allow.list, the control socket). DirectAdmin's usage files take only the
// stricter plain login names (nfq/da_sink.h, is_da_account_name).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace smtpfence {

// useradd(8) makes names of at most 32 bytes, but directories (LDAP, sssd) and other
// tools make longer ones; 64 is what allow.list and the control socket always took.
inline constexpr std::size_t kMaxAccountNameBytes = 64;

// A user or group name as useradd(8)/groupadd(8) accept them by default, or a numeric
// id: letters, digits, '.', '_', '-', an optional final '$' (a Samba machine account),
// at most kMaxAccountNameBytes bytes, not starting with '-'. Returns what is wrong, or
// "" when the name is valid.
[[nodiscard]] std::string account_name_problem(std::string_view name);

[[nodiscard]] inline bool is_valid_account_name(std::string_view name) {
    return account_name_problem(name).empty();
}

}  // namespace smtpfence
