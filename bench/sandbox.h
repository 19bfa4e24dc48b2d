// Throwaway network namespaces for the benchmark and the processes it runs in them.
//
// A namespace here is nothing but an open nsfs descriptor: no name under /run/netns,
// no holder process. The kernel frees a network namespace (with its links, nftables
// tables and iptables rules) once the last descriptor, socket and process referring
// to it is gone, so whatever way the benchmark ends (return, error, SIGINT, even
// SIGKILL) nothing is left behind. Every child is started with PR_SET_PDEATHSIG so it
// dies with the benchmark too. Nothing here touches the host's own namespace.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "nft/netlink.h"

namespace smtpfence::bench {

using Millis = std::chrono::milliseconds;

class NetNs {
  public:
    // A new, empty network namespace (loopback down). The calling process enters it
    // only for the unshare() and returns to its own namespace before this returns.
    [[nodiscard]] static Result<NetNs> create();

    [[nodiscard]] int fd() const { return fd_.get(); }
    // "/proc/<our pid>/fd/<fd>": a path `ip link ... netns PATH` opens from a child.
    [[nodiscard]] std::string path() const;

  private:
    explicit NetNs(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
};

// A forked child owned by its parent: SIGKILLed and reaped on destruction.
class Child {
  public:
    Child() = default;
    explicit Child(pid_t pid) : pid_(pid) {}
    Child(Child&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}
    Child& operator=(Child&& other) noexcept;
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child() { kill_and_reap(); }

    [[nodiscard]] pid_t pid() const { return pid_; }
    // Waits for the child to exit; its wait status.
    [[nodiscard]] Result<int> wait();
    void kill_and_reap();

  private:
    pid_t pid_ = -1;
};

// Forks a child that enters ns and runs body; the child exits with body's return value
// (127 when it could not enter the namespace). body runs in the forked copy of this
// single-threaded process: it may use the heap but must end by returning.
template <class Body>
[[nodiscard]] Result<Child> spawn_in(const NetNs& ns, Body&& body);

// Absolute path of a program found in PATH or the sbin directories (root's tools live
// there, and sudo or cron may run us with a short PATH); empty when absent.
[[nodiscard]] std::string find_program(const std::string& name);

// A memfd holding text, to feed a child's stdin (nft -f /dev/stdin, iptables-restore)
// without a temporary file to clean up.
[[nodiscard]] Result<UniqueFd> text_fd(std::string_view text);

struct CommandResult {
    int status = 0;      // wait status
    std::string output;  // stdout and stderr, interleaved
    [[nodiscard]] bool ok() const;
    [[nodiscard]] std::string describe() const;  // "exit 1: <output>"
};

// Runs argv (argv[0] resolved with find_program) inside ns; stdin from input (rewound
// to its start) or /dev/null when input is -1. Killed after timeout.
[[nodiscard]] Result<CommandResult> run_in(const NetNs& ns, const std::vector<std::string>& argv,
                                           int input = -1, Millis timeout = Millis(120000));

// run_in, with a non-zero exit turned into an error naming the command.
[[nodiscard]] Result<void> run_ok(const NetNs& ns, const std::vector<std::string>& argv,
                                  int input = -1);

// A netfilter netlink socket created inside ns: a socket stays bound to the namespace
// it was created in, so one process programs every namespace of the benchmark.
[[nodiscard]] Result<std::unique_ptr<nft::NetlinkSocket>> open_netlink_in(const NetNs& ns);

// Accepts and closes every connection to addr:port inside ns: the "remote mail server".
// Only a SYN that got past the firewall under test can reach it.
[[nodiscard]] Result<Child> start_listener(const NetNs& ns, const std::string& addr,
                                           std::uint16_t port);

struct ProbeSpec {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string addr;
    std::uint16_t port = 25;
    double seconds = 1.0;            // loop until this much time has passed ...
    std::uint64_t max_attempts = 1;  // ... or this many connect()s were made
};

// What a connect() loop saw. Trivially copyable: it crosses a pipe from the child.
struct ProbeCounts {
    std::uint64_t attempts = 0;
    std::uint64_t refused = 0;    // ECONNREFUSED: the firewall's tcp reset
    std::uint64_t connected = 0;  // the remote answered: the SYN got through
    std::uint64_t other = 0;      // any other errno
    int first_other_errno = 0;
    int setup_errno = 0;          // the child could not take the uid/gid (nothing was measured)
    std::int64_t elapsed_ns = 0;  // wall-clock time of the loop
    std::int64_t cpu_ns = 0;      // CPU time the loop's process got meanwhile
};

// Forks a child into ns that takes uid/gid (no supplementary groups) and loops
// socket() + blocking connect() + close(). A connect() that neither fails nor
// succeeds (a SYN dropped somewhere) makes the loop hang: the child is killed after
// seconds + watchdog and that is an error.
[[nodiscard]] Result<ProbeCounts> probe_connects(const NetNs& ns, const ProbeSpec& spec,
                                                 Millis watchdog = Millis(10000));

// ---------------------------------------------------------------------------------
// Implementation of the template.

namespace detail {
// prctl(PR_SET_PDEATHSIG) and setns(ns) in a just-forked child; false when it failed
// (the parent already died, or setns was refused).
bool enter_child(const NetNs& ns, pid_t parent);
}  // namespace detail

template <class Body>
Result<Child> spawn_in(const NetNs& ns, Body&& body) {
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        return fail(errno, "fork");
    }
    if (pid == 0) {
        int code = 127;
        // An exception must not unwind into the parent's code in this copy of it.
        try {
            if (detail::enter_child(ns, parent)) {
                code = body();
            }
        } catch (...) {
            code = 125;
        }
        ::_exit(code);
    }
    return Child(pid);
}

}  // namespace smtpfence::bench
