#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "nfq/packet.h"

namespace smtpfence::nfq {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::uint8_t kSyn = 0x02;
constexpr std::uint8_t kAck = 0x10;
constexpr std::uint8_t kRst = 0x04;

void put16(Bytes& b, std::size_t at, std::size_t value) {
    b[at] = static_cast<std::uint8_t>(value >> 8U);
    b[at + 1] = static_cast<std::uint8_t>(value);
}

// A TCP header of header_words 32-bit words (options zero-filled) plus payload bytes.
Bytes tcp(std::uint16_t sport, std::uint16_t dport, std::uint8_t flags,
          std::size_t header_words = 5, std::size_t payload = 0) {
    Bytes b(header_words * 4 + payload, 0);
    put16(b, 0, sport);
    put16(b, 2, dport);
    b[12] = static_cast<std::uint8_t>(header_words << 4U);
    b[13] = flags;
    return b;
}

// 192.0.2.1 -> 192.0.2.25 with ihl_words header words, carrying segment.
Bytes ipv4(const Bytes& segment, std::size_t ihl_words = 5, std::uint8_t protocol = 6) {
    Bytes b(ihl_words * 4, 0);
    b[0] = static_cast<std::uint8_t>(0x40U | ihl_words);
    put16(b, 2, b.size() + segment.size());
    put16(b, 6, 0x4000);  // DF, as Linux sends a SYN
    b[8] = 64;
    b[9] = protocol;
    const std::uint8_t src[] = {192, 0, 2, 1};
    const std::uint8_t dst[] = {192, 0, 2, 25};
    std::copy(std::begin(src), std::end(src), b.begin() + 12);
    std::copy(std::begin(dst), std::end(dst), b.begin() + 16);
    b.insert(b.end(), segment.begin(), segment.end());
    return b;
}

// 2001:db8::1 -> 2001:db8::25 carrying segment, next header next_header.
Bytes ipv6(const Bytes& segment, std::uint8_t next_header = 6) {
    Bytes b(40, 0);
    b[0] = 0x60;
    put16(b, 4, segment.size());
    b[6] = next_header;
    b[7] = 64;
    in6_addr src{};
    in6_addr dst{};
    inet_pton(AF_INET6, "2001:db8::1", &src);
    inet_pton(AF_INET6, "2001:db8::25", &dst);
    std::copy_n(src.s6_addr, 16, b.begin() + 8);
    std::copy_n(dst.s6_addr, 16, b.begin() + 24);
    b.insert(b.end(), segment.begin(), segment.end());
    return b;
}

std::optional<Flow> parse(const Bytes& b) {
    return parse_tcp_packet(std::span<const std::uint8_t>(b.data(), b.size()));
}

Bytes truncated(Bytes b, std::size_t size) {
    b.resize(size);
    return b;
}

TEST(Packet, Ipv4Syn) {
    const auto flow = parse(ipv4(tcp(40000, 25, kSyn)));
    ASSERT_TRUE(flow);
    EXPECT_EQ(flow->family, AF_INET);
    EXPECT_EQ(flow->src_text(), "192.0.2.1");
    EXPECT_EQ(flow->dst_text(), "192.0.2.25");
    EXPECT_EQ(flow->sport, 40000);
    EXPECT_EQ(flow->dport, 25);
    EXPECT_TRUE(flow->syn);
    // IPv4 addresses use the first 4 bytes only.
    for (std::size_t i = 4; i < 16; ++i) {
        EXPECT_EQ(flow->src[i], 0);
        EXPECT_EQ(flow->dst[i], 0);
    }
}

TEST(Packet, Ipv6Syn) {
    const auto flow = parse(ipv6(tcp(51000, 587, kSyn)));
    ASSERT_TRUE(flow);
    EXPECT_EQ(flow->family, AF_INET6);
    EXPECT_EQ(flow->src_text(), "2001:db8::1");
    EXPECT_EQ(flow->dst_text(), "2001:db8::25");
    EXPECT_EQ(flow->sport, 51000);
    EXPECT_EQ(flow->dport, 587);
    EXPECT_TRUE(flow->syn);
}

TEST(Packet, SynFlagMeansSynWithoutAck) {
    EXPECT_FALSE(parse(ipv4(tcp(40000, 25, kSyn | kAck))).value().syn);
    EXPECT_FALSE(parse(ipv4(tcp(40000, 25, kAck))).value().syn);
    EXPECT_FALSE(parse(ipv6(tcp(40000, 25, kRst))).value().syn);
    EXPECT_TRUE(parse(ipv4(tcp(40000, 25, kSyn | 0x40 | 0x80))).value().syn);  // SYN+ECE+CWR
}

TEST(Packet, Ipv4OptionsInIpHeader) {
    const auto flow = parse(ipv4(tcp(1234, 465, kSyn), 15));  // 60-byte IP header
    ASSERT_TRUE(flow);
    EXPECT_EQ(flow->sport, 1234);
    EXPECT_EQ(flow->dport, 465);
}

TEST(Packet, TcpOptionsBeyondTheCopyAreAccepted) {
    // A Linux SYN carries 20 bytes of options (MSS, SACK, timestamps, wscale); a copy
    // range shorter than the whole header still holds the ports and flags.
    const Bytes full4 = ipv4(tcp(40000, 25, kSyn, 10));
    EXPECT_TRUE(parse(truncated(full4, 20 + 20)));
    EXPECT_TRUE(parse(truncated(full4, 20 + 33)));
    const Bytes full6 = ipv6(tcp(40000, 25, kSyn, 15, 100));
    EXPECT_TRUE(parse(truncated(full6, 40 + 20)));
    // The 20-byte base header must be there.
    EXPECT_FALSE(parse(truncated(full4, 20 + 19)));
    EXPECT_FALSE(parse(truncated(full6, 40 + 19)));
}

TEST(Packet, TruncatedHeaders) {
    const Bytes v4 = ipv4(tcp(40000, 25, kSyn));
    for (std::size_t size = 0; size < 40; ++size)
        EXPECT_FALSE(parse(truncated(v4, size))) << size;
    const Bytes v6 = ipv6(tcp(40000, 25, kSyn));
    for (std::size_t size = 0; size < 60; ++size)
        EXPECT_FALSE(parse(truncated(v6, size))) << size;
    const Bytes v4_options = ipv4(tcp(40000, 25, kSyn), 15);
    for (std::size_t size = 0; size < 80; ++size)
        EXPECT_FALSE(parse(truncated(v4_options, size))) << size;
}

TEST(Packet, LongerCopyThanDatagramIsBoundedByIpLength) {
    // Trailing bytes after the datagram (link padding) are not part of it; a header
    // that only fits thanks to them is refused.
    Bytes b = ipv4(tcp(40000, 25, kSyn));
    b.resize(b.size() + 30, 0xff);
    EXPECT_TRUE(parse(b));
    Bytes short_total = ipv4(tcp(40000, 25, kSyn));
    put16(short_total, 2, 20 + 19);
    EXPECT_FALSE(parse(short_total));
    Bytes v6 = ipv6(tcp(40000, 25, kSyn));
    put16(v6, 4, 19);
    EXPECT_FALSE(parse(v6));
}

TEST(Packet, BadIpv4Lengths) {
    Bytes ihl_small = ipv4(tcp(40000, 25, kSyn));
    ihl_small[0] = 0x44;  // IHL 4 words: below the minimum
    EXPECT_FALSE(parse(ihl_small));
    Bytes ihl_big = ipv4(tcp(40000, 25, kSyn));
    ihl_big[0] = 0x4f;  // 60-byte header claimed in a 40-byte packet
    EXPECT_FALSE(parse(ihl_big));
    Bytes total_below_header = ipv4(tcp(40000, 25, kSyn));
    put16(total_below_header, 2, 12);
    EXPECT_FALSE(parse(total_below_header));
    Bytes total_zero = ipv4(tcp(40000, 25, kSyn));
    put16(total_zero, 2, 0);
    EXPECT_FALSE(parse(total_zero));
}

TEST(Packet, TcpDataOffset) {
    for (std::size_t words = 0; words < 5; ++words) {
        Bytes b = ipv4(tcp(40000, 25, kSyn));
        b[20 + 12] = static_cast<std::uint8_t>(words << 4U);
        EXPECT_FALSE(parse(b)) << words;
    }
    // A header longer than the datagram is malformed, even when the copy is short.
    Bytes beyond = ipv4(tcp(40000, 25, kSyn, 5));
    beyond[20 + 12] = 0x60;  // 24 bytes claimed, the datagram holds 20
    EXPECT_FALSE(parse(beyond));
    Bytes beyond6 = ipv6(tcp(40000, 25, kSyn, 5));
    beyond6[40 + 12] = 0xf0;
    EXPECT_FALSE(parse(beyond6));
}

TEST(Packet, Ipv4Fragments) {
    Bytes later = ipv4(tcp(40000, 25, kSyn));
    put16(later, 6, 0x0001);  // offset 8 bytes
    EXPECT_FALSE(parse(later));
    Bytes later_mf = ipv4(tcp(40000, 25, kSyn));
    put16(later_mf, 6, 0x2000 | 0x0100);
    EXPECT_FALSE(parse(later_mf));
    // The first fragment (MF set, offset 0) carries the whole TCP header.
    Bytes first = ipv4(tcp(40000, 25, kSyn));
    put16(first, 6, 0x2000);
    EXPECT_TRUE(parse(first));
}

TEST(Packet, NotTcp) {
    EXPECT_FALSE(parse(ipv4(tcp(40000, 25, kSyn), 5, 17)));  // UDP
    EXPECT_FALSE(parse(ipv4(tcp(40000, 25, kSyn), 5, 1)));   // ICMP
    EXPECT_FALSE(parse(ipv6(tcp(40000, 25, kSyn), 17)));     // UDP
    EXPECT_FALSE(parse(ipv6(tcp(40000, 25, kSyn), 58)));     // ICMPv6
}

TEST(Packet, Ipv6ExtensionHeadersAreNotWalked) {
    // Hop-by-hop (0), routing (43), fragment (44), destination options (60): a real
    // extension header followed by TCP is still refused.
    for (const int next : {0, 43, 44, 60}) {
        Bytes extension(8, 0);
        extension[0] = 6;  // next header: TCP
        Bytes segment = tcp(40000, 25, kSyn);
        extension.insert(extension.end(), segment.begin(), segment.end());
        EXPECT_FALSE(parse(ipv6(extension, static_cast<std::uint8_t>(next)))) << next;
    }
    // Payload length 0 (a jumbogram) carries no TCP header we could trust.
    Bytes jumbo = ipv6(tcp(40000, 25, kSyn));
    put16(jumbo, 4, 0);
    EXPECT_FALSE(parse(jumbo));
}

TEST(Packet, WrongVersion) {
    for (const unsigned version : {0U, 1U, 5U, 7U, 15U}) {
        Bytes b = ipv4(tcp(40000, 25, kSyn));
        b[0] = static_cast<std::uint8_t>((version << 4U) | 5U);
        EXPECT_FALSE(parse(b)) << version;
    }
    // An IPv6 header whose version nibble says 4 is read as IPv4, and refused.
    Bytes v6 = ipv6(tcp(40000, 25, kSyn));
    v6[0] = 0x45;
    EXPECT_FALSE(parse(v6));
}

TEST(Packet, Garbage) {
    EXPECT_FALSE(parse({}));
    EXPECT_FALSE(parse(Bytes(1, 0x45)));
    EXPECT_FALSE(parse(Bytes(100, 0)));
    EXPECT_FALSE(parse(Bytes(100, 0xff)));
    EXPECT_FALSE(parse(Bytes(39, 0x60)));
}

TEST(Packet, AddressText) {
    Flow flow;
    flow.family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.25", flow.dst.data());
    EXPECT_EQ(flow.dst_text(), "::ffff:192.0.2.25");
    EXPECT_EQ(flow.src_text(), "::");
    Flow v4;
    EXPECT_EQ(v4.src_text(), "0.0.0.0");
    v4.dst = {203, 0, 113, 255};
    EXPECT_EQ(v4.dst_text(), "203.0.113.255");
}

// Random bytes, and valid packets with random bytes flipped or cut: nothing may crash
// or read out of bounds (run under ASan/UBSan with SMTPFENCE_SANITIZE).
TEST(Packet, FuzzLikeInputNeverCrashes) {
    std::mt19937 rng(20250501);
    std::uniform_int_distribution<int> byte(0, 255);
    const std::vector<Bytes> seeds = {ipv4(tcp(40000, 25, kSyn, 10)), ipv4(tcp(1, 2, kAck), 6),
                                      ipv6(tcp(40000, 25, kSyn, 10))};
    std::size_t parsed = 0;
    for (int round = 0; round < 200000; ++round) {
        Bytes b;
        if (round % 2 == 0) {
            b.resize(static_cast<std::size_t>(byte(rng)) % 130);
            for (auto& x : b)
                x = static_cast<std::uint8_t>(byte(rng));
            // Give the version nibble a fair chance to say 4 or 6.
            if (!b.empty() && round % 4 == 0)
                b[0] = static_cast<std::uint8_t>((round % 8 == 0 ? 0x40 : 0x60) | (b[0] & 0x0f));
        } else {
            b = seeds[static_cast<std::size_t>(round) % seeds.size()];
            const int flips = 1 + byte(rng) % 4;
            for (int i = 0; i < flips; ++i) {
                b[static_cast<std::size_t>(byte(rng) * 7) % b.size()] =
                    static_cast<std::uint8_t>(byte(rng));
            }
            b.resize(static_cast<std::size_t>(byte(rng) * 7) % (b.size() + 1));
        }
        // A heap copy of exactly the input size, so ASan catches any overread.
        const auto exact = std::make_unique<std::uint8_t[]>(std::max<std::size_t>(b.size(), 1));
        std::copy(b.begin(), b.end(), exact.get());
        const auto flow = parse_tcp_packet(std::span<const std::uint8_t>(exact.get(), b.size()));
        if (flow) {
            ++parsed;
            EXPECT_TRUE(flow->family == AF_INET || flow->family == AF_INET6);
            EXPECT_FALSE(flow->src_text().empty());
        }
    }
    EXPECT_GT(parsed, 0U);  // the mutations do not all miss
}

}  // namespace
}  // namespace smtpfence::nfq
