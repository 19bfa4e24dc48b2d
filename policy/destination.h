// Relay exceptions (docs/relay-exceptions.md): WHO may connect to which DEST despite
// the SMTP block. A destination is HOST[:PORT]; HOST is a DNS name, an IPv4 address,
// a bracketed IPv6 address, or a network in CIDR form:
//   smtp.sendgrid.net:587   198.51.100.0/24   [2001:db8::25]:25   2001:db8::/32
// (a bare IPv6 address or network only without a port). No port: every guarded port.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"

namespace smtpfence {

enum class Family : std::uint8_t { V4, V6 };

// An address or a network: prefix 32 (IPv4) or 128 (IPv6) is a single address.
struct Network {
    Family family = Family::V4;
    // Network byte order with the host bits zero; IPv4 uses the first 4 bytes.
    std::array<std::uint8_t, 16> addr{};
    std::uint8_t prefix = 32;

    // "198.51.100.7", "198.51.100.0/24", "2001:db8::25", "2001:db8::/32".
    [[nodiscard]] std::string text() const;
    // The first and last address covered (network byte order, as addr).
    [[nodiscard]] std::array<std::uint8_t, 16> first() const { return addr; }
    [[nodiscard]] std::array<std::uint8_t, 16> last() const;

    auto operator<=>(const Network&) const = default;
};

// A single address (a /32 or a /128), as a resolver returns them.
[[nodiscard]] Network ipv4_address(const std::array<std::uint8_t, 4>& bytes);
[[nodiscard]] Network ipv6_address(const std::array<std::uint8_t, 16>& bytes);

// "ADDRESS" or "ADDRESS/PREFIX", IPv4 or IPv6 (no brackets). A network with host bits
// set is refused, naming the network it would be. Errors: what = the value.
[[nodiscard]] Result<Network> parse_network(std::string_view text);

struct Destination {
    // A DNS name (lowercase, no trailing dot), or network's text when network is set.
    std::string host;
    std::optional<Network> network;     // unset for a DNS name
    std::optional<std::uint16_t> port;  // unset: every guarded port

    [[nodiscard]] bool is_name() const { return !network.has_value(); }
    // The canonical form, which parse_destination reads back to the same Destination.
    [[nodiscard]] std::string text() const;

    bool operator==(const Destination&) const = default;
};

// Parses HOST[:PORT]. Errors: what = the value (escaped), detail = what is wrong
// ("port 0 is out of range (1-65535)"). A /0 network and IPv4-mapped IPv6 addresses
// are refused with the advice to use instead.
[[nodiscard]] Result<Destination> parse_destination(std::string_view text);

enum class SubjectKind : std::uint8_t { User, Group, Everyone };

// Who an exception is for: a user or group (a name or a numeric id), or everyone.
struct Subject {
    SubjectKind kind = SubjectKind::Everyone;
    std::string name;  // empty for Everyone

    // "alice", "group webmail", "everyone".
    [[nodiscard]] std::string text() const;

    bool operator==(const Subject&) const = default;
};

struct DestException {
    Subject who;
    Destination to;
    std::string origin;  // where it was written: "FILE:LINE", for messages

    // "alice to smtp.sendgrid.net:587", "group webmail to 198.51.100.0/24".
    [[nodiscard]] std::string text() const;
    // The same WHO and DEST, wherever each was written.
    [[nodiscard]] bool same_rule(const DestException& other) const {
        return who == other.who && to == other.to;
    }
};

}  // namespace smtpfence
