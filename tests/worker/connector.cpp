// sft-connector: the process the worker tests make attempts with. It is the
// executable the worker must name (exe), run from the working directory the test
// chose (cwd), so every field of an attempt record is known in advance.
//
//   sft-connector [--count N] [--duration-ms D] [--interval-us U] [--bind-port P]
//                 [--timeout-ms T] [--exit-at-once | --parallel] [--tag TEXT]...
//                 ADDRESS PORT
//
// Default: N blocking connects one after the other, each bounded by T ms
// (SO_SNDTIMEO), then one line on stdout:
//   refused=R connected=C timed_out=T other=O last_errno=E slowest_us=S
// --exit-at-once: one non-blocking connect, then _exit at once without closing the
// socket or waiting for the answer (exit 0 when connect() said EINPROGRESS or
// ECONNREFUSED, 3 otherwise): the SYN may still sit in the worker's queue when the
// process is gone.
// --parallel: the N connects at once: N non-blocking sockets all connecting before
// any answer is awaited (so N SYNs can wait in the queue together), then each one's
// outcome within T ms; the same summary line.
// --duration-ms: the serial connects stop once D ms have passed (N is then a maximum);
// the summary's counts say how many were made.
// --tag: ignored; puts any bytes the test chooses on the command line the worker reads.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
    std::uint64_t count = 1;
    std::uint64_t interval_us = 0;
    std::uint64_t duration_ms = 0;  // 0: no time limit
    std::uint16_t bind_port = 0;
    int timeout_ms = 5000;
    bool exit_at_once = false;
    bool parallel = false;
    std::string address;
    std::uint16_t port = 0;
};

[[noreturn]] void usage(const char* why) {
    (void)std::fprintf(
        stderr,
        "sft-connector: %s\nusage: sft-connector [--count N] [--duration-ms D] "
        "[--interval-us U] [--bind-port P] [--timeout-ms T] [--exit-at-once | --parallel] ADDRESS "
        "PORT\n",
        why);
    // exit() is unsafe while other threads run (it runs the atexit handlers and static
    // destructors); sft-connector has one thread.
    // NOLINTNEXTLINE(concurrency-mt-unsafe)
    std::exit(2);
}

std::uint64_t number(const char* text, std::uint64_t max) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v > max)
        usage("bad number");
    return v;
}

Options parse(int argc, char** argv) {
    Options o;
    int positional = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const auto value = [&]() -> const char* {
            if (i + 1 >= argc)
                usage("missing value");
            return argv[++i];
        };
        if (arg == "--count") {
            o.count = number(value(), 100000000);
        } else if (arg == "--duration-ms") {
            o.duration_ms = number(value(), 3600000);
        } else if (arg == "--interval-us") {
            o.interval_us = number(value(), 10000000);
        } else if (arg == "--bind-port") {
            o.bind_port = static_cast<std::uint16_t>(number(value(), 65535));
        } else if (arg == "--timeout-ms") {
            o.timeout_ms = static_cast<int>(number(value(), 600000));
        } else if (arg == "--exit-at-once") {
            o.exit_at_once = true;
        } else if (arg == "--parallel") {
            o.parallel = true;
        } else if (arg == "--tag") {
            (void)value();
        } else if (positional == 0) {
            o.address = arg;
            ++positional;
        } else if (positional == 1) {
            o.port = static_cast<std::uint16_t>(number(arg.c_str(), 65535));
            ++positional;
        } else {
            usage("too many arguments");
        }
    }
    if (positional != 2)
        usage("ADDRESS and PORT are required");
    return o;
}

struct Target {
    sockaddr_storage addr{};
    socklen_t len = 0;
    int family = AF_UNSPEC;
};

Target target(const Options& o) {
    Target t;
    if (o.address.find(':') != std::string::npos) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&t.addr);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(o.port);
        if (inet_pton(AF_INET6, o.address.c_str(), &a->sin6_addr) != 1)
            usage("bad IPv6 address");
        t.len = sizeof *a;
        t.family = AF_INET6;
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&t.addr);
        a->sin_family = AF_INET;
        a->sin_port = htons(o.port);
        if (inet_pton(AF_INET, o.address.c_str(), &a->sin_addr) != 1)
            usage("bad IPv4 address");
        t.len = sizeof *a;
        t.family = AF_INET;
    }
    return t;
}

// Binds the fixed source port the test expects to find in the record.
bool bind_source_port(int fd, int family, std::uint16_t port) {
    const int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage local{};
    socklen_t len = 0;
    if (family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&local);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_any;
        len = sizeof *a;
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&local);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof *a;
    }
    return bind(fd, reinterpret_cast<sockaddr*>(&local), len) == 0;
}

