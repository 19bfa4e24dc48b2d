// The Engine against the real kernel, in a namespace of its own: the paths the daemon
// relies on (replace, incremental elements, errors that name their object, probing).
#include <gtest/gtest.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <cerrno>
#include <memory>
#include <string>

#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using nft::QueueMode;
using nft::RulesetSpec;
using U32Set = std::set<std::uint32_t>;

class EngineTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (auto why = skip_reason())
            GTEST_SKIP() << *why;
        auto ns = Netns::create();
        ASSERT_TRUE(ns) << ns.error().message();
        ns_ = std::make_unique<Netns>(std::move(*ns));
        auto engine = NsEngine::open(*ns_);
        ASSERT_TRUE(engine) << engine.error().message();
        engine_ = std::move(*engine);
        table_ = unique_table_name();
    }

    nft::Engine& engine() { return engine_->engine(); }

    RulesetSpec spec(U32Set allow_uids, QueueMode queue = QueueMode::None) const {
        RulesetSpec s;
        s.table = table_;
        s.allow_uids = std::move(allow_uids);
        s.allow_gids = {8};
        s.queue = queue;
        return s;
    }

    U32Set allow_uids() {
        auto set = engine().read_u32_set(table_, nft::kSetAllowUid);
        EXPECT_TRUE(set) << set.error().message();
        return set ? *set : U32Set{};
    }

    std::string ruleset_text() { return run(*ns_, {"nft", "list", "ruleset"}).output(); }

    std::string table_;
    std::unique_ptr<Netns> ns_;
    std::unique_ptr<NsEngine> engine_;
};

TEST_F(EngineTest, ApplyTwiceReplacesTheTable) {
    auto first = engine().apply(nft::build_ruleset(spec({0, 8, 2001})));
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_FALSE(first->table_existed);
    EXPECT_EQ(allow_uids(), (U32Set{0, 8, 2001}));

    RulesetSpec second_spec = spec({0, 2002});
    second_spec.ports = {25, 2525};
    auto second = engine().apply(nft::build_ruleset(second_spec));
    ASSERT_TRUE(second) << "second apply (EEXIST?): " << second.error().message();
    EXPECT_TRUE(second->table_existed);
    EXPECT_EQ(allow_uids(), (U32Set{0, 2002}));
    auto listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing) << listing.error().message();
    EXPECT_NE(listing->find("elements = { 25, 2525 }"), std::string::npos) << *listing;
    EXPECT_EQ(listing->find("465"), std::string::npos) << "old ports survived:\n" << *listing;

    // The same ruleset once more: replacing with identical content is no error either.
    auto third = engine().apply(nft::build_ruleset(second_spec));
    ASSERT_TRUE(third) << third.error().message();
    EXPECT_EQ(allow_uids(), (U32Set{0, 2002}));
}

TEST_F(EngineTest, ReapplyKeepsTheBlockedSetsPerUidCounters) {
    ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
    RulesetSpec s = spec({0});
    s.allow_local = false;  // so that SYNs to 127.0.0.1 are judged and counted
    ASSERT_TRUE(engine().apply(nft::build_ruleset(s)));
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    }
    auto before = engine().read_blocked(table_);
    ASSERT_TRUE(before) << before.error().message();
    ASSERT_TRUE(before->contains(kBob.uid)) << "the blocked set counted nothing";
    EXPECT_EQ(before->at(kBob.uid).packets, 3U);

    s.allow_uids = {0, 2001};
    auto again = engine().apply(nft::build_ruleset(s));
    ASSERT_TRUE(again) << again.error().message();
    EXPECT_TRUE(again->table_existed);
    EXPECT_TRUE(again->counters_kept) << again->note;
    EXPECT_EQ(allow_uids(), (U32Set{0, 2001}));
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    auto after = engine().read_blocked(table_);
    ASSERT_TRUE(after) << after.error().message();
    ASSERT_TRUE(after->contains(kBob.uid)) << "the counters were lost on re-apply";
    EXPECT_EQ(after->at(kBob.uid).packets, 4U);
}

