// smtpfenced as the benchmarks run it: exec'd inside one of their network namespaces
// (sandbox.h) with its files (config, passwd, group, state) in the benchmark's own
// directories, its output in a log file, stopped with SIGTERM; and what /proc says
// about it and its children (CPU ticks, peak memory).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "bench/sandbox.h"
#include "common/error.h"

namespace smtpfence::bench {

// The config's default NFQUEUE_NUM.
constexpr std::uint16_t kQueueNum = 2525;

struct DaemonSpec {
    std::string program;      // the benchmark's name, for messages
    std::string daemon_path;  // smtpfenced
    std::string worker_path;  // smtpfence-worker; empty: --no-worker
    std::string table;
    std::string config, passwd, group;
    // control.sock, virtual/ and smtpfenced.log go here; the state directory too unless
    // state_dir names another.
    std::string dir;
    std::string state_dir{};
};

// smtpfenced --foreground in a namespace. Stopped with SIGTERM (its orderly exit stops
// its worker too); the same signal reaches it when the benchmark dies, whatever the way
// (PR_SET_PDEATHSIG).
class Daemon {
  public:
    // Started and ready: its table in the kernel and, with a worker, the worker bound
    // to NFQUEUE kQueueNum (within 10 s).
    [[nodiscard]] static Result<Daemon> start(const Netns& ns, DaemonSpec spec);

    Daemon(Daemon&&) noexcept = default;
    Daemon& operator=(Daemon&&) = delete;
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;
    // The normal path stops the daemon and checks the result itself; this is the
    // cleanup of the error paths, which still says when the daemon had to be killed.
    ~Daemon();

    [[nodiscard]] pid_t pid() const { return child_.pid(); }
    [[nodiscard]] pid_t worker() const { return worker_; }
    [[nodiscard]] const std::string& state_dir() const { return spec_.state_dir; }
    [[nodiscard]] std::string control_socket() const { return spec_.dir + "/control.sock"; }
    [[nodiscard]] std::string log() const;

    // The worker now (the daemon restarts one that died); 0 when there is none.
    pid_t refresh_worker();

    // What the daemon said it enforces: "observation: xt queue 2525", say.
    [[nodiscard]] std::string observation() const;

    // SIGTERM and a bounded wait for the exit; SIGKILL (and the worker too) after it.
    Result<void> stop();

  private:
    Daemon(Child child, DaemonSpec spec, std::string log_path)
        : child_(std::move(child)), spec_(std::move(spec)), log_path_(std::move(log_path)) {}
    Result<void> wait_ready(const Netns& ns);

    Child child_;
    DaemonSpec spec_;
    std::string log_path_;
    pid_t worker_ = 0;
};

// ---- /proc ---------------------------------------------------------------------------

// utime + stime of a process (all its threads), in clock ticks.
[[nodiscard]] std::optional<std::uint64_t> cpu_ticks(pid_t pid);
// A "Name:   123 kB" line of /proc/PID/status, in kB.
[[nodiscard]] std::optional<std::uint64_t> status_kib(pid_t pid, const std::string& name);
// The child of parent running exe.
[[nodiscard]] std::optional<pid_t> child_running(pid_t parent, const std::string& exe);

// ---- text ----------------------------------------------------------------------------

// The last max bytes of text, "..." before them when cut.
[[nodiscard]] std::string tail(const std::string& text, std::size_t max);
// Writes (replaces) path with text.
[[nodiscard]] Result<void> write_text(const std::string& path, const std::string& text);
// 2048 kB -> "2.0 MiB"
[[nodiscard]] std::string mib(std::uint64_t kib);

}  // namespace smtpfence::bench
