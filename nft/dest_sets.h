// The six destination-exception sets (docs/relay-exceptions.md) and the rules that
// look them up: set attributes, element keys and text exactly as nftables 1.0.6 makes
// and prints them for `type uid . ipv4_addr . inet_service; flags interval; counter;`
// and its five siblings, so that `nft list` shows them in natural notation.
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

// "dest_uid4", "dest_uid6", "dest_gid4", "dest_gid6", "dest_all4", "dest_all6".
[[nodiscard]] const char* dest_set_name(DestSet set);

// One of the six sets with the ranges of ranges that belong to it, in their order.
[[nodiscard]] BuiltSet build_dest_set(const std::string& table, DestSet set,
                                      const std::set<DestRange>& ranges, std::uint32_t set_id);

// A range's element as the kernel stores it: the key of its first and of its last
// point (id big-endian, address in network order, port big-endian padded to 4 bytes).
struct DestKeys {
    ElementKey key;
    ElementKey key_end;
};
[[nodiscard]] DestKeys dest_keys(const DestRange& range);
// The reverse, for an element read back from set; nullopt when the keys do not have
// that set's length.
[[nodiscard]] std::optional<DestRange> dest_range_from_keys(DestSet set,
                                                            std::span<const std::uint8_t> key,
                                                            std::span<const std::uint8_t> key_end);

// The element as `nft list` prints it: "1000 . 198.51.100.0/24 . 587",
// "192.0.2.7-192.0.2.9 . 0-65535", "2001:db8::25 . 25".
[[nodiscard]] std::string dest_element_text(const DestRange& range);

// Why the judge alone looks up the exceptions with a match, the other chains with a
// miss (`!=`): the kernel bumps an element's counter on every lookup that matches it,
// and an exception's counter counts each connection it let through once.

// `meta skuid . ip daddr . tcp dport @dest_uid4 accept`, with the `meta nfproto` and
// `meta l4proto` checks nft puts in front of it (and leaves out of its listing).
[[nodiscard]] BuiltRule dest_accept_rule(const std::string& table, const std::string& chain,
                                         DestSet set);

// Appends `meta skuid . ip daddr . tcp dport != @dest_uid4 meta skgid . ip daddr . tcp
// dport != @dest_gid4 ip daddr . tcp dport != @dest_all4` (ip6 for v6) to r, after the
// same checks: an IPv4 (IPv6) TCP packet that no exception allows. Returns its text.
[[nodiscard]] std::string no_dest_exception(RuleBuilder& r, bool v6);

}  // namespace smtpfence::nft
