// Every attempt counted: after a flood from several uids, the attempt log's per-uid
// totals (attempt records + counted-only counts) equal the number of refused connects
// exactly, and equal the kernel's `blocked` counters; also when the worker is killed,
// the daemon re-applies everything, or the daemon itself restarts in the middle. Without
// a worker the kernel still refuses at once and counts.
#include <signal.h>

#include <iostream>
#include <sstream>
#include <thread>

#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

using WorkerCountTest = WorkerTest;

// Four processes of four uids, both families, all guarded ports.
std::vector<FloodPart> four_uids(std::uint64_t each) {
    return {{kAlice, Topology::kRemote4, 25, each},
            {kBob, Topology::kRemote6, 587, each},
            {kCarol, Topology::kRemote4, 465, each},
            {kDave, Topology::kRemote6, 25, each}};
}

std::map<std::uint32_t, std::uint64_t> expected_totals(const std::vector<FloodPart>& parts) {
    std::map<std::uint32_t, std::uint64_t> m;
    for (const FloodPart& p : parts)
        m[p.who.uid] += p.count;
    return m;
}

TEST_F(WorkerCountTest, FloodFromSeveralUidsIsCountedExactly) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    const auto parts = four_uids(2000);
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 0, &flood));
    std::map<pid_t, std::uint32_t> pids;
    ASSERT_NO_FATAL_FAILURE(finish_flood(flood, parts, &pids));
    expect_exact_totals(expected_totals(parts));

    // The first attempts of each process are explained, the rest counted only: with
    // the worker up all along, exactly kExplainPerProcess per process, all identified.
    expect_attempts_name_only(pids, kExplainPerProcess);
    const AttemptLogView log = read_attempt_log(state_dir());
    for (const auto& [pid, uid] : pids) {
        unsigned identified = 0;
        for (const Json& a : log.attempts_of(uid))
            identified += a.value("identified", false) && a.value("pid", pid_t{0}) == pid ? 1 : 0;
        EXPECT_EQ(identified, kExplainPerProcess) << "uid " << uid << " pid " << pid;
        EXPECT_EQ(log.attempts_of(uid).size(), kExplainPerProcess)
            << "uid " << uid << ": unidentified records while its process was alive";
    }
    EXPECT_FALSE(log.counted.empty());
    EXPECT_TRUE(daemon_->running());
    EXPECT_EQ(worker_pid(), worker) << "the worker was restarted during the flood\n"
                                    << diagnostics();
}

// A worker SIGKILLed twice mid-flood: nothing lost, nothing counted twice. Two causes
// of a +1 were found and fixed (docs/internals.md, "A dead worker's queue"): the kernel dropped the
// SYNs waiting for a dead worker, each then retransmitted and counted again (now the
// daemon holds the queue and answers what waited, reading the last id only once no
// more can be queued); and a record the dying worker had written just before its last
// checkpoint, for a SYN queued after that checkpoint's counters were read, which the
// next worker then counted again (now such a record is written after the checkpoint).
TEST_F(WorkerCountTest, WorkerKilledMidFloodLosesAndDoublesNothing) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    // Paced so the flood outlasts two kills and the restarts in between (the daemon
    // restarts the worker after 0.5 s, then 1 s).
    const auto parts = four_uids(3000);
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 1000, &flood));
    std::vector<pid_t> killed;
    for (int round = 0; round < 2; ++round) {
        std::this_thread::sleep_for(300ms);
        ASSERT_TRUE(any_running(flood))
            << "the flood ended before kill " << round + 1 << ": make it longer";
        ASSERT_EQ(::kill(worker, SIGKILL), 0) << "kill worker " << worker;
        killed.push_back(worker);
        ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, worker));
    }
    const bool still_flooding = any_running(flood);
    std::map<pid_t, std::uint32_t> pids;
    ASSERT_NO_FATAL_FAILURE(finish_flood(flood, parts, &pids));
    EXPECT_TRUE(still_flooding) << "the flood ended before the last worker came up";
    expect_exact_totals(expected_totals(parts));
    // Each worker explains the first few attempts of each process it sees.
    expect_attempts_name_only(pids, kExplainPerProcess * 3);
}

