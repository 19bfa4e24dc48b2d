// Every attempt explained: the record names the uid, its account, the process (pid,
// exe, cwd, command line) and the destination, exactly as the test ran them; a process
// that is gone before the worker looks is still counted once and never given a wrong
// pid; the shared web server uid is billed by working directory.
#include <sys/wait.h>

#include <set>
#include <thread>

#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

std::string join(const std::vector<std::string>& argv) {
    std::string s;
    for (const std::string& a : argv)
        s += (s.empty() ? "" : " ") + a;
    return s;
}

struct ExpectedAttempt {
    const Credentials* who = nullptr;
    std::string account;
    pid_t pid = 0;
    std::string exe, cwd, cmdline;
    std::string family, src, dst;
    std::uint16_t sport = 0, dport = 0;
};

void expect_attempt(const Json& a, const ExpectedAttempt& e) {
    SCOPED_TRACE("record: " + a.dump());
    EXPECT_EQ(a.value("type", ""), "attempt");
    EXPECT_EQ(a.value("uid", 0U), e.who->uid);
    EXPECT_EQ(a.value("gid", 0U), e.who->gid);
    EXPECT_EQ(a.value("user", ""), e.who->name);
    EXPECT_EQ(a.value("account", ""), e.account);
    EXPECT_TRUE(a.value("identified", false)) << "the process was running: it must be found";
    EXPECT_EQ(a.value("pid", pid_t{0}), e.pid);
    EXPECT_EQ(a.value("exe", ""), e.exe);
    EXPECT_EQ(a.value("cwd", ""), e.cwd);
    EXPECT_EQ(a.value("cmdline", ""), e.cmdline);
    EXPECT_EQ(a.value("family", ""), e.family);
    EXPECT_EQ(a.value("src", ""), e.src);
    EXPECT_EQ(a.value("sport", 0U), e.sport);
    EXPECT_EQ(a.value("dst", ""), e.dst);
    EXPECT_EQ(a.value("dport", 0U), e.dport);
}

class WorkerAttemptTest : public WorkerTest {
  protected:
    // Runs one connect of `who` from cwd and checks the single record it must produce.
    void one_attempt_explained(const Credentials& who, const std::string& cwd,
                               const std::string& account, const std::string& family,
                               const std::string& src, const std::string& dst, std::uint16_t dport,
                               std::uint16_t sport);
};

void WorkerAttemptTest::one_attempt_explained(const Credentials& who, const std::string& cwd,
                                              const std::string& account, const std::string& family,
                                              const std::string& src, const std::string& dst,
                                              std::uint16_t dport, std::uint16_t sport) {
    auto c = start_connector(who, cwd,
                             {"--bind-port", std::to_string(sport), dst, std::to_string(dport)});
    ASSERT_TRUE(c) << c.error().message();
    auto exit = c->wait(15s);
    ASSERT_TRUE(exit) << exit.error().message();
    ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
    EXPECT_EQ(exit->report->refused, 1U) << exit->out;
    EXPECT_LT(exit->report->slowest_us, 500000) << "the refusal was not immediate: " << exit->out;

    expect_exact_totals({{who.uid, 1}});
    const AttemptLogView log = read_attempt_log(state_dir());
    ASSERT_EQ(log.attempts.size(), 1U) << "exactly one explained attempt expected\n"
                                       << diagnostics();
    EXPECT_TRUE(log.counted.empty()) << "nothing to count beyond the explained attempt\n"
                                     << diagnostics();
    ExpectedAttempt e;
    e.who = &who;
    e.account = account;
    e.pid = c->pid();
    e.exe = connector();
    e.cwd = cwd;
    e.cmdline = join(c->argv());
    e.family = family;
    e.src = src;
    e.sport = sport;
    e.dst = dst;
    e.dport = dport;
    expect_attempt(log.attempts.front(), e);
}

