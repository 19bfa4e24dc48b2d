// Relay exceptions as elements of the kernel's destination sets (nft/dest_range.h).
// A user is its uid; a group is its gid (the socket's primary gid) plus the uid of every
// member, primary or supplementary (as resolve_allowlist does: meta skgid sees only the
// primary gid); everyone is the All sets. A name is the addresses it resolves to now.
// No port: ports 0-65535 (the rules only look at guarded ports anyway).
//
// The kernel refuses overlapping intervals in a set, so the ranges of one (set, id) are
// made disjoint: the address axis is cut at every range's ends, and within each piece
// the port axis likewise; neighbouring pieces served by the same exceptions are merged.
// So every range is served by a fixed list of exceptions, and each exception's counter
// is the sum of its ranges' counters, never counting another exception's traffic.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "nft/dest_range.h"
#include "policy/accounts.h"
#include "policy/destination.h"

namespace smtpfence {

struct DestPlan {
    std::set<nft::DestRange> ranges;
    // For each range, the exceptions (indexes into the planned list, ascending) it serves.
    std::map<nft::DestRange, std::vector<std::size_t>> covers;
    // An unknown user or group, naming it and the exception (never a silent skip).
    std::vector<std::string> warnings;
};

// The addresses a DNS name resolves to now (each a /32 or /128); none when unknown yet.
using AddressesOf = std::function<std::vector<Network>(const std::string& name)>;

// addresses_of is called once per distinct name. O(n log n) in the number of (id,
// address) pairs when few of one id's ranges overlap: 10,000 exceptions plan in
// milliseconds.
[[nodiscard]] DestPlan plan_destinations(const std::vector<DestException>& exceptions,
                                         const AccountDb& accounts,
                                         const AddressesOf& addresses_of);

}  // namespace smtpfence
