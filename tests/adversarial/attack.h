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
#include <cerrno>
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
    if (ns != nullptr && !testing::enter_netns(ns->fd()))
        return "setns: " + std::string(std::strerror(errno));
    if (who && !testing::become(*who))
        return "credentials: " + std::string(std::strerror(errno));
    return {};
}

// Forks; the child enters ns as who and runs body(), whose string result comes back.
// A child that outlives timeout is killed and "timeout" returned.
template <class Body>
std::string in_child(const Netns* ns, const std::optional<Credentials>& who, Body body,
                     Millis timeout = 10s) {
    auto pipe = testing::make_pipe();
    if (!pipe)
        return "harness: pipe failed";
    auto child = testing::spawn([&]() -> int {
        pipe->read.reset();
        ::setpgid(0, 0);
        std::string out = become(ns, who);
        out = out.empty() ? body() : "harness: " + out;
        (void)testing::write_all(pipe->write.get(), out.data(), out.size());
        return 0;
    });
    if (!child)
        return "harness: fork failed";
    pipe->write.reset();
    std::string out;
    if (!testing::read_until_eof(pipe->read.get(), out,
                                 std::chrono::steady_clock::now() + timeout)) {
        child->kill_and_reap();
        return "timeout (so far: " + out + ")";
    }
    (void)child->wait_for(5s);
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
