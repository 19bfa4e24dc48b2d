// A queued packet as the worker hands it to nfq::parse_tcp_packet: the bytes from the
// network header on, as NFQUEUE copies them (possibly cut short by the copy range,
// possibly followed by padding).
// Invariants: no read past the buffer (ASan, on libFuzzer's exactly sized copy); an
// accepted packet is IPv4 or IPv6 carrying TCP, with addresses, ports and SYN where the
// headers have them; the result depends only on the headers: bytes appended after the
// datagram, or the copy cut right after the TCP base header, change nothing.
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.h"
#include "nfq/packet.h"

namespace smtpfence::fuzz {
namespace {

bool same_flow(const std::optional<nfq::Flow>& a, const std::optional<nfq::Flow>& b) {
    if (!a || !b)
        return a.has_value() == b.has_value();
    return a->family == b->family && a->src == b->src && a->dst == b->dst && a->sport == b->sport &&
           a->dport == b->dport && a->syn == b->syn;
}

std::uint16_t be16(std::span<const std::uint8_t> b, std::size_t at) {
    return static_cast<std::uint16_t>((b[at] << 8U) | b[at + 1]);
}

// The address text reads back to the address.
void check_text(int family, const std::array<std::uint8_t, 16>& address, const std::string& text) {
    std::array<std::uint8_t, 16> back{};
    check(inet_pton(family, text.c_str(), back.data()) == 1, "an address text that does not parse");
    check(back == address, "an address text that reads back to another address");
}

// Where the TCP header starts, from the IP header the parser accepted.
std::size_t check_ip(std::span<const std::uint8_t> p, const nfq::Flow& flow) {
    const unsigned version = p[0] >> 4U;
    if (flow.family == AF_INET) {
        check(version == 4, "AF_INET from a packet that is not IPv4");
        check(p[9] == IPPROTO_TCP, "IPv4 that does not carry TCP");
        check((be16(p, 6) & 0x1fffU) == 0, "a later IPv4 fragment");
        check(std::equal(p.begin() + 12, p.begin() + 16, flow.src.begin()), "IPv4 source");
        check(std::equal(p.begin() + 16, p.begin() + 20, flow.dst.begin()), "IPv4 destination");
        check(std::all_of(flow.src.begin() + 4, flow.src.end(), [](auto b) { return b == 0; }) &&
                  std::all_of(flow.dst.begin() + 4, flow.dst.end(), [](auto b) { return b == 0; }),
              "IPv4 address with bytes after the fourth");
        const std::size_t ihl = std::size_t{p[0] & 0x0fU} * 4;
        check(ihl >= 20 && be16(p, 2) >= ihl + 20, "an IPv4 datagram too short for TCP");
        return ihl;
    }
    check(flow.family == AF_INET6, "a family that is neither AF_INET nor AF_INET6");
    check(version == 6, "AF_INET6 from a packet that is not IPv6");
    check(p[6] == IPPROTO_TCP, "IPv6 with an extension header or not TCP");
    check(std::equal(p.begin() + 8, p.begin() + 24, flow.src.begin()), "IPv6 source");
    check(std::equal(p.begin() + 24, p.begin() + 40, flow.dst.begin()), "IPv6 destination");
    check(be16(p, 4) >= 20, "an IPv6 payload too short for TCP");
    return 40;
}

void fuzz_one(std::span<const std::uint8_t> packet) {
    const auto flow = nfq::parse_tcp_packet(packet);
    if (!flow)
        return;
    const std::size_t tcp = check_ip(packet, *flow);
    check(packet.size() >= tcp + 20, "a TCP base header beyond the copy");
    check(flow->sport == be16(packet, tcp) && flow->dport == be16(packet, tcp + 2), "ports");
    check(flow->syn == ((packet[tcp + 13] & 0x12U) == 0x02U), "SYN without ACK");
    check(std::size_t{packet[tcp + 12]} >> 4U >= 5, "a TCP data offset below 5 words");
    check_text(flow->family, flow->src, flow->src_text());
    check_text(flow->family, flow->dst, flow->dst_text());

    std::vector<std::uint8_t> padded(packet.begin(), packet.end());
    padded.insert(padded.end(), 32, 0xa5);
    check(same_flow(flow, nfq::parse_tcp_packet(padded)), "bytes after the copy change the flow");
    const std::vector<std::uint8_t> cut(packet.begin(),
                                        packet.begin() + static_cast<std::ptrdiff_t>(tcp + 20));
    check(same_flow(flow, nfq::parse_tcp_packet(cut)), "a shorter copy changes the flow");
}

}  // namespace
}  // namespace smtpfence::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    smtpfence::fuzz::fuzz_one(std::span(data, size));
    return 0;
}
