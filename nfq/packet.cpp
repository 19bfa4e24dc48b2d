#include "nfq/packet.h"

#include <arpa/inet.h>

#include <algorithm>

namespace smtpfence::nfq {
namespace {

constexpr std::size_t kIpv4MinHeader = 20;
constexpr std::size_t kIpv6Header = 40;
constexpr std::size_t kTcpMinHeader = 20;
constexpr std::uint8_t kTcpSyn = 0x02;
constexpr std::uint8_t kTcpAck = 0x10;
constexpr std::uint16_t kIpv4FragmentOffsetMask = 0x1fff;

std::uint16_t read_be16(std::span<const std::uint8_t> bytes, std::size_t at) {
    return static_cast<std::uint16_t>((bytes[at] << 8U) | bytes[at + 1]);
}

std::string address_text(int family, const std::array<std::uint8_t, 16>& address) {
    char text[INET6_ADDRSTRLEN] = {};
    if (inet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, address.data(), text, sizeof text) ==
        nullptr) {
        return {};
    }
    return text;
}

// The TCP header of a datagram whose IP header says the segment has segment_length
// bytes, of which the copy we were handed holds `segment` (NFQUEUE copies only the
// first bytes of a packet: see the copy range the queue asks for). The 20-byte base
// header must be in the copy; options may lie beyond it, but not beyond the segment.
std::optional<Flow> parse_tcp(Flow flow, std::span<const std::uint8_t> segment,
                              std::size_t segment_length) {
    if (segment.size() < kTcpMinHeader || segment_length < kTcpMinHeader)
        return std::nullopt;
    const std::size_t header_length = std::size_t{segment[12]} >> 4U << 2U;
    if (header_length < kTcpMinHeader || header_length > segment_length)
        return std::nullopt;
    flow.sport = read_be16(segment, 0);
    flow.dport = read_be16(segment, 2);
    const std::uint8_t flags = segment[13];
    flow.syn = (flags & kTcpSyn) != 0 && (flags & kTcpAck) == 0;
    return flow;
}

std::optional<Flow> parse_ipv4(std::span<const std::uint8_t> packet) {
    if (packet.size() < kIpv4MinHeader)
        return std::nullopt;
    const std::size_t header_length = std::size_t{packet[0] & 0x0fU} << 2U;
    const std::size_t total_length = read_be16(packet, 2);
    if (header_length < kIpv4MinHeader || header_length > packet.size() ||
        total_length < header_length) {
        return std::nullopt;
    }
    // Only the first fragment carries the TCP header. (Locally generated SYNs are not
    // fragmented before the output hook; a later fragment here is not ours to explain.)
    if ((read_be16(packet, 6) & kIpv4FragmentOffsetMask) != 0)
        return std::nullopt;
    if (packet[9] != IPPROTO_TCP)
        return std::nullopt;
    Flow flow;
    flow.family = AF_INET;
    std::copy_n(packet.begin() + 12, 4, flow.src.begin());
    std::copy_n(packet.begin() + 16, 4, flow.dst.begin());
    // A copy may be shorter than the datagram (truncated by the queue's copy range) or
    // longer (link-layer padding); the datagram's own length bounds the segment.
    const std::size_t end = std::min(packet.size(), total_length);
    return parse_tcp(flow, packet.subspan(header_length, end - header_length),
                     total_length - header_length);
}

std::optional<Flow> parse_ipv6(std::span<const std::uint8_t> packet) {
    if (packet.size() < kIpv6Header)
        return std::nullopt;
    // Extension headers (hop-by-hop, routing, fragment, ...) would have to be walked to
    // reach TCP; a locally generated SYN has none, so anything else is refused. A
    // payload length of 0 means a jumbogram, which needs a hop-by-hop header: refused.
    if (packet[6] != IPPROTO_TCP)
        return std::nullopt;
    const std::size_t payload_length = read_be16(packet, 4);
    Flow flow;
    flow.family = AF_INET6;
    std::copy_n(packet.begin() + 8, 16, flow.src.begin());
    std::copy_n(packet.begin() + 24, 16, flow.dst.begin());
    const std::size_t end = std::min(packet.size(), kIpv6Header + payload_length);
    return parse_tcp(flow, packet.subspan(kIpv6Header, end - kIpv6Header), payload_length);
}

}  // namespace

std::string Flow::src_text() const {
    return address_text(family, src);
}

std::string Flow::dst_text() const {
    return address_text(family, dst);
}

std::optional<Flow> parse_tcp_packet(std::span<const std::uint8_t> packet) {
    if (packet.empty())
        return std::nullopt;
    switch (packet[0] >> 4U) {
        case 4:
            return parse_ipv4(packet);
        case 6:
            return parse_ipv6(packet);
        default:
            return std::nullopt;
    }
}

}  // namespace smtpfence::nfq
