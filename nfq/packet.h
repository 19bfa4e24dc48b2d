// Parsing the headers of a queued SYN: the 4-tuple that identifies its socket.
#pragma once

#include <netinet/in.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace smtpfence::nfq {

struct Flow {
    int family = AF_INET;                // AF_INET or AF_INET6
    std::array<std::uint8_t, 16> src{};  // IPv4 uses the first 4 bytes
    std::array<std::uint8_t, 16> dst{};
    std::uint16_t sport = 0;  // host byte order
    std::uint16_t dport = 0;
    bool syn = false;  // SYN set, ACK clear

    // "192.0.2.25" / "2001:db8::25"
    [[nodiscard]] std::string src_text() const;
    [[nodiscard]] std::string dst_text() const;
};

// Parses an IPv4 or IPv6 packet starting at the network header (as NFQUEUE hands it
// over in an inet table). Returns nullopt for anything that is not a well-formed TCP
// packet: truncated headers, bad lengths, IPv6 extension headers we do not walk,
// IPv4 fragments with an offset. Never reads past the buffer.
[[nodiscard]] std::optional<Flow> parse_tcp_packet(std::span<const std::uint8_t> packet);

}  // namespace smtpfence::nfq
