// Relay exceptions against the real kernel: the dest_* sets and the chains that
// consult them, in a server namespace joined to a remote one (harness.h's Topology).
// An exception lets its uid, gid or everyone through to its destination and ports
// only, is neither counted in @blocked nor redirected, and counts in its own element.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <cerrno>
#include <memory>
#include <string>

#include "nft/dest_sets.h"
#include "nft/engine.h"
#include "nft/rule_builder.h"
#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using nft::DestRange;
using nft::DestSet;
using nft::QueueMode;
using nft::RulesetSpec;

// A second host on the remote side: the same listener, another address.
constexpr const char* kOther4 = "192.0.2.26";
constexpr const char* kOther6 = "2001:db8::26";

DestRange range(DestSet set, std::uint32_t id, const char* lo, const char* hi,
                std::uint16_t port_lo, std::uint16_t port_hi) {
    DestRange r{set, id, {}, {}, port_lo, port_hi};
    const int family = nft::is_ipv6(set) ? AF_INET6 : AF_INET;
    EXPECT_EQ(inet_pton(family, lo, r.addr_lo.data()), 1) << lo;
    EXPECT_EQ(inet_pton(family, hi, r.addr_hi.data()), 1) << hi;
    return r;
}

DestRange host(DestSet set, std::uint32_t id, const char* addr, std::uint16_t port) {
    return range(set, id, addr, addr, port, port);
}

class DestTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (auto why = skip_reason())
            GTEST_SKIP() << *why;
        auto topo = Topology::create();
        ASSERT_TRUE(topo) << topo.error().message();
        topo_ = std::make_unique<Topology>(std::move(*topo));
        const std::string& r = topo_->remote.name();
        ASSERT_EQ(run(nullptr,
                      {"ip", "-n", r, "addr", "add", std::string(kOther4) + "/24", "dev", "veth0"})
                      .exit_code,
                  0);
        ASSERT_EQ(run(nullptr, {"ip", "-n", r, "addr", "add", std::string(kOther6) + "/64", "dev",
                                "veth0", "nodad"})
                      .exit_code,
                  0);
        auto listener = SmtpListener::start(topo_->remote, {25, 587}, kRemoteHost);
        ASSERT_TRUE(listener) << listener.error().message();
        remote_smtp_ = std::make_unique<SmtpListener>(std::move(*listener));
        auto opened = NsEngine::open(topo_->server);
        ASSERT_TRUE(opened) << opened.error().message();
        engine_ = std::move(*opened);
        table_ = unique_table_name();
        auto mode = engine().probe_queue_mode(table_ + "_probe");
        ASSERT_TRUE(mode) << mode.error().message();
        queue_ = *mode;
    }

    nft::Engine& engine() { return engine_->engine(); }

    RulesetSpec spec(std::set<DestRange> dest) const {
        RulesetSpec s;
        s.table = table_;
        s.allow_uids = {0};
        s.allow_gids = {8};
        s.queue = queue_;
        s.dest = std::move(dest);
        return s;
    }

    // Applies spec and checks that the kernel lists what render_nft says.
    void apply(const RulesetSpec& s) {
        const nft::Ruleset rs = nft::build_ruleset(s);
        auto applied = engine().apply(rs);
        ASSERT_TRUE(applied) << applied.error().message();
        expect_listed(rs);
    }

    // The kernel's listing is rs, but for the elements of @blocked, which a re-apply
    // keeps (with their counts).
    void expect_listed(const nft::Ruleset& rs) {
        auto listing = nft_list_table(topo_->server, table_);
        ASSERT_TRUE(listing) << listing.error().message();
        const std::string start = "\tset blocked {\n";
        const std::size_t set_at = listing->find(start);
        const std::size_t end = listing->find("\t}\n", set_at);
        const std::size_t elements = listing->find("\t\telements = {", set_at);
        if (set_at != std::string::npos && elements < end)
            listing->erase(elements, end - elements);
        EXPECT_EQ(*listing, nft::render_nft(rs));
    }

    Outcome connect(const Credentials& who, const std::string& address, std::uint16_t port) {
        return connect_as(topo_->server, who, address, port).outcome;
    }

    std::uint64_t dest_packets(const DestRange& r) {
        auto counters = engine().read_dest_counters(table_);
        EXPECT_TRUE(counters) << counters.error().message();
        if (!counters || !counters->contains(r))
            return 0;
        return counters->at(r).packets;
    }

    std::uint64_t blocked_packets(uid_t uid) {
        auto blocked = engine().read_blocked(table_);
        EXPECT_TRUE(blocked) << blocked.error().message();
        if (!blocked || !blocked->contains(uid))
            return 0;
        return blocked->at(uid).packets;
    }

    std::string table_;
    QueueMode queue_ = QueueMode::None;
    std::unique_ptr<Topology> topo_;
    std::unique_ptr<SmtpListener> remote_smtp_;
    std::unique_ptr<NsEngine> engine_;
};

