// Golden tests of the rule builder: the exact bytecode and nft text each policy shape
// produces. The same text is compared with the kernel's own listing by the root
// integration tests, so golden text, bytecode and kernel state are tied together.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libnftnl/set.h>
#include <linux/netfilter/nf_tables.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "nft/dest_sets.h"
#include "nft/ruleset.h"

namespace smtpfence::nft {
namespace {

std::string golden_path(const std::string& name) {
    return std::string(SMTPFENCE_SOURCE_DIR) + "/tests/golden/" + name;
}

// Compares with the golden file; SMTPFENCE_UPDATE_GOLDEN=1 rewrites it instead (then
// review the diff by hand before committing).
void expect_golden(const std::string& name, const std::string& actual) {
    const std::string path = golden_path(name);
    if (std::getenv("SMTPFENCE_UPDATE_GOLDEN") != nullptr) {  // NOLINT(concurrency-mt-unsafe)
        std::ofstream(path) << actual;
        return;
    }
    std::ifstream in(path);
    ASSERT_TRUE(in.good()) << "missing golden file " << path;
    std::stringstream expected;
    expected << in.rdbuf();
    EXPECT_EQ(actual, expected.str()) << "golden file " << path;
}

RulesetSpec default_spec() {
    RulesetSpec spec;
    spec.table = "smtpfence";
    spec.allow_uids = {0, 8, 101};
    spec.allow_gids = {8, 38};
    spec.queue = QueueMode::Xt;
    return spec;
}

// A range of addresses (IPv4 or IPv6 text, by the set) and ports.
DestRange range(DestSet set, std::uint32_t id, const char* lo, const char* hi,
                std::uint16_t port_lo, std::uint16_t port_hi) {
    DestRange r{set, id, {}, {}, port_lo, port_hi};
    const int family = is_ipv6(set) ? AF_INET6 : AF_INET;
    EXPECT_EQ(inet_pton(family, lo, r.addr_lo.data()), 1) << lo;
    EXPECT_EQ(inet_pton(family, hi, r.addr_hi.data()), 1) << hi;
    return r;
}

// Exceptions in each of the six DestSets: networks, single addresses, a range that is
// no network, single ports, port ranges and every port; one address with one port goes
// to the exact (hash) set, listed in nft's order (2003's before 2002's).
std::set<DestRange> dest_exceptions() {
    return {
        range(DestSet::Uid4, 2001, "198.51.100.0", "198.51.100.255", 587, 587),
        range(DestSet::Uid4, 2002, "10.0.0.1", "10.0.0.1", 587, 587),
        range(DestSet::Uid4, 2003, "192.0.2.30", "192.0.2.30", 25, 25),
        range(DestSet::Gid4, 3000, "192.0.2.40", "192.0.2.40", 465, 465),
        range(DestSet::Uid4, 2001, "192.0.2.25", "192.0.2.25", 25, 587),
        range(DestSet::Uid4, 2002, "192.0.2.7", "192.0.2.9", 0, 65535),
        range(DestSet::Uid6, 2001, "2001:db8::25", "2001:db8::25", 587, 587),
        range(DestSet::Gid4, 3000, "203.0.113.0", "203.0.113.15", 0, 65535),
        range(DestSet::Gid6, 3000, "2001:db8:1::", "2001:db8:1:0:ffff:ffff:ffff:ffff", 465, 465),
        range(DestSet::All4, 0, "192.0.2.100", "192.0.2.100", 587, 587),
        range(DestSet::All6, 0, "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 25, 25),
    };
}

TEST(Ruleset, DefaultPolicyBytecode) {
    expect_golden("default-xt.bytecode", render_bytecode(build_ruleset(default_spec())));
}

TEST(Ruleset, DefaultPolicyNftText) {
    expect_golden("default-xt.nft", render_nft(build_ruleset(default_spec())));
}

TEST(Ruleset, NativeQueueDropNoLocal) {
    RulesetSpec spec = default_spec();
    spec.queue = QueueMode::Native;
    spec.verdict = Verdict::Drop;
    spec.allow_local = false;
    spec.ports = {2525, 25};
    spec.queue_num = 7;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("native-drop-nolocal.bytecode", render_bytecode(rs));
    expect_golden("native-drop-nolocal.nft", render_nft(rs));
}

TEST(Ruleset, NoQueueSupportHasNoObserveChain) {
    RulesetSpec spec = default_spec();
    spec.queue = QueueMode::None;
    const Ruleset rs = build_ruleset(spec);
    for (const BuiltChain& c : rs.chains)
        EXPECT_NE(c.name, kChainObserve);
    for (const BuiltSet& s : rs.sets)
        EXPECT_NE(s.name, kSetObserveRate);
    // Enforcement does not depend on the worker: enforce + judge are all there.
    const std::string text = render_nft(rs);
    EXPECT_NE(text.find("chain enforce"), std::string::npos);
    EXPECT_NE(text.find("meta l4proto tcp reject with tcp reset"), std::string::npos);
    EXPECT_EQ(text.find("queue"), std::string::npos);
    // With no observe chain, judge is where blocked SYNs are counted.
    EXPECT_NE(text.find("update @blocked { meta skuid }"), std::string::npos);
}

// Linux 5.10 has no set expressions (RulesetSpec::set_expressions): `blocked` has no
// counter of its own, and each rule that adds to it (sample; judge without a queue;
// divert with SMTP_REDIRECT) gives the element its counter.
TEST(Ruleset, WithoutSetExpressionsTheRulesCarryBlockedsCounter) {
    RulesetSpec spec = default_spec();
    spec.queue = QueueMode::Native;
    spec.set_expressions = false;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("native-no-set-expressions.nft", render_nft(rs));
    expect_golden("native-no-set-expressions.bytecode", render_bytecode(rs));
    for (const BuiltSet& s : rs.sets) {
        if (s.name == kSetBlocked) {
            EXPECT_EQ(nftnl_set_get_u32(s.set.get(), NFTNL_SET_FLAGS), NFT_SET_EVAL);
        }
    }
    for (const QueueMode queue : {QueueMode::Native, QueueMode::None}) {
        for (const bool redirect : {false, true}) {
            RulesetSpec with = default_spec();
            with.queue = queue;
            with.redirect = redirect;
            RulesetSpec without = with;
            without.set_expressions = false;
            const std::string text_with = render_nft(build_ruleset(with));
            const std::string text_without = render_nft(build_ruleset(without));
            const auto count = [](const std::string& text, const std::string& what) {
                std::size_t n = 0;
                for (auto at = text.find(what); at != std::string::npos;
                     at = text.find(what, at + 1))
                    ++n;
                return n;
            };
            const std::size_t updates = count(text_with, "update @blocked { meta skuid }");
            EXPECT_GT(updates, 0U);
            EXPECT_EQ(count(text_without, "update @blocked { meta skuid }"), 0U);
            EXPECT_EQ(count(text_without, "update @blocked { meta skuid counter }"), updates)
                << text_without;
            EXPECT_EQ(count(text_with, "\t\tcounter\n") - count(text_without, "\t\tcounter\n"), 1U)
                << "only blocked's own counter goes";
        }
    }
}

// Relay exceptions: the six sets filled, the observe tail in the sample chain for the
// SYNs no exception allows, the judge's accepts (the one place whose lookups count)
// before the verdict.
TEST(Ruleset, DestExceptions) {
    RulesetSpec spec = default_spec();
    spec.dest = dest_exceptions();
    const Ruleset rs = build_ruleset(spec);
    expect_golden("dest-xt.bytecode", render_bytecode(rs));
    expect_golden("dest-xt.nft", render_nft(rs));
}

// With SMTP_REDIRECT and no queue: the divert chain counts and redirects only the SYNs
// no exception allows; the judge counts after its exception accepts.
TEST(Ruleset, DestExceptionsRedirectNoQueue) {
    RulesetSpec spec = default_spec();
    spec.dest = dest_exceptions();
    spec.redirect = true;
    spec.queue = QueueMode::None;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("dest-redirect-none.bytecode", render_bytecode(rs));
    expect_golden("dest-redirect-none.nft", render_nft(rs));
}

TEST(Ruleset, DestSetsArePresentAndEmptyWithoutExceptions) {
    const Ruleset rs = build_ruleset(default_spec());
    for (const DestSet set : kDestSets) {
        for (const DestKind kind : kDestKinds) {
            const std::string name = dest_set_name(set, kind);
            const auto it = std::find_if(rs.sets.begin(), rs.sets.end(),
                                         [&](const BuiltSet& s) { return s.name == name; });
            ASSERT_NE(it, rs.sets.end()) << name;
            EXPECT_TRUE(it->keys.empty());
            EXPECT_EQ(it->header.back(), "counter");
        }
    }
    EXPECT_STREQ(dest_set_name(DestSet::Gid6, DestKind::Exact), "dest_gid6_host");
    EXPECT_STREQ(dest_set_name(DestSet::Gid6, DestKind::Interval), "dest_gid6");
}

// One address and one port: the hash; anything wider: the intervals.
TEST(Ruleset, DestKindByTheRangesShape) {
    EXPECT_EQ(dest_kind(range(DestSet::Uid4, 1, "192.0.2.25", "192.0.2.25", 587, 587)),
              DestKind::Exact);
    EXPECT_EQ(dest_kind(range(DestSet::All6, 0, "2001:db8::25", "2001:db8::25", 25, 25)),
              DestKind::Exact);
    EXPECT_EQ(dest_kind(range(DestSet::Uid4, 1, "192.0.2.25", "192.0.2.25", 0, 65535)),
              DestKind::Interval);
    EXPECT_EQ(dest_kind(range(DestSet::Uid4, 1, "192.0.2.25", "192.0.2.25", 25, 587)),
              DestKind::Interval);
    EXPECT_EQ(dest_kind(range(DestSet::Uid4, 1, "192.0.2.24", "192.0.2.25", 587, 587)),
              DestKind::Interval);
}

// uid big-endian, the address as given (network order), the port big-endian and
// padded to 4 bytes; KEY_END the range's last point.
TEST(Ruleset, DestKeysAndTheirWayBack) {
    const DestRange r = range(DestSet::Uid4, 1000, "198.51.100.0", "198.51.100.255", 25, 587);
    const DestKeys keys = dest_keys(r);
    EXPECT_EQ(keys.key, (ElementKey{0x00, 0x00, 0x03, 0xe8, 198, 51, 100, 0, 0x00, 0x19, 0, 0}));
    EXPECT_EQ(keys.key_end,
              (ElementKey{0x00, 0x00, 0x03, 0xe8, 198, 51, 100, 255, 0x02, 0x4b, 0, 0}));
    EXPECT_EQ(dest_range_from_keys(DestSet::Uid4, DestKind::Interval, keys.key, keys.key_end), r);
    EXPECT_EQ(dest_range_from_keys(DestSet::Uid6, DestKind::Interval, keys.key, keys.key_end),
              std::nullopt);
    for (const DestRange& each : dest_exceptions()) {
        const DestKeys k = dest_keys(each);
        EXPECT_EQ(dest_range_from_keys(each.set, dest_kind(each), k.key, k.key_end), each)
            << dest_element_text(each);
    }
}

// An exact element: the key alone, the uid in host byte order (as nft 1.0.6 stores
// `1000 . 192.0.2.25 . 587`: "element 000003e8 190200c0 00004b02"), the rest as in
// the interval keys.
TEST(Ruleset, DestExactKeysAndTheirWayBack) {
    const DestRange r = range(DestSet::Uid4, 1000, "192.0.2.25", "192.0.2.25", 587, 587);
    const DestKeys keys = dest_keys(r);
    std::uint32_t id = 0;
    ASSERT_EQ(keys.key.size(), 12U);
    std::memcpy(&id, keys.key.data(), sizeof id);
    EXPECT_EQ(id, 1000U);
    EXPECT_EQ(ElementKey(keys.key.begin() + 4, keys.key.end()),
              (ElementKey{192, 0, 2, 25, 0x02, 0x4b, 0, 0}));
    EXPECT_TRUE(keys.key_end.empty());
    EXPECT_EQ(dest_range_from_keys(DestSet::Uid4, DestKind::Exact, keys.key, {}), r);
    EXPECT_EQ(dest_range_from_keys(DestSet::Uid4, DestKind::Exact, keys.key, keys.key), r);
    EXPECT_EQ(dest_range_from_keys(DestSet::Uid6, DestKind::Exact, keys.key, {}), std::nullopt);
    const DestRange all6 = range(DestSet::All6, 0, "2001:db8::25", "2001:db8::25", 25, 25);
    const DestKeys k6 = dest_keys(all6);
    EXPECT_EQ(k6.key.size(), 20U);
    EXPECT_EQ(dest_range_from_keys(DestSet::All6, DestKind::Exact, k6.key, {}), all6);
}

// The attributes nft 1.0.6 sends for `type uid . ipv4_addr . inet_service; flags
// interval; counter;` (read with `nft --debug=netlink` and back from the kernel).
TEST(Ruleset, DestSetAttributesAsNftMakesThem) {
    const BuiltSet set = build_dest_set("t", DestSet::Uid4, DestKind::Interval, {}, 6);
    nftnl_set* s = set.set.get();
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_KEY_TYPE), 0x181cdU);
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_KEY_LEN), 12U);
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_FLAGS), 0x84U);  // INTERVAL | CONCAT
    std::uint32_t len = 0;
    const auto* udata =
        static_cast<const std::uint8_t*>(nftnl_set_get_data(s, NFTNL_SET_USERDATA, &len));
    ASSERT_NE(udata, nullptr);
    EXPECT_EQ(std::vector<std::uint8_t>(udata, udata + len),
              (std::vector<std::uint8_t>{0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x08, 0x00, 0x04,
                                         0x0d, 0x00, 0x00, 0x00, 0x01, 0x00}));
    const BuiltSet all6 = build_dest_set("t", DestSet::All6, DestKind::Interval, {}, 11);
    EXPECT_EQ(nftnl_set_get_u32(all6.set.get(), NFTNL_SET_KEY_TYPE), 0x20dU);
    EXPECT_EQ(nftnl_set_get_u32(all6.set.get(), NFTNL_SET_KEY_LEN), 20U);
}

