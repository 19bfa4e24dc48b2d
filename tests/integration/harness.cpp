#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string_view>

#include "tests/support/journald.h"

#ifndef SMTPFENCED_PATH
#error "SMTPFENCED_PATH must be defined by CMake"
#endif
#ifndef SMTPFENCECTL_PATH
#error "SMTPFENCECTL_PATH must be defined by CMake"
#endif

namespace smtpfence::itest {
namespace {

using Clock = std::chrono::steady_clock;
using testing::Argv;
using testing::become;
using testing::close_other_fds;
using testing::die_with_parent;
using testing::enter_netns;
using testing::make_pipe;
using testing::read_exact;
using testing::read_until_eof;
using testing::spawn;
using testing::write_all;
using testing::write_text;

}  // namespace

std::string smtpfenced_path() {
    return SMTPFENCED_PATH;
}
std::string smtpfencectl_path() {
    return SMTPFENCECTL_PATH;
}

std::optional<std::string> skip_reason() {
    static const std::optional<std::string> reason = []() -> std::optional<std::string> {
        if (::geteuid() != 0) {
            return "integration tests need root (network namespaces, nftables, setuid)";
        }
        auto ns = Netns::create();
        if (!ns) {
            return "cannot create a network namespace (no kernel support?): " +
                   ns.error().message();
        }
        const RunResult nft = run(*ns, {"nft", "list", "ruleset"});
        if (nft.exit_code != 0)
            return "nftables unavailable: " + nft.describe();
        return std::nullopt;
    }();
    return reason;
}

// ---- connect_as ---------------------------------------------------------------------

std::ostream& operator<<(std::ostream& os, Outcome outcome) {
    switch (outcome) {
        case Outcome::Connected:
            return os << "Connected";
        case Outcome::Refused:
            return os << "Refused";
        case Outcome::TimedOut:
            return os << "TimedOut";
        case Outcome::OtherErrno:
            return os << "OtherErrno";
        case Outcome::HarnessError:
            return os << "HarnessError";
    }
    return os << "Outcome(" << static_cast<int>(outcome) << ")";
}

std::string ConnectResult::describe() const {
    std::stringstream ss;
    ss << outcome << " after " << elapsed.count() << " ms";
    if (error != 0)
        ss << " (" << errno_text(error) << ")";
    if (outcome == Outcome::Connected)
        ss << ", greeting \"" << greeting << "\"";
    if (!note.empty())
        ss << ": " << note;
    return ss.str();
}

namespace {

// What the probe child sends back: plain data, written once.
struct ConnectReport {
    int outcome;
    int error;
    long long elapsed_us;
    char note[64];
    char greeting[256];
};

[[noreturn]] void report_and_exit(int fd, ConnectReport& rep) {
    (void)write_all(fd, &rep, sizeof rep);
    ::_exit(0);
}

void set_note(ConnectReport& rep, const char* note) {
    std::strncpy(rep.note, note, sizeof rep.note - 1);
}

// The probe, run in the forked child.
[[noreturn]] void connect_child(pid_t parent, int ns_fd, int report_fd, const Credentials& creds,
                                const sockaddr_storage& addr, socklen_t addr_len, Millis timeout) {
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, report_fd});
    ConnectReport rep{};
    rep.outcome = static_cast<int>(Outcome::HarnessError);
    if (!enter_netns(ns_fd)) {
        rep.error = errno;
        set_note(rep, "setns");
        report_and_exit(report_fd, rep);
    }
    if (!become(creds)) {
        rep.error = errno;
        set_note(rep, "setgroups/setresgid/setresuid");
        report_and_exit(report_fd, rep);
    }
    if (!die_with_parent(parent, SIGKILL))
        ::_exit(1);
    const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rep.error = errno;
        set_note(rep, "socket");
        report_and_exit(report_fd, rep);
    }
    const auto start = Clock::now();
    const auto deadline = start + timeout;
    int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len);
    int error = rc == 0 ? 0 : errno;
    if (rc != 0 && error == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        int r = 0;
        do {
            const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
            r = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
        } while (r < 0 && errno == EINTR);
        if (r == 0) {
            error = ETIMEDOUT;
            rep.outcome = static_cast<int>(Outcome::TimedOut);
        } else {
            socklen_t len = sizeof error;
            if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
                error = errno;
        }
    }
    rep.elapsed_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    if (rep.outcome == static_cast<int>(Outcome::TimedOut)) {
        rep.error = 0;
        report_and_exit(report_fd, rep);
    }
    if (error == ECONNREFUSED) {
        rep.outcome = static_cast<int>(Outcome::Refused);
        rep.error = error;
        report_and_exit(report_fd, rep);
    }
    if (error != 0) {
        rep.outcome = static_cast<int>(Outcome::OtherErrno);
        rep.error = error;
        report_and_exit(report_fd, rep);
    }
    rep.outcome = static_cast<int>(Outcome::Connected);
    // The greeting: everything up to the first LF, read before the deadline.
    std::size_t used = 0;
    while (used < sizeof rep.greeting - 1) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            break;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        const ssize_t n = ::read(fd, rep.greeting + used, sizeof rep.greeting - 1 - used);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        used += static_cast<std::size_t>(n);
        if (std::memchr(rep.greeting, '\n', used) != nullptr)
            break;
    }
    rep.greeting[used] = '\0';
    if (char* eol = std::strpbrk(rep.greeting, "\r\n"))
        *eol = '\0';
    static const char kQuit[] = "QUIT\r\n";
    (void)::send(fd, kQuit, sizeof kQuit - 1, MSG_NOSIGNAL);
    ::close(fd);
    report_and_exit(report_fd, rep);
}

