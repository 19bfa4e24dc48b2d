#include "nft/dest_sets.h"

#include <arpa/inet.h>
#include <libnftnl/set.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <ranges>
#include <utility>

#include "nft/rule_builder.h"

namespace smtpfence::nft {
namespace {

// Bytes of each part of a key. The port is 2 bytes, but every part of a concatenated
// key takes whole 4-byte registers, so it is padded to 4 in the key.
constexpr std::uint32_t kIdLen = 4;
constexpr std::uint32_t kPortLen = 2;
constexpr std::uint32_t kPortPaddedLen = 4;

std::uint32_t addr_len(DestSet set) {
    return is_ipv6(set) ? 16 : 4;
}

std::uint32_t key_len(DestSet set) {
    return (has_id(set) ? kIdLen : 0) + addr_len(set) + kPortPaddedLen;
}

bool is_gid(DestSet set) {
    return set == DestSet::Gid4 || set == DestSet::Gid6;
}

// nftables' id of a concatenated type: the parts' type ids, 6 bits each
// (TYPE_BITS in src/datatype.h), the first part in the highest bits.
std::uint32_t concat_type(DestSet set) {
    constexpr std::uint32_t kTypeBits = 6;
    std::uint32_t type = 0;
    if (has_id(set))
        type = is_gid(set) ? kTypeGid : kTypeUid;
    type = (type << kTypeBits) | (is_ipv6(set) ? kTypeIpv6Addr : kTypeIpv4Addr);
    return (type << kTypeBits) | kTypeInetService;
}

// The user data nft 1.0.6 stores with a concatenated `type` set, byte for byte: the
// key byte order "invalid" (each part has its own), and a `typeof` record naming
// nft's concatenation expression (EXPR_CONCAT, 13) with no parts, from which nft falls
// back to the key type when it lists the set.
void put_concat_userdata(nftnl_set* s) {
    constexpr std::uint32_t kByteorderInvalid = 0;
    constexpr std::uint32_t kExprConcat = 13;
    UdataBufPtr udata(nftnl_udata_buf_alloc(64));
    if (!udata)
        throw std::bad_alloc();
    nftnl_udata_buf* buf = udata.get();
    nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_KEYBYTEORDER, kByteorderInvalid);
    nftnl_udata* typeof_key = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_KEY_TYPEOF);
    nftnl_udata_put_u32(buf, NFTNL_UDATA_SET_TYPEOF_EXPR, kExprConcat);
    nftnl_udata* parts = nftnl_udata_nest_start(buf, NFTNL_UDATA_SET_TYPEOF_DATA);
    nftnl_udata_nest_end(buf, parts);
    nftnl_udata_nest_end(buf, typeof_key);
    nftnl_set_set_data(s, NFTNL_SET_USERDATA, nftnl_udata_buf_data(buf),
                       nftnl_udata_buf_len(buf));  // copied by libnftnl
}

// Names and `nft list` key type of each DestSet's sets, in DestSet order.
struct DestSetText {
    const char* interval_name;
    const char* exact_name;
    const char* type;
};
constexpr std::array<DestSetText, kDestSets.size()> kDestSetText{{
    {"dest_uid4", "dest_uid4_host", "type uid . ipv4_addr . inet_service"},
    {"dest_uid6", "dest_uid6_host", "type uid . ipv6_addr . inet_service"},
    {"dest_gid4", "dest_gid4_host", "type gid . ipv4_addr . inet_service"},
    {"dest_gid6", "dest_gid6_host", "type gid . ipv6_addr . inet_service"},
    {"dest_all4", "dest_all4_host", "type ipv4_addr . inet_service"},
    {"dest_all6", "dest_all6_host", "type ipv6_addr . inet_service"},
}};

const DestSetText& text_of(DestSet set) {
    return kDestSetText.at(static_cast<std::size_t>(set));
}

void put_be32(ElementKey& key, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
        key.push_back(static_cast<std::uint8_t>(v >> shift));
}

ElementKey key_of(DestSet set, DestKind kind, std::uint32_t id,
                  const std::array<std::uint8_t, 16>& addr, std::uint16_t port) {
    ElementKey key;
    key.reserve(key_len(set));
    if (has_id(set) && kind == DestKind::Interval) {
        put_be32(key, id);
    } else if (has_id(set)) {
        key.resize(kIdLen);
        std::memcpy(key.data(), &id, kIdLen);
    }
    key.insert(key.end(), addr.begin(), addr.begin() + addr_len(set));
    key.push_back(static_cast<std::uint8_t>(port >> 8));
    key.push_back(static_cast<std::uint8_t>(port & 0xff));
    key.insert(key.end(), kPortPaddedLen - kPortLen, 0);
    return key;
}

std::string address_text(DestSet set, const std::array<std::uint8_t, 16>& addr) {
    std::array<char, INET6_ADDRSTRLEN> buf{};
    const int family = is_ipv6(set) ? AF_INET6 : AF_INET;
    if (inet_ntop(family, addr.data(), buf.data(), buf.size()) == nullptr)
        return "?";
    return buf.data();
}