// And for `type uid . ipv4_addr . inet_service; counter;` (`nft --debug=mnl`): the
// same key type, length and user data, flags 0 and no part lengths, so the kernel
// makes it a hash.
TEST(Ruleset, DestExactSetAttributesAsNftMakesThem) {
    const BuiltSet set = build_dest_set("t", DestSet::Uid4, DestKind::Exact, {}, 7);
    const BuiltSet interval = build_dest_set("t", DestSet::Uid4, DestKind::Interval, {}, 6);
    nftnl_set* s = set.set.get();
    EXPECT_EQ(set.name, "dest_uid4_host");
    EXPECT_EQ(set.header,
              (std::vector<std::string>{"type uid . ipv4_addr . inet_service", "counter"}));
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_KEY_TYPE), 0x181cdU);
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_KEY_LEN), 12U);
    ASSERT_TRUE(nftnl_set_is_set(s, NFTNL_SET_FLAGS));
    EXPECT_EQ(nftnl_set_get_u32(s, NFTNL_SET_FLAGS), 0U);
    EXPECT_FALSE(nftnl_set_is_set(s, NFTNL_SET_DESC_CONCAT));
    EXPECT_TRUE(nftnl_set_is_set(interval.set.get(), NFTNL_SET_DESC_CONCAT));
    std::uint32_t len = 0;
    std::uint32_t interval_len = 0;
    const auto* udata =
        static_cast<const std::uint8_t*>(nftnl_set_get_data(s, NFTNL_SET_USERDATA, &len));
    const auto* interval_udata = static_cast<const std::uint8_t*>(
        nftnl_set_get_data(interval.set.get(), NFTNL_SET_USERDATA, &interval_len));
    ASSERT_NE(udata, nullptr);
    ASSERT_NE(interval_udata, nullptr);
    EXPECT_EQ(std::vector<std::uint8_t>(udata, udata + len),
              std::vector<std::uint8_t>(interval_udata, interval_udata + interval_len));
}

