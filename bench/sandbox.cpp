#include "bench/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sstream>

namespace smtpfence::bench {
namespace {

// The namespace the benchmark started in, opened once: the way back after entering
// a bench namespace to create something there.
int home_ns() {
    static const UniqueFd home(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    return home.get();
}

// Staying in a bench namespace by mistake would make every later step act on the
// wrong namespace; there is no sensible way to continue.
void return_home() {
    if (::setns(home_ns(), CLONE_NEWNET) != 0) {
        (void)std::fprintf(stderr,
                           "smtpfence-bench: cannot return to the original network namespace: %s\n",
                           errno_text(errno).c_str());
        std::_Exit(1);
    }
}

Result<sockaddr_in> ipv4(const std::string& addr, std::uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) {
        return fail(EINVAL, "parse IPv4 address " + addr);
    }
    return sa;
}

const sockaddr* as_sockaddr(const sockaddr_in& sa) {
    return reinterpret_cast<const sockaddr*>(&sa);
}

struct Pipe {
    UniqueFd read;
    UniqueFd write;
};

Result<Pipe> make_pipe() {
    std::array<int, 2> fds{};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
        return fail(errno, "pipe");
    }
    return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Waits up to timeout for fd to become readable; false on timeout.
Result<bool> wait_readable(int fd, Millis timeout) {
    pollfd pfd{fd, POLLIN, 0};
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        const auto left =
            std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
        if (left.count() < 0) {
            return false;
        }
        const int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (ready > 0) {
            return true;
        }
        if (ready == 0) {
            return false;
        }
        if (errno != EINTR) {
            return fail(errno, "poll");
        }
    }
}

// CPU time of the calling process: the scheduler's exact runtime, which on a shared
// machine leaves out the time other processes held the CPU.
std::int64_t cpu_time_ns() {
    timespec ts{};
    (void)::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) {
        return "exit " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return "killed by signal " + std::to_string(WTERMSIG(status));
    }
    return "wait status " + std::to_string(status);
}

}  // namespace

namespace detail {

bool enter_child(const NetNs& ns, pid_t parent) {
    // The benchmark's death, however it happens, takes its children along.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) {
        return false;
    }
    return ::setns(ns.fd(), CLONE_NEWNET) == 0;
}

}  // namespace detail

Result<NetNs> NetNs::create() {
    if (home_ns() < 0) {
        return fail(errno, "open /proc/self/ns/net");
    }
    if (::unshare(CLONE_NEWNET) != 0) {
        return fail(errno, "unshare(CLONE_NEWNET)");
    }
    UniqueFd fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    const int open_errno = errno;
    return_home();
    if (!fd.valid()) {
        return fail(open_errno, "open the new network namespace");
    }
    return NetNs(std::move(fd));
}

std::string NetNs::path() const {
    return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd_.get());
}

Child& Child::operator=(Child&& other) noexcept {
    if (this != &other) {
        kill_and_reap();
        pid_ = std::exchange(other.pid_, -1);
    }
    return *this;
}

Result<int> Child::wait() {
    if (pid_ <= 0) {
        return fail(ECHILD, "wait for a child that is not running");
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
        if (errno != EINTR) {
            return fail(errno, "waitpid " + std::to_string(pid_));
        }
    }
    pid_ = -1;
    return status;
}

void Child::kill_and_reap() {
    if (pid_ <= 0) {
        return;
    }
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) {
        return ::access(name.c_str(), X_OK) == 0 ? name : "";
    }
    std::string dirs;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): the benchmark is single-threaded
    if (const char* path = std::getenv("PATH"); path != nullptr) {
        dirs = path;
    }
    dirs += ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin";
    std::istringstream in(dirs);
    for (std::string dir; std::getline(in, dir, ':');) {
        if (dir.empty()) {
            continue;
        }
        std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
    }
    return "";
}

Result<UniqueFd> text_fd(std::string_view text) {
    UniqueFd fd(::memfd_create("smtpfence-bench", MFD_CLOEXEC));
    if (!fd.valid()) {
        return fail(errno, "memfd_create");
    }
    std::size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return fail(errno, "write memfd");
        }
        done += static_cast<std::size_t>(n);
    }
    return fd;
}