TEST_F(WorkerCountTest, FullReapplyMidFloodLosesAndDoublesNothing) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    auto engine = itest::NsEngine::open(topo_->server);
    ASSERT_TRUE(engine) << engine.error().message();
    const auto parts = four_uids(2500);
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 1000, &flood));
    // Two reloads that each change the allowlist (a uid nobody floods with), so the
    // daemon really replaces the ruleset in the kernel while SYNs are on their way.
    const std::vector<std::uint32_t> allowed{2999, 2998};
    for (const std::uint32_t uid : allowed) {
        std::this_thread::sleep_for(300ms);
        ASSERT_TRUE(any_running(flood)) << "the flood ended before the reload: make it longer";
        write_config("SMTP_BLOCK = \"1\"\nSMTP_ALLOWUSER = \"" + std::to_string(uid) + "\"\n");
        daemon_->signal(SIGHUP);
        const bool applied = itest::wait_until(
            [&] {
                auto uids = (*engine)->engine().read_u32_set(table_, nft::kSetAllowUid);
                return uids && uids->contains(uid);
            },
            5s, 10ms);
        ASSERT_TRUE(applied) << "the reload allowing uid " << uid << " did not reach the kernel\n"
                             << diagnostics();
    }
    const bool still_flooding = any_running(flood);
    std::map<pid_t, std::uint32_t> pids;
    ASSERT_NO_FATAL_FAILURE(finish_flood(flood, parts, &pids));
    EXPECT_TRUE(still_flooding) << "the flood ended before the last reload was applied";
    expect_exact_totals(expected_totals(parts));
    expect_attempts_name_only(pids, kExplainPerProcess);
    EXPECT_TRUE(daemon_->running());
}

// The daemon stopped and started again mid-flood: the table stays in force meanwhile
// (the kernel refuses and counts), the new worker reads the old one's log. This failed
// now and then (once in ~23 runs on a loaded machine) with N+1 for one uid, most likely
// so: the new daemon bound its queue with one message and configured it with a second,
// and the kernel drops a SYN sent to a queue in between (copy mode NONE), so its
// retransmission was counted again. Now one message binds and configures the queue
// (nfq::Queue::open).
TEST_F(WorkerCountTest, DaemonRestartMidFloodLosesAndDoublesNothing) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    const auto parts = four_uids(2500);
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 1000, &flood));
    std::this_thread::sleep_for(400ms);
    ASSERT_TRUE(any_running(flood)) << "the flood ended before the restart: make it longer";
    auto status = daemon_->stop();
    ASSERT_TRUE(status) << status.error().message();
    EXPECT_EQ(*status, 0) << itest::describe_status(*status) << "\n" << daemon_->log();
    const std::string first_log = daemon_->log();
    daemon_.reset();
    EXPECT_TRUE(processes_running(topo_->server, worker_path()).empty())
        << "the worker outlived its daemon";
    // The table stays while no daemon runs: the kernel keeps refusing and counting.
    std::this_thread::sleep_for(200ms);
    ASSERT_TRUE(any_running(flood)) << "the flood ended while no daemon ran: make it longer";
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, worker));
    const bool still_flooding = any_running(flood);
    std::map<pid_t, std::uint32_t> pids;
    ASSERT_NO_FATAL_FAILURE(finish_flood(flood, parts, &pids));
    EXPECT_TRUE(still_flooding) << "the flood ended before the new worker came up";
    expect_exact_totals(expected_totals(parts));
    // Two workers, each explaining the first attempts of each process it saw.
    expect_attempts_name_only(pids, kExplainPerProcess * 2);
    if (HasFailure())
        std::cerr << "--- first smtpfenced log:\n" << first_log;
}

// Queue overflow: every SYN is shown to the worker (sampling opened wide) and the
// worker is stopped, so the queue fills up (4096) and the kernel fails open: the SYNs
// beyond it are refused at once, the queued ones wait; all are counted by the kernel. When
// the worker resumes, it explains the first ones of each process; the totals are exact.
TEST_F(WorkerCountTest, QueueOverflowIsCountedExactly) {
    // 16 uids (without accounts: billed to "unknown") x 300 SYNs at once; the queue
    // holds 4096. Many small processes rather than a few big ones: the worker's
    // identification scans the uid's descriptors for every queued SYN.
    constexpr std::uint64_t kUids = 16;
    constexpr std::uint64_t kEach = 300;
    constexpr std::uint64_t kQueueLength = 4096;
    write_config("SMTP_BLOCK = \"1\"\nOBSERVE_RATE = \"100000\"\nOBSERVE_BURST = \"100000\"\n");
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_EQ(::kill(worker, SIGSTOP), 0);
    std::vector<FloodPart> parts;
    for (std::uint32_t i = 0; i < kUids; ++i) {
        const std::uint32_t uid = 2101 + i;
        parts.push_back({{"u" + std::to_string(uid), uid, uid, {uid}},
                         i % 2 == 0 ? Topology::kRemote4 : Topology::kRemote6,
                         i % 3 == 0 ? std::uint16_t{25} : std::uint16_t{587},
                         kEach});
    }
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 0, &flood, true, 90000));
    std::uint64_t waiting = 0;
    std::uint64_t counted = 0;
    const bool overflowed = itest::wait_until(
        [&] {
            waiting = queue_waiting(topo_->server, kQueueNum);
            auto kernel = kernel_blocked(topo_->server, table_);
            counted = 0;
            if (kernel) {
                for (const auto& [uid, n] : *kernel)
                    counted += n;
            }
            // The kernel counts each SYN just before it queues it (while its socket
            // still has an owner), so the waiting ones are counted already.
            return waiting == kQueueLength && counted == kUids * kEach;
        },
        15s, 50ms);
    ::kill(worker, SIGCONT);
    ASSERT_TRUE(overflowed) << waiting << " SYNs queued, " << counted
                            << " counted by the kernel; expected " << kQueueLength << " and "
                            << kUids * kEach << "\n"
                            << diagnostics();
    std::map<pid_t, std::uint32_t> pids;
    ASSERT_NO_FATAL_FAILURE(finish_flood(flood, parts, &pids));
    expect_exact_totals(expected_totals(parts), 30s);
    expect_attempts_name_only(pids, kExplainPerProcess);
    EXPECT_EQ(worker_pid(), worker) << "the worker was restarted\n" << diagnostics();
}

