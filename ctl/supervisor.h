// Keeps the NFQUEUE worker running: started after the rules are in the kernel,
// restarted with backoff when it dies. Enforcement never waits for it: while it is
// down the kernel still refuses and counts, and the next worker reconciles.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace smtpfence {

// How long a worker has to stop on SIGTERM (it answers and records what waits for it)
// before SIGKILL.
inline constexpr std::chrono::seconds kStopGrace{3};

// Ends every smtpfence-worker of this table that an earlier daemon left running (one
// killed before its worker could follow it, see nfq/worker.cpp, or a worker started by
// hand): same network namespace, and --table and --state-dir as worker_argv() writes
// them. Such a worker holds the queue this daemon is about to bind and records with the
// old configuration. Each gets SIGTERM, then SIGKILL after kStopGrace, and the SYNs
// still waiting in its queue are then answered as after any worker's death. Call it
// after the control socket is ours (a second daemon must stop before) and before
// dropping privileges: reading another process's exe and taking its descriptor need
// CAP_SYS_PTRACE.
void end_stale_workers(const std::string& table, const std::string& state_dir);

class WorkerSupervisor {
  public:
    using Clock = std::chrono::steady_clock;

    explicit WorkerSupervisor(std::vector<std::string> argv) : argv_(std::move(argv)) {}
    WorkerSupervisor(const WorkerSupervisor&) = delete;
    WorkerSupervisor& operator=(const WorkerSupervisor&) = delete;
    ~WorkerSupervisor() { stop(); }

    // Replaces the command line (a reload changed the queue number): restarts.
    void set_argv(std::vector<std::string> argv);
    void start();
    // Starts the worker unless it runs (e.g. enforcement was switched back on).
    void ensure_running() {
        if (pid_ <= 0)
            start();
    }
    // The daemon's reaper (ctl/children.h) reaped pid with status: when it was the
    // worker (true), schedules a restart.
    bool ended(pid_t pid, int status);
    // Restarts the worker if a restart is due; returns ms until the next one is due
    // (-1: none pending), for poll().
    int tick();
    // SIGTERM, then SIGKILL after kStopGrace.
    void stop();

    // A descriptor the worker inherits (the NFQUEUE socket the daemon holds; its
    // number is on the worker's command line), -1 for none.
    void set_inherited_fd(int fd) { inherited_fd_ = fd; }
    // Called whenever the worker has ended (died or stopped): the daemon releases the
    // SYNs that waited for it.
    void set_on_exit(std::function<void()> fn) { on_exit_ = std::move(fn); }

    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] std::uint64_t restarts() const { return restarts_; }

  private:
    std::vector<std::string> argv_;
    pid_t pid_ = -1;
    bool restart_pending_ = false;
    Clock::time_point restart_at_{};
    Clock::time_point started_at_{};
    std::chrono::milliseconds backoff_{500};
    std::uint64_t restarts_ = 0;
    int inherited_fd_ = -1;
    std::function<void()> on_exit_;
};

}  // namespace smtpfence