TEST(Ruleset, DestElementTextAsNftPrintsIt) {
    EXPECT_EQ(
        dest_element_text(range(DestSet::Uid4, 1000, "198.51.100.0", "198.51.100.255", 587, 587)),
        "1000 . 198.51.100.0/24 . 587");
    EXPECT_EQ(dest_element_text(range(DestSet::Gid4, 8, "192.0.2.7", "192.0.2.9", 0, 65535)),
              "8 . 192.0.2.7-192.0.2.9 . 0-65535");
    EXPECT_EQ(dest_element_text(range(DestSet::All4, 0, "0.0.0.0", "255.255.255.255", 25, 25)),
              "0.0.0.0/0 . 25");
    EXPECT_EQ(dest_element_text(range(DestSet::All6, 0, "2001:db8::25", "2001:db8::25", 25, 465)),
              "2001:db8::25 . 25-465");
    EXPECT_EQ(dest_element_text(range(DestSet::Uid6, 7, "2001:db8::", "2001:db8::1", 25, 25)),
              "7 . 2001:db8::/127 . 25");
    EXPECT_EQ(dest_element_text(range(DestSet::Uid6, 7, "2001:db8::1", "2001:db8::2", 25, 25)),
              "7 . 2001:db8::1-2001:db8::2 . 25");
}

