#include "ctl/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/syscalls.h"
#include "common/text.h"
#include "nfq/queue.h"
#include "nfq/worker.h"

namespace smtpfence {
namespace {

std::string proc_path(pid_t pid, const char* name) {
    return "/proc/" + std::to_string(pid) + "/" + name;
}

// The arguments of pid, split at the NULs of /proc/PID/cmdline; empty when it is gone,
// a kernel thread, or its command line is longer than any worker's.
std::vector<std::string> arguments_of(pid_t pid) {
    auto text = read_text_file(proc_path(pid, "cmdline"), 64 * 1024);
    std::vector<std::string> args;
    if (!text)
        return args;
    std::string_view rest(*text);
    while (!rest.empty()) {
        const std::size_t end = rest.find('\0');
        args.emplace_back(rest.substr(0, end));
        rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
    }
    return args;
}

// The value after option in args, as worker_argv() writes them ("--table", "T").
std::optional<std::string> option_value(const std::vector<std::string>& args,
                                        std::string_view option) {
    for (std::size_t i = 1; i + 1 < args.size(); ++i) {
        if (args[i] == option)
            return args[i + 1];
    }
    return std::nullopt;
}

// Whether every uid of pid (real, effective, saved, fs) is 0: our workers keep uid 0
// (docs/least-privilege.md). A process a user started, whatever it is named and
// whatever arguments it was given, is not one of them and is never signalled.
bool runs_as_root(pid_t pid) {
    auto status = read_text_file(proc_path(pid, "status"), 64 * 1024);
    if (!status)
        return false;
    const std::size_t at = status->find("\nUid:");
    if (at == std::string::npos)
        return false;
    std::string_view line(*status);
    line.remove_prefix(at + 5);
    line = line.substr(0, line.find('\n'));
    int ids = 0;
    while (!(line = text::trim(line)).empty()) {
        const std::size_t end = line.find_first_of(" \t");
        if (line.substr(0, end) != "0")
            return false;
        ++ids;
        line.remove_prefix(end == std::string_view::npos ? line.size() : end);
    }
    return ids == 4;
}

bool same_file(const std::string& a, const std::string& b) {
    struct stat sa {};
    struct stat sb {};
    return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

// A worker of our table that an earlier daemon left running.
struct StaleWorker {
    pid_t pid = 0;
    std::uint16_t queue_num = 0;
    int queue_fd = -1;  // the descriptor it reads the queue by, -1 when it bound its own
};

// Whether pid is a smtpfence-worker of this table: its executable (" (deleted)" once a
// package upgrade replaced it), uid 0, its network namespace (a table is per namespace)
// and its --table and --state-dir. A pid reused by anything else fails one of these.
std::optional<StaleWorker> our_worker(pid_t pid, const std::string& table,
                                      const std::string& state_dir) {
    const std::vector<std::string> args = arguments_of(pid);
    if (args.empty() || option_value(args, "--table") != table ||
        option_value(args, "--state-dir") != state_dir) {
        return std::nullopt;
    }
    std::error_code ec;
    std::string exe = std::filesystem::read_symlink(proc_path(pid, "exe"), ec).filename().string();
    if (exe.ends_with(" (deleted)"))
        exe.resize(exe.size() - std::string_view(" (deleted)").size());
    if (ec || exe != "smtpfence-worker" || !runs_as_root(pid) ||
        !same_file(proc_path(pid, "ns/net"), "/proc/self/ns/net"))
        return std::nullopt;
    StaleWorker w;
    w.pid = pid;
    const std::uint16_t default_num = nfq::WorkerOptions{}.queue_num;
    w.queue_num = static_cast<std::uint16_t>(
        text::parse_unsigned(option_value(args, "--queue-num").value_or(""), 65535)
            .value_or(default_num));
    if (const auto fd = option_value(args, "--queue-fd")) {
        if (const auto n = text::parse_unsigned(*fd, 1U << 30U))
            w.queue_fd = static_cast<int>(*n);
    }
    return w;
}

// A pidfd (Linux 5.3): it follows the process it was opened for, never a later one
// given the same pid, so what is checked through /proc after it is opened is what gets
// signalled.
class Pidfd {
  public:
    explicit Pidfd(pid_t pid) : fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
    [[nodiscard]] bool valid() const { return fd_.valid(); }
    void signal(int sig) const {
        (void)::syscall(SYS_pidfd_send_signal, fd_.get(), sig, nullptr, 0);
    }
    // True once the process has exited (at once with timeout 0).
    [[nodiscard]] bool wait_exit(std::chrono::milliseconds timeout) const {
        pollfd p{fd_.get(), POLLIN, 0};
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (true) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            const int r = ::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0)));
            if (r >= 0 || errno != EINTR)
                return r > 0;
        }
    }
    // A copy of the process's descriptor fd (Linux 5.6).
    [[nodiscard]] UniqueFd take_fd(int fd) const {
        return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_getfd, fd_.get(), fd, 0)));
    }

  private:
    UniqueFd fd_;
};

