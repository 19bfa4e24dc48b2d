// The block stays in force whatever other tools do to nftables: with an owned table
// (the default on kernels that have persistent owned tables) their changes are
// refused by the kernel; without ownership (TABLE_OWNER = "0") the daemon sees their
// changes in nftables' events and puts its table back. Each case runs while a blocked
// uid floods a remote port 25 and reports how many of its connections got through.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using json = nlohmann::json;
constexpr std::uint64_t kMinAttempts = 2000;
const std::string kConfig = "SMTP_ALLOWUSER = \"alice\"\n";

class SelfHealTest : public FenceTest {
  protected:
    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        auto owned = server_engine().probe_ownership(table_ + "-probe");
        ASSERT_TRUE(owned) << owned.error().message();
        kernel_owns_ = *owned;
    }

    json status() {
        const RunResult r = run(
            topo_->server,
            {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock", "status", "--json"});
        json j = json::parse(r.out, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << r.describe();
        return j;
    }

    RunResult nft(std::vector<std::string> args) {
        args.insert(args.begin(), "nft");
        return run(topo_->server, args);
    }

    // The handle of the last rule of chain judge (the reject), from `nft -a`.
    std::string reject_rule_handle() {
        const RunResult r = nft({"-a", "list", "chain", "inet", table_, nft::kChainJudge});
        const std::string key = "reject with tcp reset # handle ";
        const auto at = r.out.rfind(key);
        if (at == std::string::npos)
            return {};
        return r.out.substr(at + key.size(), r.out.find('\n', at) - at - key.size());
    }

    // Whether the kernel holds the whole desired table again: alice (and not bob)
    // allowed, the judge chain ending in its reject.
    bool table_intact() {
        auto uids = server_engine().read_u32_set(table_, nft::kSetAllowUid);
        return uids && uids->contains(kAlice.uid) && !uids->contains(kBob.uid) &&
               !reject_rule_handle().empty();
    }

    struct Case {
        std::string name;
        std::vector<std::string> nft_args;  // {} = computed by the test (the rule's handle)
    };

    std::vector<Case> foreign_changes() {
        return {
            {"nft flush ruleset", {"flush", "ruleset"}},
            {"nft delete table", {"delete", "table", "inet", table_}},
            {"nft delete rule (the reject)", {}},
            {"nft flush set allow_uid", {"flush", "set", "inet", table_, nft::kSetAllowUid}},
            {"nft add element allow_uid bob",
             {"add", "element", "inet", table_, nft::kSetAllowUid,
              "{ " + std::to_string(kBob.uid) + " }"}},
        };
    }

    // Runs the case's nft command (filling in the reject rule's handle).
    RunResult make_change(Case& c) {
        if (c.nft_args.empty()) {
            const std::string handle = reject_rule_handle();
            EXPECT_FALSE(handle.empty()) << diagnostics();
            c.nft_args = {"delete", "rule", "inet", table_, nft::kChainJudge, "handle", handle};
        }
        return nft(c.nft_args);
    }

    bool kernel_owns_ = false;
};

void report(const std::string& what, const ConnectFlood::Counts& c, std::int64_t back_us) {
    std::cout << "  " << what << ": " << c.refused << " refused, " << c.connected << " got through";
    if (back_us >= 0)
        std::cout << ", table whole again after " << back_us / 1000 << "." << (back_us % 1000) / 100
                  << " ms";
    std::cout << "\n";
}

TEST_F(SelfHealTest, AnOwnedTableWithstandsFlushDeleteAndEditsUnderAFlood) {
    if (!kernel_owns_)
        GTEST_SKIP() << "this kernel has no persistent owned tables (Linux < 6.9)";
    ASSERT_NO_FATAL_FAILURE(start_daemon(kConfig));
    EXPECT_TRUE(status()["table"]["owned"].get<bool>());
    for (Case c : foreign_changes()) {
        auto flood = ConnectFlood::start(topo_->server, kBob, Topology::kRemote4, 25, kMinAttempts);
        ASSERT_TRUE(flood) << flood.error().message();
        const RunResult r = make_change(c);
        // flush ruleset passes an owned table by (and succeeds); the others are refused.
        if (c.nft_args.front() != "flush" || c.nft_args[1] != "ruleset") {
            EXPECT_NE(r.exit_code, 0) << c.name << " was allowed: " << r.describe();
        }
        auto counts = flood->finish();
        ASSERT_TRUE(counts) << counts.error().message();
        report(c.name, *counts, -1);
        EXPECT_EQ(counts->connected, 0U) << c.name;
        EXPECT_TRUE(table_intact()) << c.name << "\n" << diagnostics();
    }
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    const json s = status();
    EXPECT_EQ(s["self_heal"]["restored"].get<int>(), 0) << s.dump();

    // Our own one-shot removal is another process too: refused, and told the way.
    const RunResult removal =
        run(topo_->server, {smtpfenced_path(), "--remove", "--table", table_});
    EXPECT_EQ(removal.exit_code, 1) << removal.describe();
    EXPECT_NE(removal.err.find("`smtpfencectl remove`"), std::string::npos) << removal.describe();
    EXPECT_TRUE(table_intact()) << diagnostics();
}

TEST_F(SelfHealTest, WithoutOwnershipEachForeignChangeIsSeenAndUndone) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(kConfig + "TABLE_OWNER = \"0\"\n"));
    json s = status();
    ASSERT_FALSE(s["table"]["owned"].get<bool>()) << s.dump();
    ASSERT_TRUE(s["self_heal"]["events"].get<bool>()) << s.dump();
    int restored = 0;
    std::uint64_t through = 0;
    for (Case c : foreign_changes()) {
        auto flood = ConnectFlood::start(topo_->server, kBob, Topology::kRemote4, 25, kMinAttempts);
        ASSERT_TRUE(flood) << flood.error().message();
        const RunResult r = make_change(c);
        ASSERT_EQ(r.exit_code, 0) << c.name << ": " << r.describe();
        const auto t0 = std::chrono::steady_clock::now();
        // Restored: the change is undone and the daemon counted it.
        const bool back = wait_until(
            [&] { return table_intact() && status()["self_heal"]["restored"] == restored + 1; },
            10s, 1ms);
        const auto back_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::steady_clock::now() - t0)
                                 .count();
        auto counts = flood->finish();
        ASSERT_TRUE(counts) << counts.error().message();
        report(c.name, *counts, back_us);
        ASSERT_TRUE(back) << c.name << " was not undone\n" << diagnostics();
        ++restored;
        through += counts->connected;
        s = status();
        const json& last = s["self_heal"]["last"];
        EXPECT_NE(last["by"].get<std::string>().find("(nft)"), std::string::npos) << s.dump();
        EXPECT_TRUE(last["ok"].get<bool>()) << s.dump();
        std::cout << "    daemon: by " << last["by"].get<std::string>() << ": "
                  << last["what"].get<std::string>() << "; re-applied in "
                  << last["restore_us"].get<std::int64_t>() << " us\n";
        expect_refused(kBob, Topology::kRemote4, 25);
    }
    RecordProperty("connections_through_unowned", std::to_string(through));
    const RunResult human = run(
        topo_->server, {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock", "status"});
    EXPECT_NE(human.out.find("restored after foreign changes: 5 time(s) (nftables events "
                             "watched)\n    last: by pid "),
              std::string::npos)
        << human.out;
    EXPECT_NE(daemon_->log().find("changed by pid"), std::string::npos) << daemon_->log();
}

TEST_F(SelfHealTest, SigkillAndRestartUnderAFloodLetNothingThrough) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(kConfig));
    auto flood = ConnectFlood::start(topo_->server, kBob, Topology::kRemote4, 25, kMinAttempts);
    ASSERT_TRUE(flood) << flood.error().message();
    for (int i = 0; i < 3; ++i) {
        daemon_->signal(SIGKILL);
        ASSERT_TRUE(wait_until([&] { return !daemon_->running(); }, 10s));
        // Between two daemons: the table is still in force (orphaned when owned).
        auto header = server_engine().table_header(table_);
        ASSERT_TRUE(header && header->has_value()) << "the table died with the daemon";
        EXPECT_FALSE((*header)->owner.has_value());
        std::this_thread::sleep_for(100ms);
        ASSERT_NO_FATAL_FAILURE(start_daemon(kConfig));
        // (start_daemon returns as soon as the table exists, which it never stopped
        // doing; adoption comes with the new daemon's first apply.)
        if (kernel_owns_) {
            EXPECT_TRUE(wait_until(
                [&] {
                    auto h = server_engine().table_header(table_);
                    return h && h->has_value() && (*h)->owner.has_value();
                },
                10s))
                << "the new daemon did not adopt the table\n"
                << diagnostics();
        }
    }
    auto counts = flood->finish();
    ASSERT_TRUE(counts) << counts.error().message();
    report("3 x SIGKILL + restart", *counts, -1);
    EXPECT_EQ(counts->connected, 0U);
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    EXPECT_TRUE(table_intact()) << diagnostics();
}

}  // namespace
}  // namespace smtpfence::itest
