// The destination-exception sets (docs/relay-exceptions.md) and the rules that look
// them up: set attributes, element keys and text exactly as nftables 1.0.6 makes and
// prints them for `type uid . ipv4_addr . inet_service; counter;` (with and without
// `flags interval`) and its siblings, so that `nft list` shows them in natural notation.
//
// Each DestSet is two kernel sets. Interval concatenations are the kernel's pipapo
// type, whose every transaction costs time in proportion to the set's size; a plain
// concatenation is a hash, whose additions and removals cost the same at any size. So a
// range of one address and one port (a name's address with a port, a literal with a
// port: the common case) goes into the hash, `dest_uid4_host`; everything else (a
// network, an address range, every port, a port range) into the interval set,
// `dest_uid4`.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>

#include "nft/dest_range.h"
#include "nft/ruleset.h"

namespace smtpfence::nft {

class RuleBuilder;

inline constexpr std::array<DestSet, 6> kDestSets{DestSet::Uid4, DestSet::Uid6, DestSet::Gid4,
                                                  DestSet::Gid6, DestSet::All4, DestSet::All6};

// Which of a DestSet's two kernel sets: the hash of single points or the intervals.
enum class DestKind : std::uint8_t { Exact, Interval };
inline constexpr std::array<DestKind, 2> kDestKinds{DestKind::Exact, DestKind::Interval};

// Exact when the range is one address and one port.
[[nodiscard]] DestKind dest_kind(const DestRange& range);

// "dest_uid4", "dest_uid6", "dest_gid4", "dest_gid6", "dest_all4", "dest_all6" for the
// intervals; the same with "_host" for the exact ones.
[[nodiscard]] const char* dest_set_name(DestSet set, DestKind kind);

// One of the twelve sets with the ranges of ranges that belong to it, in the order
// `nft list` prints them.
[[nodiscard]] BuiltSet build_dest_set(const std::string& table, DestSet set, DestKind kind,
                                      const std::set<DestRange>& ranges, std::uint32_t set_id);

// A range's element as the kernel stores it. Interval: the key of its first and of its
// last point (id big-endian, address in network order, port big-endian padded to 4
// bytes). Exact: the key alone, key_end empty, and the id in host byte order (nft turns
// it big-endian only for interval keys, which the kernel compares byte by byte).
struct DestKeys {
    ElementKey key;
    ElementKey key_end;
};
[[nodiscard]] DestKeys dest_keys(const DestRange& range);
// The reverse, for an element read back from the set (key_end empty for an exact
// one); nullopt when the keys do not have that set's length.
[[nodiscard]] std::optional<DestRange> dest_range_from_keys(DestSet set, DestKind kind,
                                                            std::span<const std::uint8_t> key,
                                                            std::span<const std::uint8_t> key_end);

// The element as `nft list` prints it: "1000 . 198.51.100.0/24 . 587",
// "192.0.2.7-192.0.2.9 . 0-65535", "2001:db8::25 . 25".
[[nodiscard]] std::string dest_element_text(const DestRange& range);

// Why the judge alone looks up the exceptions with a match, the other chains with a
// miss (`!=`): the kernel bumps an element's counter on every lookup that matches it,
// and an exception's counter counts each connection it let through once.

// `meta skuid . ip daddr . tcp dport @dest_uid4 accept` (or @dest_uid4_host), with the
// `meta nfproto` and `meta l4proto` checks nft puts in front of it (and leaves out of
// its listing).
[[nodiscard]] BuiltRule dest_accept_rule(const std::string& table, const std::string& chain,
                                         DestSet set, DestKind kind);

// Appends `meta skuid . ip daddr . tcp dport != @dest_uid4_host meta skuid . ip daddr .
// tcp dport != @dest_uid4 ...` for the family's six sets (uid, gid, all; exact and
// interval; ip6 for v6) to r, after the same checks: an IPv4 (IPv6) TCP packet that no
// exception allows. Returns its text.
[[nodiscard]] std::string no_dest_exception(RuleBuilder& r, bool v6);

}  // namespace smtpfence::nft