Result<std::pair<sockaddr_storage, socklen_t>> parse_address(const std::string& address,
                                                             std::uint16_t port) {
    sockaddr_storage ss{};
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    if (::inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return std::pair{ss, static_cast<socklen_t>(sizeof(sockaddr_in))};
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (::inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return std::pair{ss, static_cast<socklen_t>(sizeof(sockaddr_in6))};
    }
    return fail(EINVAL, "not an IPv4 or IPv6 address: " + address);
}

}  // namespace

ConnectResult connect_as(const Netns& ns, const Credentials& creds, const std::string& address,
                         std::uint16_t port, Millis timeout) {
    ConnectResult result;
    auto addr = parse_address(address, port);
    if (!addr) {
        result.note = addr.error().message();
        return result;
    }
    auto pipe = make_pipe();
    if (!pipe) {
        result.note = "harness setup failed";
        return result;
    }
    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        connect_child(parent, ns.fd(), pipe->write.get(), creds, addr->first, addr->second,
                      timeout);
    });
    if (!child) {
        result.error = child.error().code;
        result.note = "fork";
        return result;
    }
    pipe->write.reset();
    ConnectReport rep{};
    if (!read_exact(pipe->read.get(), &rep, sizeof rep, Clock::now() + 2 * timeout + 5s)) {
        result.note = "no report from the probe child";
        return result;
    }
    (void)child->wait_for(5s);
    result.outcome = static_cast<Outcome>(rep.outcome);
    result.error = rep.error;
    result.elapsed = std::chrono::duration_cast<Millis>(std::chrono::microseconds(rep.elapsed_us));
    result.greeting = rep.greeting;
    result.note = rep.note;
    return result;
}

// ---- SmtpListener -------------------------------------------------------------------

void SmtpListener::SharedCounter::operator()(std::atomic<std::uint64_t>* p) const noexcept {
    if (p == nullptr)
        return;
    p->~atomic();
    ::munmap(p, sizeof *p);
}

std::uint64_t SmtpListener::accepted() const {
    return counter_ ? counter_->load() : 0;
}