// SIGTERM first: the worker's own stop answers and records what waits for it. One that
// does not stop (stopped, hung) is killed; its queue was taken first, so the SYNs
// waiting in it are answered as the daemon answers a dead worker's (nfq/queue.h,
// release_waiting) instead of dropped, which would have each client retransmit and be
// counted again.
void end_stale_worker(const StaleWorker& w, const Pidfd& process) {
    const std::string who = "pid " + std::to_string(w.pid);
    log::warning("a worker left by an earlier smtpfenced still runs (" + who + ", NFQUEUE " +
                 std::to_string(w.queue_num) + "): stopping it");
    process.signal(SIGTERM);
    if (process.wait_exit(kStopGrace)) {
        log::notice("the earlier worker (" + who + ") stopped");
        return;
    }
    UniqueFd queue_fd = w.queue_fd >= 0 ? process.take_fd(w.queue_fd) : UniqueFd();
    process.signal(SIGKILL);
    (void)process.wait_exit(kStopGrace);
    std::string queue = "any SYN that waited for it was dropped (and may be counted twice)";
    if (queue_fd.valid()) {
        // The queue owns the descriptor once adopted; until then queue_fd does.
        auto q = nfq::Queue::adopt(queue_fd.get(), w.queue_num);
        if (q)
            (void)queue_fd.release();
        Result<void> released = q ? q->release_waiting() : Result<void>(std::unexpected(q.error()));
        queue = released ? "the SYNs that waited for it were answered"
                         : "answer the SYNs that waited for it: " + released.error().message();
    }
    log::warning("the earlier worker (" + who + ") did not stop within " +
                 std::to_string(kStopGrace.count()) + " s of SIGTERM: killed; " + queue);
}

}  // namespace

void end_stale_workers(const std::string& table, const std::string& state_dir) {
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        const auto number = text::parse_unsigned(it->path().filename().string(), 4194304);
        const auto pid = static_cast<pid_t>(number.value_or(0));
        // Cheap first: most processes are not ours by their command line alone.
        if (pid <= 0 || pid == ::getpid() || !our_worker(pid, table, state_dir))
            continue;
        const Pidfd process(pid);
        if (!process.valid()) {
            if (errno != ESRCH)
                log::warning("a worker left by an earlier smtpfenced may still run (pid " +
                             std::to_string(pid) +
                             "), not ended: pidfd_open: " + errno_text(errno));
            continue;
        }
        // Checked again once the pidfd holds the process; then it must still run, or the
        // pid may name another process by now.
        const auto worker = our_worker(pid, table, state_dir);
        if (worker && !process.wait_exit(std::chrono::milliseconds(0)))
            end_stale_worker(*worker, process);
    }
    if (ec)
        log::warning("look for workers left running: /proc: " + ec.message());
}

void WorkerSupervisor::set_argv(std::vector<std::string> argv) {
    if (argv == argv_)
        return;
    argv_ = std::move(argv);
    if (pid_ > 0) {
        stop();
        start();
    }
}

void WorkerSupervisor::start() {
    restart_pending_ = false;
    // The worker ends when this process does (nfq/worker.cpp, follow_daemon). The kernel
    // ties that to the thread that forks: the daemon has one thread, which forks here.
    std::string daemon_pid = std::to_string(::getpid());
    std::string daemon_pid_option = "--daemon-pid";
    std::vector<char*> args;
    args.reserve(argv_.size() + 3);
    for (std::string& a : argv_)
        args.push_back(a.data());
    args.push_back(daemon_pid_option.data());
    args.push_back(daemon_pid.data());
    args.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
        log::error("start worker: fork: " + errno_text(errno));
        restart_pending_ = true;
        restart_at_ = Clock::now() + backoff_;
        return;
    }
    if (pid == 0) {
        // The daemon blocks its signals for signalfd; the worker sets up its own.
        sigset_t none;
        sigemptyset(&none);
        pthread_sigmask(SIG_SETMASK, &none, nullptr);
        if (inherited_fd_ >= 0)
            (void)fcntl(inherited_fd_, F_SETFD, 0);  // survives execv
        execv(args[0], args.data());
        _exit(127);
    }
    pid_ = pid;
    started_at_ = Clock::now();
    log::info("worker started: pid " + std::to_string(pid));
}

bool WorkerSupervisor::ended(pid_t pid, int status) {
    if (pid <= 0 || pid != pid_)
        return false;
    pid_ = -1;
    if (on_exit_)
        on_exit_();
    const std::string how = WIFEXITED(status)
                                ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                : "killed by signal " + std::to_string(WTERMSIG(status));
    // A worker that ran for a minute was healthy: restart quickly. One that dies
    // at once backs off up to 30 s so a broken setup does not spin.
    if (Clock::now() - started_at_ > std::chrono::seconds(60))
        backoff_ = std::chrono::milliseconds(500);
    log::warning("worker " + how + "; restarting in " + std::to_string(backoff_.count()) +
                 " ms (the kernel keeps refusing and counting meanwhile)");
    restart_pending_ = true;
    restart_at_ = Clock::now() + backoff_;
    backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(30000));
    return true;
}

int WorkerSupervisor::tick() {
    if (!restart_pending_)
        return -1;
    const auto now = Clock::now();
    if (now >= restart_at_) {
        ++restarts_;
        start();
        return restart_pending_ ? static_cast<int>(backoff_.count()) : -1;
    }
    return static_cast<int>(
               std::chrono::duration_cast<std::chrono::milliseconds>(restart_at_ - now).count()) +
           1;
}

void WorkerSupervisor::stop() {
    restart_pending_ = false;
    if (pid_ <= 0)
        return;
    kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + kStopGrace;
    while (Clock::now() < deadline) {
        int status = 0;
        if (waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            if (on_exit_)
                on_exit_();
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    if (on_exit_)
        on_exit_();
}

}  // namespace smtpfence
