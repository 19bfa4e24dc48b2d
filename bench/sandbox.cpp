#include "bench/sandbox.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <ctime>

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;

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

std::string command_line(const std::vector<std::string>& argv) {
    std::string cmd;
    for (const std::string& a : argv) {
        cmd += (cmd.empty() ? "" : " ") + a;
    }
    return cmd;
}

}  // namespace

Result<UniqueFd> text_fd(std::string_view text) {
    UniqueFd fd(::memfd_create("smtpfence-bench", MFD_CLOEXEC));
    if (!fd.valid()) {
        return fail(errno, "memfd_create");
    }
    if (!testing::write_all(fd.get(), text.data(), text.size())) {
        return fail(errno, "write memfd");
    }
    return fd;
}

Result<void> run_ok(const Netns& ns, const std::vector<std::string>& argv, int input) {
    if (argv.empty()) {
        return fail(EINVAL, "run an empty command");
    }
    if (testing::find_program(argv[0]).empty()) {
        return fail(ENOENT, "run " + argv[0], "not found in PATH or the sbin directories");
    }
    testing::RunOptions options;
    options.timeout = Millis(120000);
    options.input = input;
    const testing::RunResult r = testing::run(&ns, argv, options);
    if (r.timed_out) {
        return fail(ETIMEDOUT, "run " + argv[0],
                    "killed after " + std::to_string(options.timeout.count()) + " ms");
    }
    if (r.exit_code != 0) {
        std::string out = r.describe();
        while (!out.empty() && out.back() == '\n') {
            out.pop_back();
        }
        return fail(0, command_line(argv), out);
    }
    return {};
}

Result<void> run_text(const Netns& ns, const std::vector<std::string>& argv,
                      const std::string& text) {
    auto fd = text_fd(text);
    if (!fd) {
        return std::unexpected(fd.error());
    }
    return run_ok(ns, argv, fd->get());
}

Result<Child> start_listener(const Netns& ns, const std::string& addr, std::uint16_t port) {
    auto sa = ipv4(addr, port);
    if (!sa) {
        return std::unexpected(sa.error());
    }
    auto pipe = testing::make_pipe();
    if (!pipe) {
        return std::unexpected(pipe.error());
    }
    auto child = testing::spawn_in(ns, [&]() -> int {
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
    int err = 0;
    if (!testing::read_exact(pipe->read.get(), &err, sizeof err, Clock::now() + Millis(5000))) {
        return fail(EIO, what, "the listener process did not report back");
    }
    if (err != 0) {
        return fail(err, what);
    }
    return std::move(*child);
}

Result<Remote> Remote::create() {
    auto ns = Netns::create_anonymous();
    if (!ns) {
        return std::unexpected(ns.error());
    }
    if (auto r = run_text(*ns, {"ip", "-batch", "-"},
                          std::string("link set lo up\naddr add ") + kRemoteAddr + "/32 dev lo\n");
        !r) {
        return std::unexpected(r.error().wrap("set up the remote namespace"));
    }
    auto listener = start_listener(*ns, kRemoteAddr, kSmtpPort);
    if (!listener) {
        return std::unexpected(listener.error());
    }
    return Remote(std::move(*ns), std::move(*listener));
}

Result<Netns> Remote::add_client() {
    const int n = ++links_;
    if (n > 250) {
        return fail(ENOSPC, "add a client namespace", "only 250 links are numbered");
    }
    auto client = Netns::create_anonymous();
    if (!client) {
        return std::unexpected(client.error());
    }
    const std::string num = std::to_string(n);
    const std::string net = "198.18." + num + ".";
    // `ip link ... netns PATH` opens the path: our descriptor of the client namespace.
    if (auto r = run_text(ns_, {"ip", "-batch", "-"},
                          "link add r" + num + " type veth peer name c" + num + " netns " +
                              client->path() + "\naddr add " + net + "1/24 dev r" + num +
                              "\nlink set r" + num + " up\n");
        !r) {
        return std::unexpected(r.error().wrap("link client namespace " + num));
    }
    if (auto r =
            run_text(*client, {"ip", "-batch", "-"},
                     "link set lo up\naddr add " + net + "2/24 dev c" + num + "\nlink set c" + num +
                         " up\nroute add 192.0.2.0/24 via " + net + "1 dev c" + num + "\n");
        !r) {
        return std::unexpected(r.error().wrap("configure client namespace " + num));
    }
    return std::move(*client);
}

std::int64_t cpu_time_ns() {
    timespec ts{};
    (void)::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

Result<ProbeCounts> probe_connects(const Netns& ns, const ProbeSpec& spec, Millis watchdog) {
    auto sa = ipv4(spec.addr, spec.port);
    if (!sa) {
        return std::unexpected(sa.error());
    }
    auto pipe = testing::make_pipe();
    if (!pipe) {
        return std::unexpected(pipe.error());
    }
    const auto budget =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(spec.seconds));
    auto child = testing::spawn_in(ns, [&]() -> int {
        ProbeCounts c;
        // A process of the user, as the kernel sees it: skuid/skgid come from the
        // socket's file credentials, taken at socket() time.
        if (!testing::become({"", spec.uid, spec.gid, {}})) {
            c.setup_errno = errno;
        } else {
            const std::int64_t cpu_start = cpu_time_ns();
            const auto start = Clock::now();
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
                now = Clock::now();
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
    if (!testing::wait_readable(pipe->read.get(), Clock::now() + limit)) {
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
                        (status ? testing::describe_status(*status) : status.error().message()) +
                        ")");
    }
    if (counts.setup_errno != 0) {
        return fail(counts.setup_errno, what + ": take uid/gid " + std::to_string(spec.uid) + "/" +
                                            std::to_string(spec.gid));
    }
    return counts;
}

}  // namespace smtpfence::bench