bool CommandResult::ok() const {
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string CommandResult::describe() const {
    std::string out = describe_status(status);
    if (!output.empty()) {
        out += ": " + output;
    }
    while (!out.empty() && out.back() == '\n') {
        out.pop_back();
    }
    return out;
}

Result<CommandResult> run_in(const NetNs& ns, const std::vector<std::string>& argv, int input,
                             Millis timeout) {
    if (argv.empty()) {
        return fail(EINVAL, "run an empty command");
    }
    const std::string program = find_program(argv[0]);
    if (program.empty()) {
        return fail(ENOENT, "run " + argv[0], "not found in PATH or the sbin directories");
    }
    // Built before fork: the child only dup2s and execs.
    std::vector<char*> cargv;
    cargv.reserve(argv.size() + 1);
    for (const std::string& a : argv) {
        cargv.push_back(const_cast<char*>(a.c_str()));
    }
    cargv.push_back(nullptr);

    auto pipe = make_pipe();
    if (!pipe) {
        return std::unexpected(pipe.error());
    }
    auto child = spawn_in(ns, [&]() -> int {
        if (::dup2(pipe->write.get(), STDOUT_FILENO) < 0 ||
            ::dup2(pipe->write.get(), STDERR_FILENO) < 0) {
            return 126;
        }
        int in = input;
        if (in >= 0) {
            if (::lseek(in, 0, SEEK_SET) < 0) {
                return 126;
            }
        } else {
            in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        if (in < 0 || ::dup2(in, STDIN_FILENO) < 0) {
            return 126;
        }
        ::execv(program.c_str(), cargv.data());
        const std::string msg = "exec " + program + ": " + errno_text(errno) + "\n";
        (void)!::write(STDERR_FILENO, msg.data(), msg.size());
        return 127;
    });
    if (!child) {
        return std::unexpected(child.error());
    }
    pipe->write.reset();

    const std::string what = "run " + argv[0];
    CommandResult result;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::array<char, 4096> buf{};
    while (true) {
        const auto left =
            std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
        auto readable = wait_readable(pipe->read.get(), std::max(left, Millis(0)));
        if (!readable) {
            return std::unexpected(readable.error().wrap(what));
        }
        if (!*readable) {
            child->kill_and_reap();
            return fail(ETIMEDOUT, what, "killed after " + std::to_string(timeout.count()) + " ms");
        }
        const ssize_t n = ::read(pipe->read.get(), buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return fail(errno, what + ": read its output");
        }
        if (n == 0) {
            break;
        }
        result.output.append(buf.data(), static_cast<std::size_t>(n));
    }
    auto status = child->wait();
    if (!status) {
        return std::unexpected(status.error().wrap(what));
    }
    result.status = *status;
    return result;
}

Result<void> run_ok(const NetNs& ns, const std::vector<std::string>& argv, int input) {
    auto r = run_in(ns, argv, input);
    if (!r) {
        return std::unexpected(r.error());
    }
    if (!r->ok()) {
        std::string cmd;
        for (const std::string& a : argv) {
            cmd += (cmd.empty() ? "" : " ") + a;
        }
        return fail(0, cmd, r->describe());
    }
    return {};
}

Result<std::unique_ptr<nft::NetlinkSocket>> open_netlink_in(const NetNs& ns) {
    if (::setns(ns.fd(), CLONE_NEWNET) != 0) {
        return fail(errno, "enter a bench network namespace");
    }
    auto sock = nft::NetlinkSocket::open();
    return_home();
    if (!sock) {
        return std::unexpected(sock.error());
    }
    return std::make_unique<nft::NetlinkSocket>(std::move(*sock));
}

Result<Child> start_listener(const NetNs& ns, const std::string& addr, std::uint16_t port) {
    auto sa = ipv4(addr, port);
    if (!sa) {
        return std::unexpected(sa.error());
    }
    auto pipe = make_pipe();
    if (!pipe) {
        return std::unexpected(pipe.error());
    }
    auto child = spawn_in(ns, [&]() -> int {
        const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int err = 0;
        const int on = 1;
        if (s < 0 || ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
            ::bind(s, as_sockaddr(*sa), sizeof *sa) != 0 || ::listen(s, 4096) != 0) {
            err = errno;
        }
        (void)!::write(pipe->write.get(), &err, sizeof err);
        if (err != 0) {
            return 1;
        }
        pipe->write.reset();
        while (true) {
            const int c = ::accept4(s, nullptr, nullptr, SOCK_CLOEXEC);
            if (c >= 0) {
                ::close(c);
            } else if (errno != EINTR && errno != ECONNABORTED) {
                return 2;
            }
        }
    });
    if (!child) {
        return std::unexpected(child.error());
    }
    pipe->write.reset();
    const std::string what = "listen on " + addr + ":" + std::to_string(port);
    auto readable = wait_readable(pipe->read.get(), Millis(5000));
    if (!readable) {
        return std::unexpected(readable.error().wrap(what));
    }
    int err = 0;
    if (!*readable || ::read(pipe->read.get(), &err, sizeof err) != sizeof err) {
        return fail(EIO, what, "the listener process did not report back");
    }
    if (err != 0) {
        return fail(err, what);
    }
    return std::move(*child);
}

Result<ProbeCounts> probe_connects(const NetNs& ns, const ProbeSpec& spec, Millis watchdog) {
    auto sa = ipv4(spec.addr, spec.port);
    if (!sa) {
        return std::unexpected(sa.error());
    }
    auto pipe = make_pipe();
    if (!pipe) {
        return std::unexpected(pipe.error());
    }
    const auto budget = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(spec.seconds));
    auto child = spawn_in(ns, [&]() -> int {
        ProbeCounts c;
        // A process of the user, as the kernel sees it: skuid/skgid come from the
        // socket's file credentials, taken at socket() time.
        if (::setgroups(0, nullptr) != 0 || ::setresgid(spec.gid, spec.gid, spec.gid) != 0 ||
            ::setresuid(spec.uid, spec.uid, spec.uid) != 0) {
            c.setup_errno = errno;
        } else {
            const std::int64_t cpu_start = cpu_time_ns();
            const auto start = std::chrono::steady_clock::now();
            auto now = start;
            while (c.attempts < spec.max_attempts && (c.attempts == 0 || now - start < budget)) {
                ++c.attempts;
                const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                const int r = s < 0 ? -1 : ::connect(s, as_sockaddr(*sa), sizeof *sa);
                if (r == 0) {
                    ++c.connected;
                } else if (errno == ECONNREFUSED) {
                    ++c.refused;
                } else {
                    ++c.other;
                    if (c.first_other_errno == 0) {
                        c.first_other_errno = errno;
                    }
                }
                if (s >= 0) {
                    ::close(s);
                }
                now = std::chrono::steady_clock::now();
            }
            c.elapsed_ns =
                std::chrono::duration_cast<std::chrono::nanoseconds>(now - start).count();
            c.cpu_ns = cpu_time_ns() - cpu_start;
        }
        // Smaller than PIPE_BUF: one write, delivered whole.
        (void)!::write(pipe->write.get(), &c, sizeof c);
        return 0;
    });
    if (!child) {
        return std::unexpected(child.error());
    }
    pipe->write.reset();

    const std::string what = "connect() loop as uid " + std::to_string(spec.uid) + " to " +
                             spec.addr + ":" + std::to_string(spec.port);
    const auto limit =
        std::chrono::duration_cast<Millis>(std::chrono::duration<double>(spec.seconds)) + watchdog;
    auto readable = wait_readable(pipe->read.get(), limit);
    if (!readable) {
        return std::unexpected(readable.error().wrap(what));
    }
    if (!*readable) {
        child->kill_and_reap();
        return fail(ETIMEDOUT, what,
                    "connect() neither failed nor succeeded: a SYN got past the firewall and was "
                    "never answered, or the loop is stuck");
    }
    ProbeCounts counts;
    const ssize_t n = ::read(pipe->read.get(), &counts, sizeof counts);
    auto status = child->wait();
    if (n != static_cast<ssize_t>(sizeof counts)) {
        return fail(EIO, what,
                    "the probe process ended without a result (" +
                        (status ? describe_status(*status) : status.error().message()) + ")");
    }
    if (counts.setup_errno != 0) {
        return fail(counts.setup_errno, what + ": take uid/gid " + std::to_string(spec.uid) + "/" +
                                            std::to_string(spec.gid));
    }
    return counts;
}

}  // namespace smtpfence::bench