// One address with one port goes to the exact (hash) sets, anything wider to the
// interval ones; both let through and count, and the kernel lists both as render_nft
// does (the exact elements in nft's order, which is not DestRange's).
TEST_F(DestTest, AnExceptionLetsThroughItsDestinationAndPortOnly) {
    const DestRange bob4 = host(DestSet::Uid4, kBob.uid, Topology::kRemote4, 587);
    const DestRange bob6 = host(DestSet::Uid6, kBob.uid, Topology::kRemote6, 587);
    const DestRange bob_ports = range(DestSet::Uid4, kBob.uid, kOther4, kOther4, 25, 26);
    ASSERT_EQ(nft::dest_kind(bob4), nft::DestKind::Exact);
    ASSERT_EQ(nft::dest_kind(bob_ports), nft::DestKind::Interval);
    ASSERT_NO_FATAL_FAILURE(
        apply(spec({bob4, bob6, bob_ports, host(DestSet::Uid4, kAlice.uid, "203.0.113.7", 25),
                    host(DestSet::Uid4, kCarol.uid, "10.1.2.3", 587),
                    host(DestSet::All4, 0, "203.0.113.9", 465)})));

    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Connected);
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 25), Outcome::Refused);     // another port
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Refused);               // another port
    EXPECT_EQ(connect(kBob, kOther4, 25), Outcome::Connected);              // the interval
    EXPECT_EQ(connect(kAlice, Topology::kRemote4, 587), Outcome::Refused);  // another uid
    EXPECT_EQ(connect(kBob, Topology::kRemote6, 587), Outcome::Connected);
    EXPECT_EQ(connect(kBob, Topology::kRemote6, 25), Outcome::Refused);
    EXPECT_EQ(connect(kBob, kOther6, 587), Outcome::Refused);

    // Each allowed connection counted once, in its element; only refusals in @blocked.
    EXPECT_EQ(dest_packets(bob4), 1U);
    EXPECT_EQ(dest_packets(bob6), 1U);
    EXPECT_EQ(dest_packets(bob_ports), 1U);
    EXPECT_EQ(blocked_packets(kBob.uid), 4U);
    EXPECT_EQ(blocked_packets(kAlice.uid), 1U);
    auto counters = engine().read_dest_counters(table_);
    ASSERT_TRUE(counters) << counters.error().message();
    EXPECT_EQ(counters->size(), 6U);
}