namespace {

// The server loop, run in the forked child. Reports readiness ('R') or a failure
// (text) on ready_fd before serving.
[[noreturn]] void listener_child(pid_t parent, int ns_fd, int ready_fd,
                                 const std::vector<std::uint16_t>& ports,
                                 const std::string& greeting,
                                 std::atomic<std::uint64_t>* accepted) {
    auto die = [&](const char* what) {
        char msg[128];
        (void)std::snprintf(msg, sizeof msg, "%s: %s", what, ::strerrordesc_np(errno));
        write_text(ready_fd, msg);
        ::_exit(1);
    };
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, ready_fd});
    if (!enter_netns(ns_fd))
        die("setns");
    if (!die_with_parent(parent, SIGKILL))
        ::_exit(1);
    ::close(ns_fd);
    std::vector<pollfd> fds;
    for (const std::uint16_t port : ports) {
        for (const int family : {AF_INET, AF_INET6}) {
            const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0)
                die("socket");
            const int one = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            sockaddr_storage ss{};
            socklen_t len = 0;
            if (family == AF_INET) {
                auto* a = reinterpret_cast<sockaddr_in*>(&ss);
                a->sin_family = AF_INET;
                a->sin_port = htons(port);
                a->sin_addr.s_addr = htonl(INADDR_ANY);
                len = sizeof *a;
            } else {
                ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
                auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
                a->sin6_family = AF_INET6;
                a->sin6_port = htons(port);
                a->sin6_addr = in6addr_any;
                len = sizeof *a;
            }
            if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
                die("bind");
            if (::listen(fd, 1024) != 0)
                die("listen");
            fds.push_back(pollfd{fd, POLLIN, 0});
        }
    }
    const std::size_t listeners = fds.size();
    std::vector<std::string> inbox(listeners);  // per fd: text received so far
    write_text(ready_fd, "R");
    ::close(ready_fd);
    while (true) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            ::_exit(2);
        }
        for (std::size_t i = 0; i < listeners; ++i) {
            if ((fds[i].revents & POLLIN) == 0)
                continue;
            while (true) {
                const int client =
                    ::accept4(fds[i].fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (client < 0)
                    break;
                accepted->fetch_add(1);
                (void)::send(client, greeting.data(), greeting.size(), MSG_NOSIGNAL);
                fds.push_back(pollfd{client, POLLIN, 0});
                inbox.emplace_back();
            }
        }
        for (std::size_t i = listeners; i < fds.size(); ++i) {
            if (fds[i].revents == 0)
                continue;
            char buf[1024];
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            bool done = n <= 0;
            if (n > 0) {
                inbox[i].append(buf, static_cast<std::size_t>(n));
                for (char& c : inbox[i])
                    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                if (inbox[i].find("QUIT") != std::string::npos) {
                    static const char kBye[] = "221 2.0.0 Bye\r\n";
                    (void)::send(fds[i].fd, kBye, sizeof kBye - 1, MSG_NOSIGNAL);
                    done = true;
                } else if (inbox[i].size() > 4096) {
                    inbox[i].erase(0, inbox[i].size() - 16);
                }
            }
            if (done) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
        for (std::size_t i = fds.size(); i-- > listeners;) {
            if (fds[i].fd >= 0)
                continue;
            fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
            inbox.erase(inbox.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }
}

}  // namespace

Result<SmtpListener> SmtpListener::start(const Netns& ns, const std::vector<std::uint16_t>& ports,
                                         const std::string& host) {
    void* mem = ::mmap(nullptr, sizeof(std::atomic<std::uint64_t>), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return fail(errno, "mmap");
    CounterPtr counter(new (mem) std::atomic<std::uint64_t>(0));
    auto pipe = make_pipe();
    if (!pipe)
        return std::unexpected(pipe.error());
    const std::string greeting = greeting_for(host) + "\r\n";
    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        listener_child(parent, ns.fd(), pipe->write.get(), ports, greeting, counter.get());
    });
    if (!child)
        return std::unexpected(child.error());
    pipe->write.reset();
    std::string answer;
    (void)read_until_eof(pipe->read.get(), answer, Clock::now() + 10s);
    if (answer != "R") {
        return fail(0, "SMTP listener in " + ns.name(), answer.empty() ? "no answer" : answer);
    }
    return SmtpListener(std::move(*child), std::move(counter));
}

// ---- Topology -----------------------------------------------------------------------

