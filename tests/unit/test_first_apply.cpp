// The daemon's first apply against a fake kernel: refused while a table a previous run
// left is in force, that table stays and the daemon goes on (issue 16), showing the
// error in status and applying again with backoff until the kernel accepts; without
// such a table (or with one a live process owns) the error ends the start as before.
#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

#include "tests/unit/daemon_fixture.h"

namespace smtpfence {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::DaemonPartsTest;

class FirstApplyTest : public DaemonPartsTest {
  protected:
    // What a new daemon starts with: the config rewritten, nothing in force yet.
    [[nodiscard]] Desired restart_with(const std::string& config) {
        state = DaemonState{};
        dir.write("smtpfence.conf", config);
        auto desired = compute_desired(options, features);
        EXPECT_TRUE(desired.has_value()) << desired.error().message();
        return desired.value_or(Desired{});
    }
    // The start as Controller::start does it: the first apply, then the policy adopted.
    [[nodiscard]] Result<void> start(const Desired& desired) {
        auto r = first_apply.apply(desired, t0);
        if (r)
            adopt(state, desired, server);
        return r;
    }
    void refuse(int err) {
        kernel.verdict = [err](std::size_t, const nlmsghdr*, std::uint32_t*) { return err; };
    }
    void accept() { refuse(0); }
    // A previous run's table (uids 0 and 8 allowed), then a start that adds uid 1003,
    // refused by the kernel.
    void start_refused() {
        ASSERT_NO_FATAL_FAILURE(load());
        refuse(EINVAL);
        ASSERT_TRUE(start(restart_with("SMTP_ALLOWUSER = \"1003\"\n")).has_value());
        ASSERT_TRUE(state.retry.has_value());
    }
    [[nodiscard]] std::vector<std::uint32_t> allowed() const {
        return table()->sets.at("allow_uid").u32_elements();
    }

    const ApplyRetry::Clock::time_point t0 = ApplyRetry::Clock::now();
};

TEST_F(FirstApplyTest, ARefusedApplyKeepsThePreviousTableAndShowsTheError) {
    ASSERT_NO_FATAL_FAILURE(start_refused());

    const std::string error = state.retry->error;
    EXPECT_NE(error.find("Invalid argument"), std::string::npos) << error;
    EXPECT_EQ(state.retry->delay, 1s);
    EXPECT_EQ(state.retry->at, t0 + 1s);
    EXPECT_NE(state.retry->since, 0);
    ASSERT_NE(table(), nullptr);
    EXPECT_EQ(allowed(), (std::vector<std::uint32_t>{0, 8}));  // the previous run's
    EXPECT_EQ(state.status_line(), "CONFIGURATION ERROR: " + error +
                                       "; the table a previous run left is in force; "
                                       "enforcing: " +
                                       describe(*state.current));
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->at("config_error"),
              json({{"message", error},
                    {"since", state.retry->since},
                    {"in_force",
                     "the table a previous run left (applied again within 1 s, "
                     "and on reload)"}}));
}

TEST_F(FirstApplyTest, WithAConfigurationErrorTooStatusShowsBoth) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Desired desired = restart_with("");
    state.input_error = InputError{"smtpfence.conf:3: bad value", 1234, true};
    refuse(EINVAL);

    ASSERT_TRUE(start(desired).has_value());

    ASSERT_TRUE(state.retry.has_value());
    const std::string both = "smtpfence.conf:3: bad value; " + state.retry->error;
    EXPECT_EQ(state.error_text(), both);
    EXPECT_EQ(
        state.status_line().rfind(
            "CONFIGURATION ERROR: " + both + "; the table a previous run left is in force; ", 0),
        0U)
        << state.status_line();
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->at("config_error").at("message"), both);
    EXPECT_EQ(s->at("config_error").at("since"), 1234);
}

TEST_F(FirstApplyTest, WithoutAPreviousTableTheErrorEndsTheStart) {
    const Desired desired = restart_with("");
    refuse(EINVAL);

    const auto r = start(desired);

    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_FALSE(state.retry.has_value());
    EXPECT_EQ(table(), nullptr);
}

