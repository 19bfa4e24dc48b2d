// One element of the destination-exception sets (docs/relay-exceptions.md): who
// (a uid, a primary gid, or everyone) may reach which addresses and ports. Addresses
// and ports are ranges, so a network or "every guarded port" is one element.
#pragma once

#include <array>
#include <compare>
#include <cstdint>

namespace smtpfence::nft {

// The six sets: keyed by the socket's uid, its primary gid, or nothing (everyone),
// for IPv4 and IPv6 destinations.
enum class DestSet : std::uint8_t { Uid4, Uid6, Gid4, Gid6, All4, All6 };

[[nodiscard]] constexpr bool is_ipv6(DestSet s) {
    return s == DestSet::Uid6 || s == DestSet::Gid6 || s == DestSet::All6;
}
[[nodiscard]] constexpr bool has_id(DestSet s) {
    return s != DestSet::All4 && s != DestSet::All6;
}

struct DestRange {
    DestSet set = DestSet::Uid4;
    std::uint32_t id = 0;  // the uid or gid; 0 in the All sets
    // Network byte order; an IPv4 address uses the first 4 bytes, the rest stay zero.
    std::array<std::uint8_t, 16> addr_lo{};
    std::array<std::uint8_t, 16> addr_hi{};
    std::uint16_t port_lo = 0;  // host byte order, inclusive
    std::uint16_t port_hi = 65535;

    auto operator<=>(const DestRange&) const = default;
};

}  // namespace smtpfence::nft
