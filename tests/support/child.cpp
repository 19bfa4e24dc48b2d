#include "tests/support/child.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>
#include <utility>

#include "common/close_fds.h"
#include "common/syscalls.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::testing {

using Clock = std::chrono::steady_clock;

bool wait_until(const std::function<bool()>& pred, Millis timeout, Millis step) {
    const auto deadline = Clock::now() + timeout;
    while (true) {
        if (pred())
            return true;
        if (Clock::now() >= deadline)
            return pred();
        std::this_thread::sleep_for(step);
    }
}

// ---- Child --------------------------------------------------------------------------

Child::Child(Child&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), status_(std::exchange(other.status_, std::nullopt)) {}

Child& Child::operator=(Child&& other) noexcept {
    if (this != &other) {
        kill_and_reap();
        pid_ = std::exchange(other.pid_, -1);
        status_ = std::exchange(other.status_, std::nullopt);
    }
    return *this;
}

bool Child::running() {
    if (pid_ <= 0 || status_)
        return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0)
        return true;
    if (r == pid_) {
        status_ = status;
    } else {
        status_ = -1;  // reaped by someone else (ECHILD)
    }
    return false;
}

std::optional<int> Child::wait_for(Millis timeout) {
    if (pid_ <= 0 || !running())
        return status_;
    // A pidfd turns readable the moment the child exits: no polling interval is added
    // to what callers measure (the benchmark times `nft -f` through run()).
    // syscall(): glibc 2.36's <sys/pidfd.h> declares pidfd_open without C linkage.
    const UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0U)));
    if (pidfd.valid()) {
        (void)wait_readable(pidfd.get(), Clock::now() + timeout);
        (void)running();
    } else {
        wait_until([this] { return !running(); }, timeout, Millis{5});
    }
    return status_;
}

Result<int> Child::wait() {
    if (status_)
        return *status_;
    if (pid_ <= 0)
        return fail(ECHILD, "wait for a child that is not running");
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
        if (errno != EINTR)
            return fail(errno, "waitpid " + std::to_string(pid_));
    }
    status_ = status;
    return status;
}

void Child::signal(int sig) const {
    if (pid_ > 0 && !status_)
        ::kill(pid_, sig);
}

void Child::kill_and_reap() {
    if (pid_ <= 0 || status_)
        return;
    ::kill(-pid_, SIGKILL);  // its process group, when it made one
    ::kill(pid_, SIGKILL);
    int status = 0;
    pid_t r = 0;
    while ((r = ::waitpid(pid_, &status, 0)) < 0 && errno == EINTR) {
    }
    status_ = r == pid_ ? status : -1;
}

std::string describe_status(int wait_status) {
    if (WIFEXITED(wait_status))
        return "exited with " + std::to_string(WEXITSTATUS(wait_status));
    if (WIFSIGNALED(wait_status))
        return "killed by signal " + std::to_string(WTERMSIG(wait_status));
    return "wait status " + std::to_string(wait_status);
}

bool process_alive(pid_t pid) {
    const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    const std::size_t paren = stat.rfind(')');  // the command name may hold spaces
    if (paren == std::string::npos || paren + 2 >= stat.size())
        return false;
    return stat[paren + 2] != 'Z' && stat[paren + 2] != 'X';
}

pid_t parent_of(pid_t pid) {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("PPid:"))
            return static_cast<pid_t>(std::strtol(line.c_str() + 5, nullptr, 10));
    }
    return 0;
}

std::vector<std::string> left_by_dead_runs(const std::string& dir, const std::string& prefix) {
    std::vector<std::string> stale;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr)
        return stale;
    const std::string head = prefix + "-";
    // NOLINTNEXTLINE(concurrency-mt-unsafe): one reader of this DIR*, one thread
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (!name.starts_with(head))
            continue;
        char* end = nullptr;
        const long pid = std::strtol(name.c_str() + head.size(), &end, 10);
        if (*end != '-' || pid <= 0 || pid == ::getpid())
            continue;
        if (!process_alive(static_cast<pid_t>(pid)))
            stale.push_back(name);
    }
    ::closedir(d);
    return stale;
}

// ---- in a forked child ---------------------------------------------------------------

bool enter_netns(int ns_fd) {
    return ns_fd < 0 || ::setns(ns_fd, CLONE_NEWNET) == 0;
}

bool become(const Credentials& creds) {
    return ::setgroups(creds.groups.size(), creds.groups.data()) == 0 &&
           ::setresgid(creds.gid, creds.gid, creds.gid) == 0 &&
           ::setresuid(creds.uid, creds.uid, creds.uid) == 0;
}

bool die_with_parent(pid_t parent, int sig) {
    // getppid() after prctl: the parent may have died before the setting took effect.
    return ::prctl(PR_SET_PDEATHSIG, sig) == 0 && ::getppid() == parent;
}

void close_other_fds(std::initializer_list<int> keep) {
    std::array<int, 8> sorted{};
    std::size_t n = 0;
    for (const int fd : keep) {
        if (fd >= 0 && n < sorted.size())
            sorted[n++] = fd;
    }
    std::sort(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(n));
    unsigned from = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const auto fd = static_cast<unsigned>(sorted[i]);
        if (fd > from)
            close_fds(from, fd - 1);
        from = std::max(from, fd + 1);
    }
    close_fds(from, ~0U);
}

Argv::Argv(const std::vector<std::string>& args) {
    ptrs.reserve(args.size() + 1);
    for (const std::string& a : args)
        ptrs.push_back(const_cast<char*>(a.c_str()));
    ptrs.push_back(nullptr);
}

bool write_all(int fd, const void* buf, std::size_t len) {
    const char* p = static_cast<const char*>(buf);
    while (len > 0) {
        const ssize_t n = ::write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
}

void write_text(int fd, const char* text) {
    (void)write_all(fd, text, std::strlen(text));
}

namespace detail {

bool enter_child(const Netns& ns, pid_t parent) {
    return die_with_parent(parent, SIGKILL) && enter_netns(ns.fd());
}

}  // namespace detail

// ---- the parent's end ----------------------------------------------------------------

Result<Pipe> make_pipe() {
    std::array<int, 2> fds{};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0)
        return fail(errno, "pipe2");
    return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

bool wait_readable(int fd, Deadline deadline) {
    while (true) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            return false;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left));
        if (r > 0)
            return true;
        if (r == 0 || errno != EINTR)
            return false;
    }
}

bool read_exact(int fd, void* buf, std::size_t len, Deadline deadline) {
    char* p = static_cast<char*>(buf);
    while (len > 0) {
        if (!wait_readable(fd, deadline))
            return false;
        const ssize_t n = ::read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
}

bool read_until_eof(int fd, std::string& out, Deadline deadline) {
    std::array<char, 4096> buf{};
    while (true) {
        if (!wait_readable(fd, deadline))
            return false;
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return true;
        out.append(buf.data(), static_cast<std::size_t>(n));
    }
}

}  // namespace smtpfence::testing