// Without a worker nothing is explained, but the kernel refuses at once (no SYN waits
// in a queue nobody reads) and counts; a worker started later records those counts.
TEST_F(WorkerCountTest, WithoutWorkerConnectsAreRefusedAtOnceAndCounted) {
    constexpr std::uint64_t kConnects = 300;
    ASSERT_NO_FATAL_FAILURE(start_daemon({"--no-worker"}));
    std::this_thread::sleep_for(300ms);
    EXPECT_TRUE(processes_running(topo_->server, worker_path()).empty());
    EXPECT_EQ(queue_binding(topo_->server, kQueueNum), "");
    const std::vector<FloodPart> parts{{kAlice, Topology::kRemote4, 25, kConnects},
                                       {kBob, Topology::kRemote6, 465, kConnects}};
    std::vector<Connector> flood;
    ASSERT_NO_FATAL_FAILURE(start_flood(parts, 0, &flood));
    std::map<pid_t, std::uint32_t> pids;
    for (std::size_t i = 0; i < flood.size(); ++i) {
        auto exit = flood[i].wait(30s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(exit->report) << exit->out;
        EXPECT_EQ(exit->report->refused, kConnects) << exit->out;
        EXPECT_LT(exit->report->slowest_us, 500000) << "a refusal waited: " << exit->out;
        pids[flood[i].pid()] = parts[i].who.uid;
    }
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    auto kernel = kernel_blocked(topo_->server, table_);
    ASSERT_TRUE(kernel) << kernel.error().message();
    EXPECT_EQ((*kernel)[kAlice.uid], kConnects);
    EXPECT_EQ((*kernel)[kBob.uid], kConnects);
    EXPECT_TRUE(read_attempt_log(state_dir()).attempts.empty()) << diagnostics();

    // A daemon with a worker: what the kernel counted meanwhile becomes counted records.
    auto status = daemon_->stop();
    ASSERT_TRUE(status) << status.error().message();
    daemon_.reset();
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    expect_exact_totals(expected_totals(parts));
    EXPECT_TRUE(read_attempt_log(state_dir()).attempts.empty()) << diagnostics();
}

TEST_F(WorkerCountTest, WorkerThatCannotStartDoesNotDelayRefusals) {
    constexpr std::uint64_t kConnects = 300;
    ASSERT_NO_FATAL_FAILURE(start_daemon({"--worker", "/bin/false"}));
    std::this_thread::sleep_for(300ms);
    // The daemon holds the queue for the worker it keeps trying to start, at length 0
    // (fail-open): bound, and nothing ever waits in it.
    const auto waiting = [&] {
        std::istringstream line(queue_binding(topo_->server, kQueueNum));
        unsigned long queue = 0, portid = 0, waiting_now = 99;
        line >> queue >> portid >> waiting_now;
        return waiting_now;
    };
    EXPECT_EQ(waiting(), 0U) << queue_binding(topo_->server, kQueueNum);
    auto c = start_connector(kAlice, site_of(kAlice),
                             {"--count", std::to_string(kConnects), Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    auto exit = c->wait(30s);
    ASSERT_TRUE(exit) << exit.error().message();
    ASSERT_TRUE(exit->report) << exit->out;
    EXPECT_EQ(exit->report->refused, kConnects) << exit->out;
    EXPECT_LT(exit->report->slowest_us, 500000) << "a refusal waited: " << exit->out;
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    auto kernel = kernel_blocked(topo_->server, table_);
    ASSERT_TRUE(kernel) << kernel.error().message();
    EXPECT_EQ((*kernel)[kAlice.uid], kConnects);
    EXPECT_EQ(waiting(), 0U) << queue_binding(topo_->server, kQueueNum);
    EXPECT_TRUE(daemon_->running()) << diagnostics();
}

}  // namespace
}  // namespace smtpfence::wtest