// The ruleset for kernels without set expressions (Linux 5.10, RulesetSpec::
// set_expressions): this kernel takes it as it is listed, and the rules' counter gives
// each uid's element its count, as the set's own counter does elsewhere.
TEST_F(EngineTest, WithoutSetExpressionsTheRulesCountPerUid) {
    ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
    auto mode = engine().probe_queue_mode(table_ + "_probe");
    ASSERT_TRUE(mode) << mode.error().message();
    RulesetSpec s = spec({0}, *mode);
    s.allow_local = false;  // so that SYNs to 127.0.0.1 are judged and counted
    s.set_expressions = false;
    const nft::Ruleset rs = nft::build_ruleset(s);
    ASSERT_TRUE(engine().apply(rs));
    auto listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing) << listing.error().message();
    EXPECT_EQ(*listing, nft::render_nft(rs));
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    }
    auto counts = engine().read_blocked(table_);
    ASSERT_TRUE(counts) << counts.error().message();
    ASSERT_TRUE(counts->contains(kBob.uid)) << "the blocked set counted nothing";
    EXPECT_EQ(counts->at(kBob.uid).packets, 3U);
}

TEST_F(EngineTest, ProbeSetExpressionsFindsThemAndLeavesNothingBehind) {
    auto exprs = engine().probe_set_expressions(table_ + "_probe");
    ASSERT_TRUE(exprs) << exprs.error().message();
    EXPECT_TRUE(*exprs) << "this kernel (Linux 5.11 or later) has set expressions";
    EXPECT_EQ(ruleset_text(), "") << "the probe left something behind";
}

// An owned, persistent table (what the daemon applies on kernels that have both
// flags): nobody else can change, flush or delete it; it survives its owner; the next
// owner adopts it with its counters in one transaction.
TEST_F(EngineTest, AnOwnedTableResistsOthersSurvivesItsOwnerAndIsAdopted) {
    auto owned = engine().probe_ownership(table_ + "_probe");
    ASSERT_TRUE(owned) << owned.error().message();
    if (!*owned)
        GTEST_SKIP() << "this kernel has no persistent owned tables (Linux < 6.9)";
    ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
    RulesetSpec s = spec({0});
    s.allow_local = false;  // so that SYNs to 127.0.0.1 are judged and counted
    s.owned = true;
    auto first = engine().apply(nft::build_ruleset(s));
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    auto header = engine().table_header(table_);
    ASSERT_TRUE(header && header->has_value());
    EXPECT_EQ((*header)->flags & nft::kTableFlagsOwned, nft::kTableFlagsOwned);
    EXPECT_EQ((*header)->owner, engine().portid());

    // Others: reads work (the worker reads counters); changes are refused.
    auto other_ns_engine = NsEngine::open(*ns_);
    ASSERT_TRUE(other_ns_engine) << other_ns_engine.error().message();
    nft::Engine& other = (*other_ns_engine)->engine();
    auto counts = other.read_blocked(table_);
    ASSERT_TRUE(counts) << counts.error().message();
    EXPECT_EQ(counts->at(kBob.uid).packets, 1U);
    auto refused = other.apply(nft::build_ruleset(spec({0, 2001})));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, EPERM);
    EXPECT_NE(refused.error().message().find(std::to_string(engine().portid())), std::string::npos)
        << refused.error().message();
    auto removed = other.remove(table_);
    ASSERT_FALSE(removed);
    EXPECT_EQ(removed.error().code, EPERM);
    EXPECT_EQ(run(*ns_, {"nft", "flush", "ruleset"}).exit_code, 0);
    EXPECT_NE(run(*ns_, {"nft", "delete", "table", "inet", table_}).exit_code, 0);
    EXPECT_NE(run(*ns_, {"nft", "flush", "chain", "inet", table_, nft::kChainJudge}).exit_code, 0);
    EXPECT_NE(run(*ns_, {"nft", "flush", "set", "inet", table_, nft::kSetAllowUid}).exit_code, 0);
    EXPECT_NE(run(*ns_, {"nft", "add", "element", "inet", table_, nft::kSetAllowUid, "{ 2001 }"})
                  .exit_code,
              0);
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);

    // The owner goes away: the table stays in force, orphaned.
    engine_.reset();
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    header = other.table_header(table_);
    ASSERT_TRUE(header && header->has_value()) << "the table died with its owner";
    EXPECT_FALSE((*header)->owner.has_value());

    // A new owner adopts it in place: counters kept, the block never lifted.
    auto adopted = other.apply(nft::build_ruleset(s));
    ASSERT_TRUE(adopted) << adopted.error().message();
    EXPECT_TRUE(adopted->counters_kept) << adopted->note;
    header = other.table_header(table_);
    ASSERT_TRUE(header && header->has_value());
    EXPECT_EQ((*header)->owner, other.portid());
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    counts = other.read_blocked(table_);
    ASSERT_TRUE(counts) << counts.error().message();
    EXPECT_EQ(counts->at(kBob.uid).packets, 4U);  // every attempt, across all three owners

    // Giving ownership up (TABLE_OWNER = no) replaces the table whole.
    s.owned = false;
    auto given_up = other.apply(nft::build_ruleset(s));
    ASSERT_TRUE(given_up) << given_up.error().message();
    EXPECT_FALSE(given_up->counters_kept);
    header = other.table_header(table_);
    ASSERT_TRUE(header && header->has_value());
    EXPECT_EQ((*header)->flags & nft::kTableFlagsOwned, 0U);
    EXPECT_EQ(run(*ns_, {"nft", "delete", "table", "inet", table_}).exit_code, 0);
}