// The prefix length when [lo, hi] is exactly one network (lo's host bits all zero,
// hi's all one); nullopt otherwise.
std::optional<int> prefix_len(const std::array<std::uint8_t, 16>& lo,
                              const std::array<std::uint8_t, 16>& hi, std::uint32_t bytes) {
    const int bits = static_cast<int>(bytes * 8);
    auto bit = [](const std::array<std::uint8_t, 16>& a, int i) {
        return ((a[static_cast<std::size_t>(i / 8)] >> (7 - i % 8)) & 1) != 0;
    };
    int prefix = 0;
    while (prefix < bits && bit(lo, prefix) == bit(hi, prefix))
        ++prefix;
    for (int i = prefix; i < bits; ++i) {
        if (bit(lo, i) || !bit(hi, i))
            return std::nullopt;
    }
    return prefix;
}

// nft prints a range of addresses as one address, a network or lo-hi; a range of
// ports (a type without prefixes) as one port or lo-hi.
std::string addresses_text(const DestRange& r) {
    const std::string lo = address_text(r.set, r.addr_lo);
    if (r.addr_lo == r.addr_hi)
        return lo;
    if (const auto prefix = prefix_len(r.addr_lo, r.addr_hi, addr_len(r.set)))
        return lo + "/" + std::to_string(*prefix);
    return lo + "-" + address_text(r.set, r.addr_hi);
}

std::string ports_text(const DestRange& r) {
    if (r.port_lo == r.port_hi)
        return std::to_string(r.port_lo);
    return std::to_string(r.port_lo) + "-" + std::to_string(r.port_hi);
}

// The register holding the part of a concatenated key that starts offset bytes into
// it: nft names it by a 16-byte register (NFT_REG_1...) when it starts one, by a 4-byte
// register (NFT_REG32_00...) otherwise; both address the same storage.
std::uint32_t reg_at(std::uint32_t offset) {
    if (offset % NFT_REG_SIZE == 0)
        return NFT_REG_1 + offset / NFT_REG_SIZE;
    return NFT_REG32_00 + offset / NFT_REG32_SIZE;
}

// `meta nfproto ipv4` (or ipv6) and `meta l4proto tcp`: what nft puts before the
// first `ip daddr` and `tcp dport` of a rule in an inet table.
void ip_tcp(RuleBuilder& r, bool v6) {
    const auto family = static_cast<std::uint8_t>(v6 ? NFPROTO_IPV6 : NFPROTO_IPV4);
    r.meta(NFT_META_NFPROTO, "meta nfproto").cmp(NFT_CMP_EQ, &family, 1, v6 ? "ipv6" : "ipv4");
    r.tcp();
}

// Appends the key's parts, each to its register, and the lookup; returns
// `meta skuid . ip daddr . tcp dport @dest_uid4` (with `!=` when invert).
std::string lookup(RuleBuilder& r, DestSet set, DestKind kind, bool invert) {
    const bool v6 = is_ipv6(set);
    std::string text;
    std::uint32_t offset = 0;  // of the next part in the key
    if (has_id(set)) {
        // uid and gid are host-endian; nft turns them big-endian in concatenated
        // interval keys, so that the kernel compares ranges of bytes correctly, and
        // leaves them as they are for a hash.
        const char* meta = is_gid(set) ? "meta skgid" : "meta skuid";
        r.meta(is_gid(set) ? NFT_META_SKGID : NFT_META_SKUID, meta, reg_at(offset));
        if (kind == DestKind::Interval)
            r.hton32(reg_at(offset), "byteorder hton");
        text = std::string(meta) + " . ";
        offset += kIdLen;
    }
    // Destination address: offset 16 of the IPv4 header, 24 of the IPv6 header.
    r.payload(NFT_PAYLOAD_NETWORK_HEADER, v6 ? 24 : 16, addr_len(set),
              v6 ? "ip6 daddr" : "ip daddr", reg_at(offset));
    text += v6 ? "ip6 daddr . " : "ip daddr . ";
    offset += addr_len(set);
    r.payload(NFT_PAYLOAD_TRANSPORT_HEADER, offsetof(tcphdr, dest), kPortLen, "tcp dport",
              reg_at(offset));
    const char* name = dest_set_name(set, kind);
    const std::string ref = std::string(invert ? "!= @" : "@") + name;
    r.lookup(name, invert, ref.c_str());
    return text + "tcp dport " + ref;
}

}  // namespace

DestKind dest_kind(const DestRange& r) {
    return r.addr_lo == r.addr_hi && r.port_lo == r.port_hi ? DestKind::Exact : DestKind::Interval;
}

const char* dest_set_name(DestSet set, DestKind kind) {
    return kind == DestKind::Exact ? text_of(set).exact_name : text_of(set).interval_name;
}