// A primary gid (dave's is webmail; carol has it only as a supplementary group, which
// the socket does not carry), everyone, a network with every port, a port range.
TEST_F(DestTest, GroupsEveryoneNetworksAndPortRanges) {
    const DestRange webmail =
        range(DestSet::Gid4, kWebmailGid, "192.0.2.0", "192.0.2.127", 0, 65535);
    const DestRange all6 = range(DestSet::All6, 0, "2001:db8::", "2001:db8::ffff", 25, 465);
    const DestRange all4 = host(DestSet::All4, 0, kOther4, 587);
    ASSERT_NO_FATAL_FAILURE(apply(spec({webmail, all6, all4})));

    EXPECT_EQ(connect(kDave, Topology::kRemote4, 25), Outcome::Connected);
    EXPECT_EQ(connect(kDave, kOther4, 587), Outcome::Connected);
    EXPECT_EQ(connect(kCarol, Topology::kRemote4, 25), Outcome::Refused);
    EXPECT_EQ(connect(kAlice, Topology::kRemote6, 25), Outcome::Connected);
    EXPECT_EQ(connect(kAlice, Topology::kRemote6, 587), Outcome::Refused);
    EXPECT_EQ(connect(kAlice, kOther6, 25), Outcome::Connected);
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Connected);
    EXPECT_EQ(connect(kBob, kOther4, 25), Outcome::Refused);

    EXPECT_EQ(dest_packets(webmail), 2U);
    EXPECT_EQ(dest_packets(all6), 2U);
    EXPECT_EQ(dest_packets(all4), 1U);
    EXPECT_EQ(blocked_packets(kDave.uid), 0U);
    EXPECT_EQ(blocked_packets(kAlice.uid), 1U);
}

TEST_F(DestTest, ChangeDestTakesEffectWithoutReload) {
    ASSERT_NO_FATAL_FAILURE(apply(spec({})));
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Refused);

    const DestRange one = host(DestSet::Uid4, kBob.uid, Topology::kRemote4, 587);
    auto r = engine().change_dest(table_, {one}, {});
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Connected);
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Refused);
    EXPECT_EQ(dest_packets(one), 1U);

    // Replaced by the network around it in one transaction (the two overlap).
    const DestRange net = range(DestSet::Uid4, kBob.uid, "192.0.2.0", "192.0.2.255", 587, 587);
    r = engine().change_dest(table_, {net}, {one});
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Connected);
    auto counters = engine().read_dest_counters(table_);
    ASSERT_TRUE(counters) << counters.error().message();
    ASSERT_EQ(counters->size(), 1U);
    EXPECT_EQ(counters->begin()->first, net);

    // Adding what is there is fine, in either set; an exact element beside the
    // interval counts on its own; a range starting inside another is EEXIST; removing
    // an element no set holds is ENOENT; a refused call changes nothing.
    r = engine().change_dest(table_, {net}, {});
    EXPECT_TRUE(r) << r.error().message();
    const DestRange smtp = host(DestSet::Uid4, kBob.uid, kOther4, 25);
    for (int i = 0; i < 2; ++i) {
        r = engine().change_dest(table_, {smtp}, {});
        ASSERT_TRUE(r) << r.error().message();
    }
    EXPECT_EQ(connect(kBob, kOther4, 25), Outcome::Connected);
    EXPECT_EQ(dest_packets(smtp), 1U);
    const DestRange inside = range(DestSet::Uid4, kBob.uid, "192.0.2.10", "192.0.2.20", 587, 587);
    r = engine().change_dest(table_, {inside}, {});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EEXIST) << r.error().message();
    const DestRange v6 = host(DestSet::Uid6, kBob.uid, Topology::kRemote6, 587);
    const DestRange elsewhere = host(DestSet::Uid4, kBob.uid, "203.0.113.1", 587);
    r = engine().change_dest(table_, {v6}, {elsewhere});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT) << r.error().message();
    EXPECT_EQ(connect(kBob, Topology::kRemote6, 587), Outcome::Refused);
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Connected);

    r = engine().change_dest(table_, {}, {net, smtp});
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(connect(kBob, kOther4, 587), Outcome::Refused);
    EXPECT_EQ(connect(kBob, kOther4, 25), Outcome::Refused);
    counters = engine().read_dest_counters(table_);
    ASSERT_TRUE(counters) << counters.error().message();
    EXPECT_TRUE(counters->empty());
}