TEST_F(FirstApplyTest, ATableALiveProcessOwnsEndsTheStart) {
    ASSERT_NO_FATAL_FAILURE(load());
    kernel.tables["smtpfence"].owner = testing::FakeKernel::kPortId + 1;
    const Desired desired = restart_with("");

    const auto r = start(desired);

    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EPERM);
    EXPECT_FALSE(state.retry.has_value());
}

TEST_F(FirstApplyTest, TheRetryWaitsTwiceAsLongAfterEachFailureUpTo60s) {
    ASSERT_NO_FATAL_FAILURE(start_refused());

    // Not due yet: nothing is sent.
    const int sends = kernel.sends;
    first_apply.retry_if_due(t0 + 999ms);
    EXPECT_EQ(kernel.sends, sends);
    EXPECT_EQ(state.retry->delay, 1s);

    auto now = t0;
    for (const auto expected : {2s, 4s, 8s, 16s, 32s, 60s, 60s}) {
        now = state.retry->at;
        first_apply.retry_if_due(now);
        ASSERT_TRUE(state.retry.has_value());
        EXPECT_EQ(state.retry->delay, expected);
        EXPECT_EQ(state.retry->at, now + expected);
    }
    EXPECT_GT(kernel.sends, sends);
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->at("config_error").at("in_force"),
              "the table a previous run left (applied again within 60 s, and on reload)");
    EXPECT_EQ(allowed(), (std::vector<std::uint32_t>{0, 8}));
}

TEST_F(FirstApplyTest, AnAcceptedRetryPutsThePolicyInForceAndClearsTheError) {
    ASSERT_NO_FATAL_FAILURE(start_refused());
    first_apply.retry_if_due(t0 + 1s);  // refused again: next at t0 + 3 s
    ASSERT_TRUE(state.retry.has_value());
    accept();

    first_apply.retry_if_due(t0 + 2s);  // not due
    EXPECT_TRUE(state.retry.has_value());
    first_apply.retry_if_due(t0 + 3s);

    EXPECT_FALSE(state.retry.has_value());
    EXPECT_EQ(allowed(), (std::vector<std::uint32_t>{0, 8, 1003}));
    EXPECT_EQ(state.status_line(), "enforcing: " + describe(*state.current));
    const Answer s = ask(ctl::Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_FALSE(s->contains("config_error"));
}

TEST_F(FirstApplyTest, TheGuardLeavesTheOldTableButPutsAMissingOneBack) {
    ASSERT_NO_FATAL_FAILURE(start_refused());
    accept();
    guard.check();  // the old table is in force: changing it is the retry's job
    EXPECT_EQ(state.heal.count, 0U);
    EXPECT_TRUE(state.retry.has_value());

    // With the old table gone nothing is in force: the guard does not wait for the
    // retry, and a table put back is the retry done.
    kernel.tables.erase("smtpfence");
    guard.check();
    ASSERT_NE(table(), nullptr);
    EXPECT_EQ(allowed(), (std::vector<std::uint32_t>{0, 8, 1003}));
    EXPECT_EQ(state.heal.count, 1U);
    EXPECT_FALSE(state.retry.has_value());

    kernel.tables.erase("smtpfence");
    guard.check();  // no retry pending: the guard is at work as always
    ASSERT_NE(table(), nullptr);
    EXPECT_EQ(state.heal.count, 2U);
}

TEST_F(FirstApplyTest, NoRetryAfterTheTableWasRemovedOnRequest) {
    ASSERT_NO_FATAL_FAILURE(start_refused());
    accept();
    state.removed = true;
    const int sends = kernel.sends;

    first_apply.retry_if_due(t0 + 1s);

    EXPECT_EQ(kernel.sends, sends);
    EXPECT_TRUE(state.retry.has_value());
}

}  // namespace
}  // namespace smtpfence
