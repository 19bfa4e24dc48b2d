#include "ctl/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "common/error.h"
#include "common/log.h"

namespace smtpfence {

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

void WorkerSupervisor::reap() {
    while (true) {
        int status = 0;
        const pid_t done = waitpid(-1, &status, WNOHANG);
        if (done <= 0)
            return;
        if (done != pid_)
            continue;
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
    }
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
    for (int i = 0; i < 300; ++i) {  // 3 s grace
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
