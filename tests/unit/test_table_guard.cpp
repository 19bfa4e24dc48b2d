// The table's self-heal against a fake kernel: a table deleted or flushed by someone
// else (as the events report it, or as the check each second finds it) is put back;
// a kernel that refuses is counted and shown, and tried again.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "nft/ruleset.h"
#include "tests/unit/daemon_fixture.h"

namespace smtpfence {
namespace {

using nlohmann::json;
using testing::DaemonPartsTest;
using testing::FakeTable;

class TableGuardTest : public DaemonPartsTest {
  protected:
    // The rules of every chain, by chain name.
    [[nodiscard]] std::map<std::string, std::size_t> rules() const {
        std::map<std::string, std::size_t> out;
        if (const FakeTable* t = table()) {
            for (const auto& [name, chain] : t->chains)
                out[name] = chain.rules;
        }
        return out;
    }
    static std::vector<std::uint8_t> key(std::uint32_t uid) {
        const auto* p = reinterpret_cast<const std::uint8_t*>(&uid);
        return {p, p + sizeof uid};
    }
    void refuse_everything() {
        kernel.verdict = [](std::size_t, const nlmsghdr*, std::uint32_t*) { return EPERM; };
    }
};

TEST_F(TableGuardTest, ADeletedTableIsRestoredAtOnce) {
    ASSERT_NO_FATAL_FAILURE(load());
    const auto as_applied = rules();
    ASSERT_FALSE(as_applied.empty());
    kernel.tables.erase("smtpfence");

    guard.on_change({.what = {"delete table"}, .who = "pid 77 (nft)", .events_lost = false});

    ASSERT_NE(table(), nullptr);
    EXPECT_EQ(rules(), as_applied);
    EXPECT_EQ(table()->sets.at("allow_uid").u32_elements(), (std::vector<std::uint32_t>{0, 8}));
    EXPECT_EQ(state.heal.count, 1U);
    EXPECT_EQ(state.heal.failures, 0U);
    EXPECT_EQ(state.heal.last_who, "pid 77 (nft)");
    EXPECT_EQ(state.heal.last_what, "delete table");
    EXPECT_TRUE(state.heal.last_ok);
    EXPECT_NE(state.heal.last_at, 0);
    EXPECT_EQ(state.status_line(), "enforcing: " + describe(*state.current) +
                                       "; restored after foreign changes 1 time(s)");
}

TEST_F(TableGuardTest, AFlushedTableGetsItsRulesBackAndKeepsItsCounters) {
    ASSERT_NO_FATAL_FAILURE(load());
    const auto as_applied = rules();
    kernel.tables["smtpfence"].sets["blocked"].elements[key(1001)] = 3;
    kernel.tables["smtpfence"].flush();

    guard.on_change({.what = {"delete rule in chain judge", "delete rule in chain enforce"},
                     .who = "pid 9 (iptables-nft)",
                     .events_lost = false});

    EXPECT_EQ(rules(), as_applied);
    EXPECT_EQ(state.heal.last_what, "delete rule in chain judge, delete rule in chain enforce");
    // Restored in place: the kernel's attempt counters survive.
    EXPECT_EQ(table()->sets.at("blocked").elements.at(key(1001)), 3U);

    // What status shows of it.
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    const json& heal = s->at("self_heal");
    EXPECT_EQ(heal.at("restored"), 1);
    EXPECT_EQ(heal.at("failed"), 0);
    EXPECT_EQ(heal.at("last").at("by"), "pid 9 (iptables-nft)");
    EXPECT_EQ(heal.at("last").at("ok"), true);
    EXPECT_EQ(heal.at("last").at("error"), "");
}

TEST_F(TableGuardTest, LostEventsFromAnUnknownSenderAreRepairedToo) {
    ASSERT_NO_FATAL_FAILURE(load());
    guard.on_change({.what = {}, .who = "", .events_lost = true});
    EXPECT_EQ(state.heal.count, 1U);
    EXPECT_EQ(state.heal.last_who, "unknown");
    EXPECT_EQ(state.heal.last_what, "events lost (socket overflow)");
}

TEST_F(TableGuardTest, TheCheckFindsAMissingTable) {
    ASSERT_NO_FATAL_FAILURE(load());
    const std::size_t batches = kernel.batches_committed;
    guard.check();  // present and as we left it: nothing to do
    EXPECT_EQ(kernel.batches_committed, batches);
    EXPECT_EQ(state.heal.count, 0U);

    kernel.tables.erase("smtpfence");
    guard.check();
    EXPECT_NE(table(), nullptr);
    EXPECT_EQ(state.heal.count, 1U);
    EXPECT_EQ(state.heal.last_who, "unknown (found by the check each second)");
    EXPECT_EQ(state.heal.last_what, "table missing");
}

TEST_F(TableGuardTest, TheCheckTakesBackAnOwnedTableLeftOrphaned) {
    features.ownership = true;
    ASSERT_NO_FATAL_FAILURE(load());
    ASSERT_TRUE(state.current->spec.owned);
    ASSERT_EQ(table()->owner, kernel.portid());
    // As after the owning socket closed: persistent, no owner.
    kernel.tables["smtpfence"].owner.reset();
    kernel.tables["smtpfence"].flags = nft::kTableFlagPersist;

    guard.check();
    EXPECT_EQ(state.heal.last_what, "table not owned by us");
    EXPECT_EQ(table()->owner, kernel.portid());
    EXPECT_EQ(table()->flags, nft::kTableFlagsOwned);
}

TEST_F(TableGuardTest, NothingIsRestoredWhileNothingIsEnforced) {
    ASSERT_NO_FATAL_FAILURE(load("SMTP_BLOCK = \"0\"\n"));
    guard.on_change({.what = {"add table"}, .who = "pid 1 (nft)", .events_lost = false});
    guard.check();
    EXPECT_EQ(table(), nullptr);
    EXPECT_EQ(state.heal.count + state.heal.failures, 0U);

    ASSERT_NO_FATAL_FAILURE(load());
    state.removed = true;  // smtpfencectl remove
    kernel.tables.clear();
    guard.check();
    EXPECT_EQ(table(), nullptr);
}

TEST_F(TableGuardTest, AKernelThatRefusesIsCountedShownAndTriedAgain) {
    ASSERT_NO_FATAL_FAILURE(load());
    kernel.tables.erase("smtpfence");
    refuse_everything();

    guard.on_change({.what = {"delete table"}, .who = "pid 77 (nft)", .events_lost = false});
    EXPECT_EQ(table(), nullptr);
    EXPECT_EQ(state.heal.count, 0U);
    EXPECT_EQ(state.heal.failures, 1U);
    EXPECT_FALSE(state.heal.last_ok);
    EXPECT_NE(state.heal.last_error.find("refused by fake kernel"), std::string::npos)
        << state.heal.last_error;
    EXPECT_NE(state.heal.last_error.find("Operation not permitted"), std::string::npos)
        << state.heal.last_error;
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->at("self_heal").at("failed"), 1);
    EXPECT_EQ(s->at("self_heal").at("last").at("ok"), false);
    EXPECT_EQ(s->at("self_heal").at("last").at("error"), state.heal.last_error);
    EXPECT_EQ(state.status_line(), "enforcing: " + describe(*state.current));

    guard.check();  // the next second: refused again
    EXPECT_EQ(state.heal.failures, 2U);
    kernel.verdict = [](std::size_t, const nlmsghdr*, std::uint32_t*) { return 0; };
    guard.check();  // and restored once the kernel accepts
    EXPECT_NE(table(), nullptr);
    EXPECT_EQ(state.heal.count, 1U);
    EXPECT_TRUE(state.heal.last_ok);
    EXPECT_EQ(state.heal.last_error, "");
}

}  // namespace
}  // namespace smtpfence