// A SYN shown to the worker that leaves the output hook without meeting the judge (as
// one resumed from the queue after a hook before it was removed does:
// docs/internals.md#the-backstop) is dropped in postrouting. With no worker bound, the
// queue's bypass lets the SYN on at once; emptying enforce by hand stands in for the
// skip.
TEST_F(EngineTest, TheBackstopDropsAQueuedSynThatMissedTheJudge) {
    ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
    auto listener = SmtpListener::start(*ns_, {25}, "local.test");
    ASSERT_TRUE(listener) << listener.error().message();
    auto mode = engine().probe_queue_mode(table_ + "_probe");
    ASSERT_TRUE(mode) << mode.error().message();
    RulesetSpec s = spec({0}, *mode);
    s.allow_local = false;  // the listener is on lo, standing in for a remote server
    ASSERT_TRUE(engine().apply(nft::build_ruleset(s)));
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);

    ASSERT_EQ(run(*ns_, {"nft", "flush", "chain", "inet", table_, nft::kChainEnforce}).exit_code,
              0);
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25, 1500ms).outcome, Outcome::TimedOut);
    EXPECT_EQ(connect_as(*ns_, kBob, "::1", 25, 1500ms).outcome, Outcome::TimedOut);
    EXPECT_EQ(listener->accepted(), 0U) << "a SYN that missed the judge got through";
    EXPECT_EQ(connect_as(*ns_, kRoot, "127.0.0.1", 25).outcome, Outcome::Connected);
    EXPECT_EQ(connect_as(*ns_, kRoot, "::1", 25).outcome, Outcome::Connected);

    // The control: without the backstop, the same SYN connects.
    ASSERT_EQ(run(*ns_, {"nft", "flush", "chain", "inet", table_, nft::kChainBackstop}).exit_code,
              0);
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Connected);
}

// A SYN sent before the table existed (it met no `enforce` and no `sample`) passes the
// backstop as it always passed: the backstop is only for SYNs the worker was shown.
TEST_F(EngineTest, TheBackstopLeavesSynsItsQueueNeverSaw) {
    ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
    auto listener = SmtpListener::start(*ns_, {25}, "local.test");
    ASSERT_TRUE(listener) << listener.error().message();
    RulesetSpec s = spec({0});  // no queue
    s.allow_local = false;
    ASSERT_TRUE(engine().apply(nft::build_ruleset(s)));
    ASSERT_EQ(run(*ns_, {"nft", "flush", "chain", "inet", table_, nft::kChainEnforce}).exit_code,
              0);
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Connected);
}