Result<Topology> Topology::create() {
    auto server = Netns::create();
    if (!server)
        return std::unexpected(server.error());
    auto remote = Netns::create();
    if (!remote)
        return std::unexpected(remote.error());
    const std::string& s = server->name();
    const std::string& r = remote->name();
    // The veth pair is created inside the server namespace with its peer moved to the
    // remote one at once: no interface ever appears in the host's namespace.
    const std::vector<std::vector<std::string>> steps = {
        {"ip", "-n", s, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns",
         r},
        {"ip", "-n", s, "link", "set", "lo", "up"},
        {"ip", "-n", r, "link", "set", "lo", "up"},
        {"ip", "-n", s, "addr", "add", "192.0.2.1/24", "dev", "veth0"},
        {"ip", "-n", s, "addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
        {"ip", "-n", s, "addr", "add", "198.51.100.1/24", "dev", "lo"},
        {"ip", "-n", r, "addr", "add", "192.0.2.25/24", "dev", "veth0"},
        {"ip", "-n", r, "addr", "add", "2001:db8::25/64", "dev", "veth0", "nodad"},
        {"ip", "-n", s, "link", "set", "veth0", "up"},
        {"ip", "-n", r, "link", "set", "veth0", "up"},
    };
    for (const auto& step : steps) {
        const RunResult res = run(nullptr, step);
        if (res.exit_code != 0) {
            std::string cmd;
            for (const auto& a : step)
                cmd += (cmd.empty() ? "" : " ") + a;
            return fail(0, cmd, res.describe());
        }
    }
    return Topology(std::move(*server), std::move(*remote));
}

// ---- Daemon -------------------------------------------------------------------------

Result<Daemon> Daemon::start(const Netns& ns, DaemonArgs args, Millis ready_timeout) {
    const std::string& w = args.work_dir;
    std::filesystem::create_directories(w + "/state");
    std::filesystem::create_directories(w + "/virtual");
    const std::string log_path = w + "/smtpfenced.log";
    std::vector<std::string> argv = {smtpfenced_path(),    "--foreground",       "--table",
                                     args.table,           "--config",           args.config,
                                     "--control-socket",   w + "/control.sock",  "--state-dir",
                                     w + "/state",         "--virtual-dir",      w + "/virtual",
                                     "--metrics-textfile", w + "/smtpfence.prom"};
    if (!args.passwd.empty())
        argv.insert(argv.end(), {"--passwd", args.passwd});
    if (!args.group.empty())
        argv.insert(argv.end(), {"--group", args.group});
    argv.insert(argv.end(), args.extra.begin(), args.extra.end());
    const Argv c_argv(argv);
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        // getenv finds the first: a name args.env sets is left out here.
        const std::string_view name = std::string_view(*e).substr(0, std::strcspn(*e, "="));
        if (std::none_of(args.env.begin(), args.env.end(), [&](const std::string& set) {
                return set.starts_with(name) && set.size() > name.size() && set[name.size()] == '=';
            })) {
            env.emplace_back(*e);
        }
    }
    env.insert(env.end(), args.env.begin(), args.env.end());
    const Argv c_env(env);

    UniqueFd log_fd(
        ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644));
    if (!log_fd.valid())
        return fail(errno, "open " + log_path);
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));

    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        ::setpgid(0, 0);
        ::dup2(log_fd.get(), STDOUT_FILENO);
        ::dup2(args.stderr_fd >= 0 ? args.stderr_fd : log_fd.get(), STDERR_FILENO);
        if (devnull.valid())
            ::dup2(devnull.get(), STDIN_FILENO);
        if (!enter_netns(ns.fd()) || !testing::enter_mountns(args.mount_ns)) {
            write_text(STDERR_FILENO, "harness: setns failed\n");
            return 126;
        }
        // SIGTERM: the daemon's own orderly exit, which also stops its worker.
        if (!die_with_parent(parent, SIGTERM))
            return 1;
        close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        ::execve(c_argv.ptrs[0], c_argv.ptrs.data(), c_env.ptrs.data());
        write_text(STDERR_FILENO, "harness: exec smtpfenced failed\n");
        return 127;
    });
    if (!child)
        return std::unexpected(child.error());
    Daemon daemon(std::move(args), log_path, std::move(*child));

    auto engine = NsEngine::open(ns);
    if (!engine)
        return std::unexpected(engine.error());
    std::string last_error;
    const bool ready = wait_until(
        [&] {
            if (!daemon.running())
                return true;
            if (!daemon.args_.ready_log_text.empty())
                return daemon.log().find(daemon.args_.ready_log_text) != std::string::npos;
            auto exists = (*engine)->engine().table_exists(daemon.args_.table);
            if (!exists)
                last_error = exists.error().message();
            return exists && *exists;
        },
        ready_timeout, 20ms);
    if (!daemon.running()) {
        const auto status = daemon.child_.status();
        return fail(0,
                    "smtpfenced " + (status ? describe_status(*status) : std::string("exited")) +
                        " before creating table inet " + daemon.args_.table,
                    "log:\n" + daemon.log());
    }
    if (!ready) {
        return fail(ETIMEDOUT,
                    "smtpfenced did not create table inet " + daemon.args_.table +
                        (daemon.args_.ready_log_text.empty()
                             ? std::string()
                             : " (nor log \"" + daemon.args_.ready_log_text + "\")") +
                        " within " + std::to_string(ready_timeout.count()) + " ms " + last_error,
                    "log:\n" + daemon.log());
    }
    return daemon;
}

Result<int> Daemon::stop(Millis timeout) {
    if (!child_.valid())
        return fail(ESRCH, "smtpfenced not started");
    if (child_.running())
        child_.signal(SIGTERM);
    if (auto status = child_.wait_for(timeout))
        return *status;
    child_.kill_and_reap();
    return fail(ETIMEDOUT, "smtpfenced did not exit within " + std::to_string(timeout.count()) +
                               " ms of SIGTERM (killed)");
}

Daemon::~Daemon() {
    if (child_.valid() && child_.running())
        (void)stop(5s);  // NOLINT(bugprone-unused-return-value): best effort in a destructor
}

// ---- ConnectFlood -------------------------------------------------------------------