BuiltSet build_dest_set(const std::string& table, DestSet set, DestKind kind,
                        const std::set<DestRange>& ranges, std::uint32_t set_id) {
    const char* name = dest_set_name(set, kind);
    const bool interval = kind == DestKind::Interval;
    BuiltSet built{name,
                   {text_of(set).type},
                   {},
                   {},
                   build_set(table, name, concat_type(set), key_len(set), set_id),
                   {},
                   1};
    nftnl_set* s = built.set.get();
    if (interval) {
        built.header.emplace_back("flags interval");
        nftnl_set_set_u32(s, NFTNL_SET_FLAGS, NFT_SET_INTERVAL | NFT_SET_CONCAT);
        // The length of each part (NFTA_SET_DESC_CONCAT), zero-terminated for
        // libnftnl: the kernel picks the pipapo set type by them.
        std::array<std::uint8_t, 4> fields{};
        std::size_t n = 0;
        if (has_id(set))
            fields[n++] = kIdLen;
        fields[n++] = static_cast<std::uint8_t>(addr_len(set));
        fields[n++] = kPortLen;
        nftnl_set_set_data(s, NFTNL_SET_DESC_CONCAT, fields.data(), static_cast<std::uint32_t>(n));
    } else {
        nftnl_set_set_u32(s, NFTNL_SET_FLAGS, 0);  // no part lengths: a hash
    }
    built.header.emplace_back("counter");
    put_concat_userdata(s);
    nftnl_set_add_expr(s, make_expr("counter").release());  // the set owns it
    std::vector<std::pair<DestKeys, DestRange>> members;
    for (const DestRange& r : ranges) {
        if (r.set == set && dest_kind(r) == kind)
            members.emplace_back(dest_keys(r), r);
    }
    if (!interval) {
        // nft lists a hash's elements sorted by their key read as one host-endian
        // number (its last byte the most significant).
        std::ranges::sort(members, [](const auto& a, const auto& b) {
            return std::ranges::lexicographical_compare(std::views::reverse(a.first.key),
                                                        std::views::reverse(b.first.key));
        });
    }
    for (auto& [keys, r] : members) {
        built.keys.push_back(std::move(keys.key));
        if (interval)
            built.key_ends.push_back(std::move(keys.key_end));
        // The kernel clones the set's counter into each element.
        built.elements.push_back(dest_element_text(r) + " counter packets 0 bytes 0");
    }
    return built;
}

DestKeys dest_keys(const DestRange& r) {
    const DestKind kind = dest_kind(r);
    if (kind == DestKind::Exact)
        return {key_of(r.set, kind, r.id, r.addr_lo, r.port_lo), {}};
    return {key_of(r.set, kind, r.id, r.addr_lo, r.port_lo),
            key_of(r.set, kind, r.id, r.addr_hi, r.port_hi)};
}

std::optional<DestRange> dest_range_from_keys(DestSet set, DestKind kind,
                                              std::span<const std::uint8_t> key,
                                              std::span<const std::uint8_t> key_end) {
    if (kind == DestKind::Exact && key_end.empty())
        key_end = key;
    if (key.size() != key_len(set) || key_end.size() != key_len(set))
        return std::nullopt;
    DestRange r;
    r.set = set;
    std::size_t at = 0;
    if (has_id(set) && kind == DestKind::Interval) {
        for (; at < kIdLen; ++at)
            r.id = (r.id << 8) | key[at];
    } else if (has_id(set)) {
        std::memcpy(&r.id, key.data(), kIdLen);
        at = kIdLen;
    }
    std::copy_n(key.begin() + static_cast<std::ptrdiff_t>(at), addr_len(set), r.addr_lo.begin());
    std::copy_n(key_end.begin() + static_cast<std::ptrdiff_t>(at), addr_len(set),
                r.addr_hi.begin());
    at += addr_len(set);
    r.port_lo = static_cast<std::uint16_t>((key[at] << 8) | key[at + 1]);
    r.port_hi = static_cast<std::uint16_t>((key_end[at] << 8) | key_end[at + 1]);
    return r;
}

std::string dest_element_text(const DestRange& r) {
    std::string text = has_id(r.set) ? std::to_string(r.id) + " . " : "";
    return text + addresses_text(r) + " . " + ports_text(r);
}

BuiltRule dest_accept_rule(const std::string& table, const std::string& chain, DestSet set,
                           DestKind kind) {
    RuleBuilder r(table, chain);
    ip_tcp(r, is_ipv6(set));
    const std::string text = lookup(r, set, kind, false);
    r.verdict(NF_ACCEPT, "accept");
    return r.done(text + " accept");
}

std::string no_dest_exception(RuleBuilder& r, bool v6) {
    ip_tcp(r, v6);
    std::string text;
    for (const DestSet set : kDestSets) {
        if (is_ipv6(set) != v6)
            continue;
        for (const DestKind kind : kDestKinds)
            text += (text.empty() ? "" : " ") + lookup(r, set, kind, true);
    }
    return text;
}

}  // namespace smtpfence::nft
