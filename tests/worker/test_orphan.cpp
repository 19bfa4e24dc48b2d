// A worker never outlives its daemon for long (issue 16, part 3). Outside systemd
// nothing else ends it: a worker left by a `kill -9` of smtpfenced kept the NFQUEUE, so
// every worker of the next daemon failed to bind it and was restarted with growing
// backoff while the orphan recorded with the old configuration. Now the worker ends
// with its daemon, and a starting daemon ends whatever worker of its table an earlier
// one left running (one that could not follow it, or one started by hand).
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "common/close_fds.h"
#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

// /proc/PID/stat's state letter ('T': stopped), '?' when pid is gone.
char state_of(pid_t pid) {
    const std::string stat = itest::read_file("/proc/" + std::to_string(pid) + "/stat");
    const std::size_t paren = stat.rfind(')');  // the command name may hold spaces
    return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

// While it lives, the test process adopts the orphans of its descendants, as a
// container's init or a test harness may. A stopped worker whose daemon dies then stays
// stopped: its process group keeps a member (the worker) whose parent is in another
// group of the same session, so it is not orphaned, and the kernel sends it no SIGCONT.
class Subreaper {
  public:
    Subreaper() : ok_(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0) {}
    Subreaper(const Subreaper&) = delete;
    Subreaper& operator=(const Subreaper&) = delete;
    ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
    [[nodiscard]] bool ok() const { return ok_; }

  private:
    bool ok_;
};

class OrphanWorkerTest : public WorkerTest {
  protected:
    [[nodiscard]] bool worker_running(pid_t pid) const {
        const std::vector<pid_t> workers = processes_running(topo_->server, worker_path());
        return std::ranges::find(workers, pid) != workers.end();
    }

    // Kills the daemon with SIGKILL, as an admin or an OOM killer would: no clean stop.
    void kill_daemon() {
        daemon_->signal(SIGKILL);
        ASSERT_TRUE(itest::wait_until([&] { return !daemon_->running(); }, 5s))
            << "smtpfenced survived SIGKILL";
    }

    // A worker started in the server namespace the way smtpfenced starts one
    // (worker_argv), but by the test: no daemon to follow. Its output goes to
    // worker.log.
    [[nodiscard]] Result<Child> start_worker_by_hand() const;

    // The next blocked attempt is refused and recorded by a worker, with its process.
    void expect_next_attempt_recorded();

    // The new daemon's worker (not `old`) comes up and is the only one in the
    // namespace; it records the next attempt, and alice's total in the attempt log is
    // the kernel's, `total`.
    void expect_only_new_worker_recording(pid_t old, std::uint64_t total);
};

Result<Child> OrphanWorkerTest::start_worker_by_hand() const {
    const std::vector<std::string> argv{worker_path(), "--table",     table_,      "--queue-num",
                                        "2525",        "--state-dir", state_dir(), "--passwd",
                                        passwd_path_,  "--group",     group_path_};
    std::vector<char*> c_argv;
    for (const std::string& a : argv)
        c_argv.push_back(const_cast<char*>(a.c_str()));
    c_argv.push_back(nullptr);
    UniqueFd ns_fd(::open(topo_->server.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns_fd.valid())
        return fail(errno, "open " + topo_->server.path());
    const std::string log_path = dir_->path() + "/worker.log";
    UniqueFd log_fd(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!log_fd.valid())
        return fail(errno, "open " + log_path);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid == 0) {
        ::setpgid(0, 0);
        ::dup2(log_fd.get(), STDOUT_FILENO);
        ::dup2(log_fd.get(), STDERR_FILENO);
        // A killed test run leaves no worker behind.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent || ::setns(ns_fd.get(), CLONE_NEWNET) != 0)
            ::_exit(126);
        close_fds(3, ~0U);
        ::execv(c_argv[0], c_argv.data());
        ::_exit(127);
    }
    return Child(pid);
}

void OrphanWorkerTest::expect_next_attempt_recorded() {
    auto c = start_connector(kAlice, site_of(kAlice), {Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    auto exit = c->wait(15s);
    ASSERT_TRUE(exit) << exit.error().message();
    ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
    EXPECT_EQ(exit->report->refused, 1U) << exit->out;
    const bool recorded = itest::wait_until(
        [&] {
            for (const Json& a : read_attempt_log(state_dir()).attempts_of(kAlice.uid)) {
                if (a.value("identified", false) && a.value("pid", pid_t{0}) == c->pid() &&
                    a.value("exe", "") == connector()) {
                    return true;
                }
            }
            return false;
        },
        5s, 50ms);
    EXPECT_TRUE(recorded) << "no record of pid " << c->pid() << " (" << connector() << ")\n"
                          << diagnostics();
}

void OrphanWorkerTest::expect_only_new_worker_recording(pid_t old, std::uint64_t total) {
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, old));
    EXPECT_EQ(processes_running(topo_->server, worker_path()), std::vector<pid_t>{worker})
        << diagnostics();
    ASSERT_NO_FATAL_FAILURE(expect_next_attempt_recorded());
    expect_exact_totals({{kAlice.uid, total}});
}

TEST_F(OrphanWorkerTest, DaemonKilledTakesItsWorkerAlong) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t old_worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&old_worker));
    ASSERT_NO_FATAL_FAILURE(kill_daemon());
    const bool ended = itest::wait_until([&] { return !worker_running(old_worker); }, 5s, 25ms);
    const std::string first_log = daemon_->log();
    EXPECT_TRUE(ended) << "worker " << old_worker << " outlived its daemon's kill -9\n"
                       << first_log;
    // Its clean stop (SIGTERM): what waited for it was answered and recorded.
    EXPECT_NE(first_log.find("worker exiting:"), std::string::npos) << first_log;
    daemon_.reset();

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    expect_only_new_worker_recording(old_worker, 1);
}