TEST_F(WorkerAttemptTest, RealUidOverIpv4IsExplainedWithItsProcess) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    one_attempt_explained(kAlice, docroot("alice", "x.test"), "alice", "ipv4", Topology::kServer4,
                          Topology::kRemote4, 25, 40025);
}

TEST_F(WorkerAttemptTest, RealUidOverIpv6IsExplainedWithItsProcess) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    one_attempt_explained(kAlice, docroot("alice", "x.test"), "alice", "ipv6", Topology::kServer6,
                          Topology::kRemote6, 587, 40587);
}

// The SYN may reach the worker after the process (and its socket) are gone: the
// record is then unidentified, but the attempt is still counted, exactly once, and a
// record never names a pid that is not the process's.
TEST_F(WorkerAttemptTest, ProcessThatExitsAtOnceIsCountedOnce) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    const std::string cwd = docroot("alice", "x.test");
    auto c = start_connector(kAlice, cwd, {"--exit-at-once", Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    const pid_t pid = c->pid();
    const std::string cmdline = join(c->argv());
    auto exit = c->wait(10s);
    ASSERT_TRUE(exit) << exit.error().message();
    ASSERT_TRUE(WIFEXITED(exit->status) && WEXITSTATUS(exit->status) == 0)
        << itest::describe_status(exit->status) << ": " << exit->out;

    // The kernel counts the SYN only if the socket still had its owner when the
    // worker let it go on; the log must hold it once either way.
    std::map<std::uint32_t, std::uint64_t> totals;
    const bool one = itest::wait_until(
        [&] {
            totals = read_attempt_log(state_dir()).totals();
            return totals[kAlice.uid] >= 1;
        },
        5s, 100ms);
    std::this_thread::sleep_for(1600ms);  // past another reconcile
    totals = read_attempt_log(state_dir()).totals();
    EXPECT_TRUE(one) << diagnostics();
    EXPECT_EQ(totals[kAlice.uid], 1U) << "the attempt must be counted exactly once\n"
                                      << diagnostics();
    expect_attempts_name_only({{pid, kAlice.uid}}, 1);
    const AttemptLogView log = read_attempt_log(state_dir());
    // A process caught while exiting may have lost its memory (exe, cmdline) and then
    // its working directory before the worker reads them: those fields are then empty
    // (process.h: "" when unreadable), never someone else's.
    bool partial = false;
    for (const Json& a : log.attempts) {
        if (a.value("identified", false)) {
            const auto empty_or = [&](const char* field, const std::string& want) {
                const std::string got = a.value(field, "");
                partial = partial || got.empty();
                EXPECT_TRUE(got.empty() || got == want) << field << ": " << a.dump();
            };
            empty_or("exe", connector());
            empty_or("cwd", cwd);
            empty_or("cmdline", cmdline);
        }
        EXPECT_EQ(a.value("account", ""), "alice") << a.dump();
        EXPECT_EQ(a.value("dst", ""), Topology::kRemote4) << a.dump();
    }
    RecordProperty("partially_identified", partial ? "true" : "false");
    auto kernel = kernel_blocked(topo_->server, table_);
    ASSERT_TRUE(kernel) << kernel.error().message();
    RecordProperty("kernel_counted", std::to_string((*kernel)[kAlice.uid]));
    RecordProperty("identified",
                   log.attempts.size() == 1 && log.attempts.front().value("identified", false)
                       ? "true"
                       : "false");
}

// The same, many times over, right after a flood of the same uid: every short-lived
// process counted once, whether its SYN was shown to the worker (the per-uid sampling
// rate refills 20 a second) or only counted by the kernel (the flood used the burst up).
TEST_F(WorkerAttemptTest, ManyProcessesThatExitAtOnceAreEachCountedOnce) {
    constexpr std::uint64_t kFlood = 100;
    constexpr int kProcesses = 150;
    constexpr std::uint64_t kExpected = kFlood + kProcesses;
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    std::map<pid_t, std::uint32_t> pids;
    {
        auto c = start_connector(kAlice, docroot("alice", "x.test"),
                                 {"--count", std::to_string(kFlood), Topology::kRemote4, "25"});
        ASSERT_TRUE(c) << c.error().message();
        pids[c->pid()] = kAlice.uid;
        auto exit = c->wait(30s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
        ASSERT_EQ(exit->report->refused, kFlood) << exit->out;
    }
    std::vector<Connector> running;
    for (int i = 0; i < kProcesses; ++i) {
        auto c = start_connector(kAlice, docroot("alice", "x.test"),
                                 {"--exit-at-once", Topology::kRemote4, "25"});
        ASSERT_TRUE(c) << c.error().message();
        pids[c->pid()] = kAlice.uid;
        running.push_back(std::move(*c));
    }
    for (Connector& c : running) {
        auto exit = c.wait(10s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(WIFEXITED(exit->status) && WEXITSTATUS(exit->status) == 0)
            << itest::describe_status(exit->status) << ": " << exit->out;
    }
    std::map<std::uint32_t, std::uint64_t> totals;
    (void)itest::wait_until(
        [&] {
            totals = read_attempt_log(state_dir()).totals();
            return totals[kAlice.uid] >= kExpected;
        },
        5s, 100ms);
    std::this_thread::sleep_for(1600ms);
    totals = read_attempt_log(state_dir()).totals();
    auto kernel = kernel_blocked(topo_->server, table_);
    ASSERT_TRUE(kernel) << kernel.error().message();
    const AttemptLogView log = read_attempt_log(state_dir());
    std::size_t identified = 0;
    for (const Json& a : log.attempts)
        identified += a.value("identified", false) ? 1 : 0;
    EXPECT_EQ(totals[kAlice.uid], kExpected)
        << kFlood << " refused connects of one process, then " << kProcesses
        << " processes made one attempt each; the kernel counted " << (*kernel)[kAlice.uid]
        << ", the worker explained " << log.attempts.size() << " (" << identified
        << " identified)\n"
        << diagnostics();
    expect_attempts_name_only(pids, kExplainPerProcess);
}

// www-data is a shared web server uid: billed to the account whose home holds the
// process's working directory, or to "unknown".
TEST_F(WorkerAttemptTest, WebServerUidIsBilledByWorkingDirectory) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    struct Case {
        std::string cwd;
        std::string account;
        pid_t pid = 0;
    };
    std::vector<Case> cases{{docroot("bob", "b.test"), "bob"}, {"/tmp", "unknown"}};
    for (Case& k : cases) {
        auto c = start_connector(kWebServer, k.cwd, {Topology::kRemote4, "25"});
        ASSERT_TRUE(c) << c.error().message();
        k.pid = c->pid();
        auto exit = c->wait(10s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
        EXPECT_EQ(exit->report->refused, 1U) << exit->out;
    }
    expect_exact_totals({{kWebServer.uid, 2}});
    const AttemptLogView log = read_attempt_log(state_dir());
    ASSERT_EQ(log.attempts.size(), 2U) << diagnostics();
    for (const Case& k : cases) {
        SCOPED_TRACE("cwd " + k.cwd);
        const Json* found = nullptr;
        for (const Json& a : log.attempts) {
            if (a.value("pid", pid_t{0}) == k.pid)
                found = &a;
        }
        ASSERT_NE(found, nullptr) << "no record names pid " << k.pid << "\n" << diagnostics();
        EXPECT_TRUE(found->value("identified", false)) << found->dump();
        EXPECT_EQ(found->value("uid", 0U), kWebServer.uid) << found->dump();
        EXPECT_EQ(found->value("user", ""), "www-data") << found->dump();
        EXPECT_EQ(found->value("cwd", ""), k.cwd) << found->dump();
        EXPECT_EQ(found->value("account", ""), k.account) << found->dump();
    }
}

}  // namespace
}  // namespace smtpfence::wtest