// SMTP_REDIRECT: an exception reaches its destination, the rest the local MTA.
TEST_F(DestTest, RedirectLeavesExceptionsAlone) {
    auto mta = SmtpListener::start(topo_->server, {25, 587}, kServerHost);
    ASSERT_TRUE(mta) << mta.error().message();
    const DestRange bob4 = host(DestSet::Uid4, kBob.uid, Topology::kRemote4, 587);
    RulesetSpec s = spec({bob4});
    s.redirect = true;
    ASSERT_NO_FATAL_FAILURE(apply(s));

    ConnectResult allowed = connect_as(topo_->server, kBob, Topology::kRemote4, 587);
    ASSERT_EQ(allowed.outcome, Outcome::Connected) << allowed.describe();
    EXPECT_EQ(allowed.greeting, SmtpListener::greeting_for(kRemoteHost));
    ConnectResult diverted = connect_as(topo_->server, kBob, Topology::kRemote4, 25);
    ASSERT_EQ(diverted.outcome, Outcome::Connected) << diverted.describe();
    EXPECT_EQ(diverted.greeting, SmtpListener::greeting_for(kServerHost));

    EXPECT_EQ(dest_packets(bob4), 1U);
    EXPECT_EQ(blocked_packets(kBob.uid), 1U);
}

// A table of the previous version (no dest sets, no sample chain, the observe rule
// counting and queueing itself) is upgraded in place: its chains kept, its sets
// replaced but blocked, the new ones added; it then lists as one built whole.
TEST_F(DestTest, UpgradeFromATableWithoutExceptions) {
    const RulesetSpec s = spec({host(DestSet::Uid4, kBob.uid, Topology::kRemote4, 587)});
    nft::Ruleset old = nft::build_ruleset(spec({}));
    std::erase_if(old.sets, [](const nft::BuiltSet& set) { return set.name.starts_with("dest_"); });
    std::erase_if(old.chains, [](const nft::BuiltChain& c) { return c.name == nft::kChainSample; });
    std::erase_if(old.rules, [](const nft::BuiltRule& rule) {
        return rule.chain == nft::kChainSample || rule.chain == nft::kChainObserve ||
               rule.text.find("@dest_") != std::string::npos;
    });
    // The previous observe rule (its text is not compared here).
    nft::RuleBuilder observe(table_, nft::kChainObserve);
    observe.smtp_syn()
        .meta(NFT_META_SKUID, "meta skuid")
        .dynset(NFT_DYNSET_OP_UPDATE, nft::kSetBlocked, nullptr, "update @blocked");
    if (queue_ == QueueMode::Native)
        observe.native_queue(2525, "queue");
    else
        observe.xt_nfqueue(2525, "NFQUEUE target");
    old.rules.insert(old.rules.begin(), observe.done("previous observe rule"));
    auto first = engine().apply(old);
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Refused);
    EXPECT_EQ(blocked_packets(kBob.uid), 1U);

    const nft::Ruleset rs = nft::build_ruleset(s);
    auto upgraded = engine().apply(rs);
    ASSERT_TRUE(upgraded) << upgraded.error().message();
    EXPECT_TRUE(upgraded->counters_kept) << upgraded->note;
    ASSERT_NO_FATAL_FAILURE(expect_listed(rs));
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Connected);
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 25), Outcome::Refused);
    EXPECT_EQ(blocked_packets(kBob.uid), 2U);

    // And a reload with other exceptions replaces the sets' elements.
    ASSERT_NO_FATAL_FAILURE(apply(spec({host(DestSet::All4, 0, kOther4, 25)})));
    EXPECT_EQ(connect(kBob, Topology::kRemote4, 587), Outcome::Refused);
    EXPECT_EQ(connect(kBob, kOther4, 25), Outcome::Connected);
    EXPECT_EQ(blocked_packets(kBob.uid), 3U);
}

}  // namespace
}  // namespace smtpfence::itest