TEST(Ruleset, PortsSortedAndUniqueInNetworkOrder) {
    RulesetSpec spec = default_spec();
    spec.ports = {587, 25, 587, 465};
    const Ruleset rs = build_ruleset(spec);
    const auto it = std::find_if(rs.sets.begin(), rs.sets.end(),
                                 [](const BuiltSet& s) { return s.name == kSetPorts; });
    ASSERT_NE(it, rs.sets.end());
    const BuiltSet& ports = *it;
    EXPECT_EQ(ports.elements, (std::vector<std::string>{"25", "465", "587"}));
    ASSERT_EQ(ports.keys.size(), 3U);
    EXPECT_EQ(ports.keys[0], (ElementKey{0x00, 0x19}));  // 25, big-endian
}

TEST(Ruleset, UidKeysAreHostOrder) {
    const auto keys = u32_keys({1, 0x01020304});
    ASSERT_EQ(keys.size(), 2U);
    std::uint32_t v = 0;
    std::memcpy(&v, keys[1].data(), sizeof v);
    EXPECT_EQ(v, 0x01020304U);
}

// CSF's DROP_OUT_LOGGING with DROP_UID_LOGGING: a rate-limited log rule per family
// before the verdict.
TEST(Ruleset, CsfLoggingWithUid) {
    RulesetSpec spec = default_spec();
    spec.log_blocked = true;
    spec.log_uid = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-log-uid-xt.bytecode", render_bytecode(rs));
    expect_golden("csf-log-uid-xt.nft", render_nft(rs));
}

