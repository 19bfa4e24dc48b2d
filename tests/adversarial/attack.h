// Helpers of the adversarial suite: run a piece of attack code in a forked child that
// has entered a namespace and taken a user's credentials, and read back what happened.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>

#include "common/fd.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {

// Enters ns (when given) and becomes who (when given), as connect_as() does:
// supplementary groups, then gid, then uid. Returns "" or what failed.
inline std::string become(const Netns* ns, const std::optional<Credentials>& who) {
    if (ns != nullptr) {
        const int fd = ::open(ns->path().c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0)
            return "setns: " + std::string(std::strerror(errno));
        ::close(fd);
    }
    if (who) {
        if (::setgroups(who->groups.size(), who->groups.data()) != 0 ||
            ::setresgid(who->gid, who->gid, who->gid) != 0 ||
            ::setresuid(who->uid, who->uid, who->uid) != 0)
            return "credentials: " + std::string(std::strerror(errno));
    }
    return {};
}

// Forks; the child enters ns as who and runs body(), whose string result comes back.
// A child that outlives timeout is killed and "timeout" returned.
template <class Body>
std::string in_child(const Netns* ns, const std::optional<Credentials>& who, Body body,
                     Millis timeout = 10s) {
    std::array<int, 2> p{};
    if (::pipe2(p.data(), O_CLOEXEC) != 0)
        return "harness: pipe failed";
    const pid_t pid = ::fork();
    if (pid < 0)
        return "harness: fork failed";
    if (pid == 0) {
        ::close(p[0]);
        ::setpgid(0, 0);
        std::string out = become(ns, who);
        out = out.empty() ? body() : "harness: " + out;
        std::size_t off = 0;
        while (off < out.size()) {
            const ssize_t n = ::write(p[1], out.data() + off, out.size() - off);
            if (n <= 0)
                break;
            off += static_cast<std::size_t>(n);
        }
        ::_exit(0);
    }
    ::close(p[1]);
    UniqueFd rd(p[0]);
    Child child(pid);
    std::string out;
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (true) {
        const auto left =
            std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            child.kill_and_reap();
            return "timeout (so far: " + out + ")";
        }
        pollfd pfd{rd.get(), POLLIN, 0};
        if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
            continue;
        std::array<char, 4096> buf{};
        const ssize_t n = ::read(rd.get(), buf.data(), buf.size());
        if (n <= 0)
            break;
        out.append(buf.data(), static_cast<std::size_t>(n));
    }
    (void)child.wait_for(5s);
    return out;
}

// VmRSS of a process in KiB, from /proc/PID/status; -1 when it is gone.
inline long rss_kib(pid_t pid) {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:"))
            return std::stol(line.substr(6));
    }
    return -1;
}

// errno as its symbolic name for the common network errors, for readable outcomes.
inline std::string errno_name(int e) {
    switch (e) {
        case 0:
            return "OK";
        case ECONNREFUSED:
            return "ECONNREFUSED";
        case ETIMEDOUT:
            return "ETIMEDOUT";
        case EPERM:
            return "EPERM";
        case EACCES:
            return "EACCES";
        case EINPROGRESS:
            return "EINPROGRESS";
        case ENETUNREACH:
            return "ENETUNREACH";
        case EHOSTUNREACH:
            return "EHOSTUNREACH";
        case EPIPE:
            return "EPIPE";
        case ECONNRESET:
            return "ECONNRESET";
        default:
            return "errno " + std::to_string(e) + " (" + std::strerror(e) + ")";
    }
}

}  // namespace smtpfence::itest