[[noreturn]] void connect_and_exit(const Options& o, const Target& t) {
    const int fd = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        _exit(4);
    if (o.bind_port != 0 && !bind_source_port(fd, t.family, o.bind_port))
        _exit(5);
    const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&t.addr), t.len);
    // No close(), no output: the exit itself closes the socket, as early as possible.
    _exit(rc != 0 && (errno == EINPROGRESS || errno == ECONNREFUSED) ? 0 : 3);
}

struct Tally {
    std::uint64_t refused = 0;
    std::uint64_t connected = 0;
    std::uint64_t timed_out = 0;
    std::uint64_t other = 0;
    int last_errno = 0;
    std::int64_t slowest_us = 0;

    void add_error(int error) {
        if (error == 0) {
            ++connected;
        } else if (error == ECONNREFUSED) {
            ++refused;
        } else if (error == EINPROGRESS || error == EAGAIN) {
            ++timed_out;
        } else {
            ++other;
            last_errno = error;
        }
    }
    void print() const {
        std::printf(
            "refused=%llu connected=%llu timed_out=%llu other=%llu last_errno=%d "
            "slowest_us=%lld\n",
            static_cast<unsigned long long>(refused), static_cast<unsigned long long>(connected),
            static_cast<unsigned long long>(timed_out), static_cast<unsigned long long>(other),
            last_errno, static_cast<long long>(slowest_us));
    }
};

// All N connects in flight together; each socket stays open until its answer came.
Tally connect_in_parallel(const Options& o, const Target& t) {
    Tally tally;
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < o.count + 64) {
        lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, o.count + 64);
        (void)setrlimit(RLIMIT_NOFILE, &lim);
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<pollfd> pending;
    for (std::uint64_t i = 0; i < o.count; ++i) {
        const int fd = socket(t.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            tally.add_error(errno == EINPROGRESS ? EIO : errno);
            continue;
        }
        if (connect(fd, reinterpret_cast<const sockaddr*>(&t.addr), t.len) == 0) {
            tally.add_error(0);
            close(fd);
        } else if (errno != EINPROGRESS) {
            tally.add_error(errno);
            close(fd);
        } else {
            pending.push_back(pollfd{fd, POLLOUT, 0});
        }
    }
    const auto deadline = start + std::chrono::milliseconds(o.timeout_ms);
    while (!pending.empty()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                              deadline - std::chrono::steady_clock::now())
                              .count();
        if (left <= 0)
            break;
        const int ready = poll(pending.data(), pending.size(), static_cast<int>(left));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            break;
        const auto now = std::chrono::steady_clock::now();
        for (std::size_t i = pending.size(); i-- > 0;) {
            if (pending[i].revents == 0)
                continue;
            int error = 0;
            socklen_t len = sizeof error;
            if (getsockopt(pending[i].fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
                error = errno;
            tally.add_error(error);
            tally.slowest_us = std::max<std::int64_t>(
                tally.slowest_us,
                std::chrono::duration_cast<std::chrono::microseconds>(now - start).count());
            close(pending[i].fd);
            pending[i] = pending.back();
            pending.pop_back();
        }
    }
    for (const pollfd& p : pending) {
        tally.add_error(EINPROGRESS);  // no answer within the timeout
        close(p.fd);
    }
    return tally;
}

}  // namespace

int main(int argc, char** argv) {
    const Options o = parse(argc, argv);
    const Target t = target(o);
    if (o.exit_at_once)
        connect_and_exit(o, t);

    if (o.parallel) {
        connect_in_parallel(o, t).print();
        return 0;
    }
    Tally tally;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(o.duration_ms);
    for (std::uint64_t i = 0; i < o.count; ++i) {
        if (o.duration_ms > 0 && std::chrono::steady_clock::now() >= until)
            break;
        if (i > 0 && o.interval_us > 0)
            std::this_thread::sleep_for(std::chrono::microseconds(o.interval_us));
        const int fd = socket(t.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            tally.add_error(errno == EINPROGRESS ? EIO : errno);
            continue;
        }
        if (o.bind_port != 0 && !bind_source_port(fd, t.family, o.bind_port)) {
            tally.add_error(errno == EINPROGRESS ? EIO : errno);
            close(fd);
            continue;
        }
        const timeval tv{o.timeout_ms / 1000, static_cast<suseconds_t>(o.timeout_ms % 1000) * 1000};
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        const auto start = std::chrono::steady_clock::now();
        const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&t.addr), t.len);
        const int error = rc == 0 ? 0 : errno;
        const auto took = std::chrono::steady_clock::now() - start;
        tally.slowest_us = std::max<std::int64_t>(
            tally.slowest_us, std::chrono::duration_cast<std::chrono::microseconds>(took).count());
        tally.add_error(error);  // EINPROGRESS/EAGAIN here: SO_SNDTIMEO passed
        close(fd);
    }
    tally.print();
    return 0;
}
