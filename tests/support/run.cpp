#include "tests/support/run.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "tests/support/netns.h"

namespace smtpfence::testing {
namespace {

using Clock = std::chrono::steady_clock;

// The command's side of run(), in the forked child: stdout and stderr into the pipes,
// stdin from input (or /dev/null), the namespace, the credentials, then exec.
[[noreturn]] void exec_command(const Argv& argv, int ns_fd, const RunOptions& options, int out_fd,
                               int err_fd, int devnull, pid_t parent) {
    ::setpgid(0, 0);  // so a timeout kills the whole pipeline
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    if (options.input >= 0) {
        if (::lseek(options.input, 0, SEEK_SET) < 0 || ::dup2(options.input, STDIN_FILENO) < 0) {
            write_text(STDERR_FILENO, "run: stdin from the input failed\n");
            ::_exit(126);
        }
    } else if (devnull >= 0) {
        ::dup2(devnull, STDIN_FILENO);
    }
    if (!enter_netns(ns_fd)) {
        write_text(STDERR_FILENO, "run: setns failed\n");
        ::_exit(126);
    }
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
    if (options.as && !become(*options.as)) {
        write_text(STDERR_FILENO, "run: dropping credentials failed\n");
        ::_exit(126);
    }
    if (!die_with_parent(parent, SIGKILL))
        ::_exit(1);
    ::execv(argv.ptrs[0], argv.ptrs.data());
    write_text(STDERR_FILENO, "run: exec failed: ");
    write_text(STDERR_FILENO, argv.ptrs[0]);
    write_text(STDERR_FILENO, "\n");
    ::_exit(127);
}

// Reads the command's stdout and stderr until both end or the deadline passes.
void collect_output(int out_fd, int err_fd, RunResult& result, Clock::time_point deadline) {
    bool out_open = true;
    bool err_open = true;
    std::array<char, 4096> buf{};
    while (out_open || err_open) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            break;
        std::array<pollfd, 2> fds = {pollfd{out_open ? out_fd : -1, POLLIN, 0},
                                     pollfd{err_open ? err_fd : -1, POLLIN, 0}};
        const int r = ::poll(fds.data(), fds.size(), static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (std::size_t i = 0; i < fds.size(); ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0)
                continue;
            const ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                (i == 0 ? out_open : err_open) = false;
                continue;
            }
            (i == 0 ? result.out : result.err).append(buf.data(), static_cast<std::size_t>(n));
        }
    }
}

}  // namespace

std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos)
        return name;
    std::string dirs;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): the test process is single-threaded
    if (const char* path = std::getenv("PATH"))
        dirs = path;
    dirs += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    std::stringstream ss(dirs);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        if (dir.empty())
            continue;
        const std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0)
            return candidate;
    }
    return {};
}

std::string RunResult::describe() const {
    std::string s = timed_out ? "timed out" : "exit " + std::to_string(exit_code);
    const std::string all = output();
    if (!all.empty())
        s += ": " + all;
    return s;
}

RunResult run(const Netns* ns, const std::vector<std::string>& argv, const RunOptions& options) {
    RunResult result;
    if (argv.empty()) {
        result.err = "run: empty argv";
        return result;
    }
    std::vector<std::string> args = argv;
    if (std::string found = find_program(argv[0]); !found.empty())
        args[0] = std::move(found);
    const Argv c_argv(args);
    auto out = make_pipe();
    auto err = make_pipe();
    if (!out || !err) {
        result.err = "run: pipe failed";
        return result;
    }
    const UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        exec_command(c_argv, ns != nullptr ? ns->fd() : -1, options, out->write.get(),
                     err->write.get(), devnull.get(), parent);
    });
    if (!child) {
        result.err = child.error().message();
        return result;
    }
    out->write.reset();
    err->write.reset();

    const auto deadline = Clock::now() + options.timeout;
    collect_output(out->read.get(), err->read.get(), result, deadline);
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    std::optional<int> status = child->wait_for(std::max(left, Millis(0)));
    if (!status) {
        result.timed_out = true;
        child->kill_and_reap();
        status = child->status();
    }
    if (status && *status >= 0) {
        result.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
    }
    return result;
}

}  // namespace smtpfence::testing
