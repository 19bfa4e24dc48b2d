// What smtpfence-bench loads into its firewalls: allowlisted users and relay
// exceptions, numbered so that none of them is the blocked probe's uid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include "nft/dest_range.h"
#include "nft/ruleset.h"

namespace smtpfence::bench {

// Users of the allowlists are 1000, 1001, ...; the blocked user is in none of them.
constexpr std::uint32_t kFirstAllowedUid = 1000;
// Exceptions are one a uid: 20000, 20001, ...; none is allowlisted or blocked.
constexpr std::uint32_t kFirstExceptionUid = 20000;
// The uid added and removed again by the change measurements, and the exception of
// that uid added and removed again (an address no other exception uses).
constexpr std::uint32_t kChangeUid = 50000;
constexpr std::uint32_t kBlockedUid = 60000;

[[nodiscard]] std::set<std::uint32_t> allowed_uids(std::size_t count);

// count exceptions, each of its own uid: nine in ten to an IPv4 address (a /32, or
// every tenth a /24 network), one in ten to an IPv6 address, port 587. The first is
// the one way through to the remote's listener (kRemoteAddr port 25), so a benchmark
// can prove the exception sets are in force.
[[nodiscard]] std::set<nft::DestRange> exception_ranges(std::size_t count);

[[nodiscard]] nft::DestRange change_exception();

[[nodiscard]] nft::RulesetSpec smtpfence_spec(const std::string& table, std::size_t users,
                                              std::size_t exceptions, nft::QueueMode queue);

}  // namespace smtpfence::bench