// CSF's SMTP_REDIRECT: the nat chain takes the judge's decision first and redirects.
TEST(Ruleset, CsfRedirect) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-redirect-xt.bytecode", render_bytecode(rs));
    expect_golden("csf-redirect-xt.nft", render_nft(rs));
}

// Redirect without allow-local, without queue support, dropping and logging without
// the uid: the nat rule redirects local SMTP too, lo still passes the filter chains,
// and the judge counts what reaches it.
TEST(Ruleset, CsfRedirectNoLocalNoQueueDropLogging) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    spec.allow_local = false;
    spec.queue = QueueMode::None;
    spec.verdict = Verdict::Drop;
    spec.log_blocked = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-redirect-nolocal-none.bytecode", render_bytecode(rs));
    expect_golden("csf-redirect-nolocal-none.nft", render_nft(rs));
}

// A chain a reload adds is listed after the kept ones: the chains that come and go
// with SMTP_REDIRECT are last.
TEST(Ruleset, NatChainsOnlyWithRedirectAndLaterChainsListedLast) {
    for (const bool redirect : {false, true}) {
        RulesetSpec spec = default_spec();
        spec.redirect = redirect;
        const Ruleset rs = build_ruleset(spec);
        std::vector<std::string> names;
        for (const BuiltChain& c : rs.chains)
            names.push_back(c.name);
        if (redirect) {
            EXPECT_EQ(names, (std::vector<std::string>{kChainObserve, kChainEnforce, kChainJudge,
                                                       kChainBackstop, kChainSample, kChainToMta,
                                                       kChainDivert}));
        } else {
            EXPECT_EQ(names, (std::vector<std::string>{kChainObserve, kChainEnforce, kChainJudge,
                                                       kChainBackstop, kChainSample}));
        }
        const std::string text = render_nft(rs);
        EXPECT_EQ(text.find("redirect") != std::string::npos, redirect);
        EXPECT_EQ(text.find("log prefix"), std::string::npos);
    }
}

TEST(Ruleset, EveryRuleHasAnExpressionLabelPerExpression) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    spec.log_blocked = true;
    spec.log_uid = true;
    const Ruleset rs = build_ruleset(spec);
    for (const BuiltRule& r : rs.rules) {
        std::size_t count = 0;
        nftnl_expr_iter* it = nftnl_expr_iter_create(r.rule.get());
        while (nftnl_expr_iter_next(it) != nullptr)
            ++count;
        nftnl_expr_iter_destroy(it);
        EXPECT_EQ(count, r.expr_names.size()) << r.text;
    }
}

}  // namespace
}  // namespace smtpfence::nft