TEST_F(EngineTest, ChangeElementsAddingAnExistingElementIsFine) {
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0, 2001}))));
    auto r = engine().change_elements(table_, nft::kSetAllowUid, {2001, 2002}, {});
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(allow_uids(), (U32Set{0, 2001, 2002}));
}

TEST_F(EngineTest, ChangeElementsRemovingAMissingElementIsEnoentAndChangesNothing) {
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0, 2001}))));

    auto r = engine().change_elements(table_, nft::kSetAllowUid, {2003}, {4242});
    ASSERT_FALSE(r) << "removing a missing element succeeded";
    EXPECT_EQ(r.error().code, ENOENT) << r.error().message();
    EXPECT_EQ(allow_uids(), (U32Set{0, 2001})) << "the addition in the same call went through";

    // A removal of one present and one missing element: all or nothing.
    r = engine().change_elements(table_, nft::kSetAllowUid, {}, {2001, 4242});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT) << r.error().message();
    EXPECT_EQ(allow_uids(), (U32Set{0, 2001})) << "part of a refused transaction was applied";
}

TEST_F(EngineTest, ChangeElementsOnAMissingTableIsEnoentNamingSetAndTable) {
    const std::string missing = table_ + "_missing";
    auto r = engine().change_elements(missing, nft::kSetAllowUid, {2001}, {});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOENT) << r.error().message();
    const std::string message = r.error().message();
    EXPECT_NE(message.find(missing), std::string::npos) << message;
    EXPECT_NE(message.find(nft::kSetAllowUid), std::string::npos) << message;
}

TEST_F(EngineTest, RemoveTwiceIsFine) {
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0}))));
    auto r = engine().remove(table_);
    ASSERT_TRUE(r) << r.error().message();
    auto exists = engine().table_exists(table_);
    ASSERT_TRUE(exists) << exists.error().message();
    EXPECT_FALSE(*exists);
    r = engine().remove(table_);
    EXPECT_TRUE(r) << "second remove: " << r.error().message();
    r = engine().remove(table_ + "_never_created");
    EXPECT_TRUE(r) << "remove of a table that never existed: " << r.error().message();
    EXPECT_EQ(ruleset_text(), "") << "remove left something behind";
}

TEST_F(EngineTest, TableExistsTellsTheTruth) {
    auto before = engine().table_exists(table_);
    ASSERT_TRUE(before) << before.error().message();
    EXPECT_FALSE(*before);
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0}))));
    auto after = engine().table_exists(table_);
    ASSERT_TRUE(after) << after.error().message();
    EXPECT_TRUE(*after);
    auto other = engine().table_exists(table_ + "x");
    ASSERT_TRUE(other) << other.error().message();
    EXPECT_FALSE(*other);
    // An ip-family table of the same name is not ours.
    ASSERT_EQ(run(*ns_, {"nft", "add", "table", "ip", table_ + "_ip"}).exit_code, 0);
    auto ip_family = engine().table_exists(table_ + "_ip");
    ASSERT_TRUE(ip_family) << ip_family.error().message();
    EXPECT_FALSE(*ip_family);
}

TEST_F(EngineTest, ProbeQueueModeFindsAQueueVerdictAndLeavesNothingBehind) {
    const std::string probe = table_ + "_probe";
    auto mode = engine().probe_queue_mode(probe);
    ASSERT_TRUE(mode) << mode.error().message();
    EXPECT_TRUE(*mode == QueueMode::Xt || *mode == QueueMode::Native)
        << "probe found no queue verdict: " << nft::to_string(*mode);
    auto exists = engine().table_exists(probe);
    ASSERT_TRUE(exists) << exists.error().message();
    EXPECT_FALSE(*exists);
    EXPECT_EQ(ruleset_text(), "") << "the probe left something behind";

    // And the mode it found is one the kernel takes in our real ruleset.
    auto applied = engine().apply(nft::build_ruleset(spec({0}, *mode)));
    EXPECT_TRUE(applied) << nft::to_string(*mode) << ": " << applied.error().message();
}

