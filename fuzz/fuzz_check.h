// What the fuzz targets share: invariants that abort, so that libFuzzer (and the corpus
// replay under ctest) report a broken invariant as a crash, with the input kept.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/names.h"
#include "policy/destination.h"
#include "policy/policy.h"

namespace smtpfence::fuzz {

// The fuzzer's bytes as text (the parsers take bytes, never decoded text).
inline std::string_view as_text(std::span<const std::uint8_t> bytes) {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

inline void check(bool ok, std::string_view what,
                  std::source_location where = std::source_location::current()) {
    if (ok)
        return;
    static_cast<void>(std::fprintf(stderr, "%s:%u: invariant broken: %.*s\n", where.file_name(),
                                   where.line(), static_cast<int>(what.size()), what.data()));
    std::abort();
}

// Field by field, except source (the file a policy came from).
inline bool same_policy(const Policy& a, const Policy& b) {
    return a.enabled == b.enabled && a.ports == b.ports && a.allow_users == b.allow_users &&
           a.allow_groups == b.allow_groups && a.allow_groups_default == b.allow_groups_default &&
           a.mta_users == b.mta_users && a.mta_users_auto == b.mta_users_auto &&
           a.allow_local == b.allow_local && a.action == b.action && a.queue_num == b.queue_num &&
           a.observe_rate == b.observe_rate && a.observe_burst == b.observe_burst &&
           a.control_admin_group == b.control_admin_group &&
           a.control_read_all == b.control_read_all && a.da_pipeline == b.da_pipeline &&
           a.table_owner == b.table_owner && a.da_attempt_weight == b.da_attempt_weight &&
           a.da_block_cracking == b.da_block_cracking && a.redirect == b.redirect &&
           a.log_blocked == b.log_blocked && a.log_uid == b.log_uid &&
           std::equal(a.allow_dest.begin(), a.allow_dest.end(), b.allow_dest.begin(),
                      b.allow_dest.end(),
                      [](const DestException& x, const DestException& y) {
                          return x.same_rule(y) && x.origin == y.origin;
                      }) &&
           a.dest_ttl_min == b.dest_ttl_min && a.dest_ttl_max == b.dest_ttl_max &&
           a.dest_grace == b.dest_grace;
}

// A user or group as the policy keeps it: a portable name of at most kMaxAccountNameBytes
// bytes (a final '$' allowed) or a numeric id below 2^32 - 1.
inline bool is_account(std::string_view s) {
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (!s.empty() && std::all_of(s.begin(), s.end(), digit)) {
        const std::size_t nonzero = s.find_first_not_of('0');
        const std::string_view value = nonzero == std::string_view::npos ? "0" : s.substr(nonzero);
        return value.size() < 10 || (value.size() == 10 && value <= "4294967294");
    }
    if (s.empty() || s.size() > kMaxAccountNameBytes)
        return false;
    if (s.back() == '$')
        s.remove_suffix(1);
    if (s.empty() || s.front() == '-')
        return false;
    return std::all_of(s.begin(), s.end(), [&](char c) {
        return digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
               c == '.' || c == '-';
    });
}

// Each item an account, none twice.
inline bool are_accounts(const std::vector<std::string>& items) {
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (!is_account(items[i]) || std::find(items.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                               items.end(), items[i]) != items.end()) {
            return false;
        }
    }
    return true;
}

// A relay exception as the policy keeps it: a valid subject, a destination whose
// canonical text reads back the same, never a /0 network.
inline bool is_dest_exception(const DestException& e) {
    const bool who_ok =
        e.who.kind == SubjectKind::Everyone ? e.who.name.empty() : is_account(e.who.name);
    const auto again = parse_destination(e.to.text());
    return who_ok && again && *again == e.to && (e.to.is_name() || e.to.network->prefix != 0) &&
           !e.origin.empty();
}

// What every loaded policy holds, whatever the file said.
inline void check_policy(const Policy& p) {
    check(!p.ports.empty(), "ports empty");
    check(p.ports.front() != 0, "port 0");
    check(std::adjacent_find(p.ports.begin(), p.ports.end(),
                             [](std::uint16_t a, std::uint16_t b) { return a >= b; }) ==
              p.ports.end(),
          "ports not sorted and unique");
    check(are_accounts(p.allow_users), "allow_users");
    check(are_accounts(p.allow_groups), "allow_groups");
    check(are_accounts(p.mta_users), "mta_users");
    check(p.control_admin_group.empty() || is_account(p.control_admin_group),
          "control_admin_group");
    check(p.observe_rate >= 1 && p.observe_rate <= 100000, "observe_rate out of range");
    check(p.observe_burst >= 1 && p.observe_burst <= 100000, "observe_burst out of range");
    check(p.da_attempt_weight <= 1000, "da_attempt_weight out of range");
    check(std::all_of(p.allow_dest.begin(), p.allow_dest.end(), is_dest_exception), "allow_dest");
    check(p.dest_ttl_min.count() >= 1 && p.dest_ttl_max >= p.dest_ttl_min &&
              p.dest_ttl_max.count() <= 86400,
          "dest_ttl_min/max out of range");
    check(p.dest_grace.count() >= 0 && p.dest_grace.count() <= 86400, "dest_grace out of range");
}

}  // namespace smtpfence::fuzz