TEST_F(OrphanWorkerTest, WorkerLeftRunningIsStoppedByTheNextDaemon) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t first = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&first));
    auto stopped = daemon_->stop();
    ASSERT_TRUE(stopped) << stopped.error().message();
    daemon_.reset();  // the table stays in force

    // A worker as an earlier daemon started it, left running with the queue bound.
    auto stale = start_worker_by_hand();
    ASSERT_TRUE(stale) << stale.error().message();
    const std::string ready = std::to_string(stale->pid()) + "\n";
    ASSERT_TRUE(itest::wait_until(
        [&] { return itest::read_file(state_dir() + "/worker.ready") == ready; }, 10s))
        << "the worker started by hand did not get ready\n"
        << itest::read_file(dir_->path() + "/worker.log");

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    const auto status = stale->wait_for(10s);
    ASSERT_TRUE(status) << "the new daemon left the earlier worker running\n" << diagnostics();
    // Ended by SIGTERM: its clean stop, which answers and records what waits for it.
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << itest::describe_status(*status) << "\n"
        << itest::read_file(dir_->path() + "/worker.log");
    ASSERT_NO_FATAL_FAILURE(expect_only_new_worker_recording(stale->pid(), 1));
    const std::string who = "(pid " + std::to_string(stale->pid());
    const std::string log = daemon_->log();
    EXPECT_NE(log.find("a worker left by an earlier smtpfenced still runs " + who),
              std::string::npos)
        << log;
    EXPECT_NE(log.find("the earlier worker " + who + ") stopped"), std::string::npos) << log;
}

// A worker that cannot act on SIGTERM (stopped here) when its daemon is killed: the
// next daemon kills it and answers the SYN that waited in its queue, as after any
// worker's death. The kernel would drop it with the queue; its client would then send
// it again (the kernel holds back retransmissions while the first SYN is queued) and
// be counted twice.
TEST_F(OrphanWorkerTest, StoppedWorkerIsKilledAndWhatWaitedIsAnswered) {
    const Subreaper subreaper;
    ASSERT_TRUE(subreaper.ok()) << "prctl(PR_SET_CHILD_SUBREAPER): " << errno_text(errno);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t old_worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&old_worker));
    ASSERT_EQ(::kill(old_worker, SIGSTOP), 0);
    ASSERT_NO_FATAL_FAILURE(kill_daemon());
    std::this_thread::sleep_for(300ms);
    ASSERT_EQ(state_of(old_worker), 'T') << "the stopped worker did not stay stopped";

    auto c = start_connector(kAlice, site_of(kAlice),
                             {"--timeout-ms", "20000", Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    ASSERT_TRUE(itest::wait_until([&] { return queue_waiting(topo_->server, kQueueNum) > 0; }, 5s))
        << "the SYN did not wait in the stopped worker's queue\n"
        << diagnostics();
    daemon_.reset();

    ASSERT_NO_FATAL_FAILURE(start_daemon());
    auto exit = c->wait(25s);
    ASSERT_TRUE(exit) << exit.error().message();
    ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
    EXPECT_EQ(exit->report->refused, 1U) << exit->out;
    // Answered when the worker was killed, so its client never sent it again: counted
    // once. Dropped with the queue, it would be sent again and counted a second time.
    auto kernel = kernel_blocked(topo_->server, table_);
    ASSERT_TRUE(kernel) << kernel.error().message();
    EXPECT_EQ((*kernel)[kAlice.uid], 1U) << exit->out << "\n" << diagnostics();
    // Adopted by the test process: reaped here once killed.
    const bool ended = itest::wait_until(
        [&] { return ::waitpid(old_worker, nullptr, WNOHANG) == old_worker; }, 5s, 25ms);
    EXPECT_TRUE(ended) << "the stopped worker " << old_worker << " still runs\n" << diagnostics();

    ASSERT_NO_FATAL_FAILURE(expect_only_new_worker_recording(old_worker, 2));
    EXPECT_NE(daemon_->log().find("(pid " + std::to_string(old_worker) +
                                  ") did not stop within 3 s of SIGTERM: killed; the SYNs that "
                                  "waited for it were answered"),
              std::string::npos)
        << daemon_->log();
}

}  // namespace
}  // namespace smtpfence::wtest