TEST_F(EngineTest, ARuleTheKernelRefusesIsNamedAndTheOldTableStays) {
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0, 2001}))));

    nft::Ruleset bad = nft::build_ruleset(spec({0, 2002}));
    // A lookup in a set that does not exist: the kernel refuses the rule (ENOENT).
    nft::RulePtr rule = nft::make_rule();
    nftnl_rule_set_u32(rule.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
    nftnl_rule_set_str(rule.get(), NFTNL_RULE_TABLE, table_.c_str());
    nftnl_rule_set_str(rule.get(), NFTNL_RULE_CHAIN, nft::kChainJudge);
    nft::ExprPtr meta = nft::make_expr("meta");
    nftnl_expr_set_u32(meta.get(), NFTNL_EXPR_META_KEY, NFT_META_SKUID);
    nftnl_expr_set_u32(meta.get(), NFTNL_EXPR_META_DREG, NFT_REG_1);
    nftnl_rule_add_expr(rule.get(), meta.release());  // the rule takes ownership
    nft::ExprPtr lookup = nft::make_expr("lookup");
    nftnl_expr_set_u32(lookup.get(), NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
    nftnl_expr_set_str(lookup.get(), NFTNL_EXPR_LOOKUP_SET, "no_such_set");
    nftnl_rule_add_expr(rule.get(), lookup.release());  // the rule takes ownership
    const std::string text = "meta skuid @no_such_set";
    bad.rules.push_back(
        nft::BuiltRule{nft::kChainJudge, text, {"meta skuid", "@no_such_set"}, std::move(rule)});

    auto r = engine().apply(bad);
    ASSERT_FALSE(r) << "the kernel took a lookup in a missing set";
    const std::string message = r.error().message();
    EXPECT_NE(message.find(text), std::string::npos) << message;
    EXPECT_NE(message.find(std::string("rule ") + nft::kChainJudge + "#"), std::string::npos)
        << message;
    EXPECT_EQ(allow_uids(), (U32Set{0, 2001})) << "the refused ruleset was partly applied";
}

TEST_F(EngineTest, KernelListingEqualsTheRenderedText) {
    const std::string probe = table_ + "_probe";
    auto mode = engine().probe_queue_mode(probe);
    ASSERT_TRUE(mode) << mode.error().message();
    for (const QueueMode queue : {QueueMode::None, *mode}) {
        SCOPED_TRACE(nft::to_string(queue));
        ASSERT_TRUE(engine().remove(table_));  // a fresh table each time
        // A realistic allowlist: root, mail, Debian-exim, a few users and groups.
        RulesetSpec s = spec({0, 8, 101, 2001, 2003, 2004, 4242, 100000}, queue);
        s.allow_gids = {8, 3000};
        s.ports = {25, 465, 587, 2525};
        const nft::Ruleset rs = nft::build_ruleset(s);
        auto applied = engine().apply(rs);
        ASSERT_TRUE(applied) << applied.error().message();
        auto listing = nft_list_table(*ns_, table_);
        ASSERT_TRUE(listing) << listing.error().message();
        EXPECT_EQ(*listing, nft::render_nft(rs));
    }
}

TEST_F(EngineTest, KernelListingEqualsTheRenderedTextAfterAReapply) {
    auto mode = engine().probe_queue_mode(table_ + "_probe");
    ASSERT_TRUE(mode) << mode.error().message();
    // Few elements per set, so that only the re-apply can make a difference.
    ASSERT_TRUE(engine().apply(nft::build_ruleset(spec({0, 8}, *mode))));
    const nft::Ruleset rs = nft::build_ruleset(spec({0, 8, 2001}, *mode));
    auto applied = engine().apply(rs);
    ASSERT_TRUE(applied) << applied.error().message();
    auto listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing) << listing.error().message();
    EXPECT_EQ(*listing, nft::render_nft(rs));
}

}  // namespace
}  // namespace smtpfence::itest