namespace {

[[noreturn]] void flood_child(pid_t parent, int ns_fd, int stop_fd, int result_fd,
                              const Credentials& creds, const sockaddr_storage& addr,
                              socklen_t addr_len, std::uint64_t min_attempts) {
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, stop_fd, result_fd});
    if (!enter_netns(ns_fd) || !become(creds)) {
        write_text(result_fd, "E");
        ::_exit(1);
    }
    if (!die_with_parent(parent, SIGKILL))
        ::_exit(1);
    ConnectFlood::Counts counts;
    const auto give_up = Clock::now() + 120s;  // never outlive a hung test for long
    bool stop = false;
    for (std::uint64_t i = 0;; ++i) {
        const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            ++counts.other;
            counts.last_other_errno = errno;
        } else {
            // A blocking connect bounded by SO_SNDTIMEO (then EINPROGRESS, counted as
            // "other"): long enough for one SYN retransmission (1 s) to be answered.
            const timeval tv{5, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            const auto start = Clock::now();
            const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len);
            const int error = errno;
            const auto took = Clock::now() - start;
            counts.slowest_us = std::max<std::int64_t>(
                counts.slowest_us,
                std::chrono::duration_cast<std::chrono::microseconds>(took).count());
            if (rc == 0) {
                ++counts.connected;
            } else if (error == ECONNREFUSED) {
                ++counts.refused;
                if (took >= ConnectFlood::kSlow)
                    ++counts.slow_refused;
            } else {
                ++counts.other;
                counts.last_other_errno = error;
            }
            ::close(fd);
        }
        if (i == 0)
            write_text(result_fd, "R");
        if (i % 32 == 0 && !stop) {
            pollfd p{stop_fd, POLLIN, 0};
            stop = ::poll(&p, 1, 0) > 0;  // POLLHUP once the parent closed its end
        }
        if ((stop && i + 1 >= min_attempts) || Clock::now() > give_up)
            break;
    }
    (void)write_all(result_fd, &counts, sizeof counts);
    ::_exit(0);
}

}  // namespace

Result<ConnectFlood> ConnectFlood::start(const Netns& ns, const Credentials& creds,
                                         const std::string& address, std::uint16_t port,
                                         std::uint64_t min_attempts) {
    auto addr = parse_address(address, port);
    if (!addr)
        return std::unexpected(addr.error());
    auto stop = make_pipe();
    auto results = make_pipe();
    if (!stop || !results)
        return fail(errno, "pipe2");
    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        flood_child(parent, ns.fd(), stop->read.get(), results->write.get(), creds, addr->first,
                    addr->second, min_attempts);
    });
    if (!child)
        return std::unexpected(child.error());
    results->write.reset();
    stop->read.reset();
    char ready = 0;
    if (!read_exact(results->read.get(), &ready, 1, Clock::now() + 10s) || ready != 'R') {
        return fail(0, "connect flood did not start");
    }
    return ConnectFlood(std::move(*child), std::move(stop->write), std::move(results->read));
}

Result<ConnectFlood::Counts> ConnectFlood::finish(Millis timeout) {
    stop_.reset();
    Counts counts;
    if (!read_exact(results_.get(), &counts, sizeof counts, Clock::now() + timeout)) {
        return fail(ETIMEDOUT, "connect flood did not report");
    }
    (void)child_.wait_for(5s);
    return counts;
}

Result<std::uint64_t> tcp_ext_counter(const Netns& ns, const std::string& name) {
    const RunResult r = run(ns, {"cat", "/proc/net/netstat"});
    if (r.exit_code != 0)
        return fail(0, "read /proc/net/netstat", r.describe());
    // Pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 1 2 ...".
    std::istringstream lines(r.out);
    std::string names;
    std::string values;
    while (std::getline(lines, names) && std::getline(lines, values)) {
        if (!names.starts_with("TcpExt:"))
            continue;
        std::istringstream n(names);
        std::istringstream v(values);
        std::string key;
        std::string value;
        while (n >> key && v >> value) {
            if (key == name)
                return std::stoull(value);
        }
    }
    return fail(ENOENT, "TcpExt counter " + name, "not in /proc/net/netstat");
}

// ---- nft ----------------------------------------------------------------------------

Result<std::string> nft_list_table(const Netns& ns, const std::string& table) {
    const RunResult r = run(ns, {"nft", "list", "table", "inet", table});
    if (r.exit_code != 0)
        return fail(0, "nft list table inet " + table, r.describe());
    std::string text = r.out;
    // nft prints this when iptables-nft also manages the table; it is not part of
    // the table's text.
    if (text.rfind("# Warning: table", 0) == 0) {
        const std::size_t eol = text.find('\n');
        text.erase(0, eol == std::string::npos ? text.size() : eol + 1);
    }
    return text;
}

}  // namespace smtpfence::itest
