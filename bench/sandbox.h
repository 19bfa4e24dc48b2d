// The benchmarks' setting: anonymous network namespaces (tests/support/netns.h), so
// that nothing is left behind however a benchmark ends, SIGINT and SIGKILL included,
// with the processes they run in them: every child is started with PR_SET_PDEATHSIG
// so it dies with the benchmark too. Nothing here touches the host's own namespace.
//
// A remote namespace holds 192.0.2.25 (TEST-NET-1) on lo and a listener on port 25:
// only a SYN that got past the firewall under test reaches it. Each firewall under test
// gets a client namespace of its own, linked to the remote by a veth pair
// (198.18.N.0/24, RFC 2544's benchmarking range).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "tests/support/child.h"
#include "tests/support/netns.h"
#include "tests/support/run.h"

namespace smtpfence::bench {

using testing::Child;
using testing::Millis;
using testing::Netns;
using testing::NsEngine;

constexpr const char* kRemoteAddr = "192.0.2.25";
constexpr std::uint16_t kSmtpPort = 25;

// A memfd holding text, to feed a child's stdin (nft -f /dev/stdin, iptables-restore)
// without a temporary file to clean up.
[[nodiscard]] Result<UniqueFd> text_fd(std::string_view text);

// Runs argv inside ns (testing::run), stdin from input (rewound to its start) or
// /dev/null when input is -1; a command that is missing, fails or runs longer than
// two minutes is an error naming it.
[[nodiscard]] Result<void> run_ok(const Netns& ns, const std::vector<std::string>& argv,
                                  int input = -1);
// run_ok with text on stdin.
[[nodiscard]] Result<void> run_text(const Netns& ns, const std::vector<std::string>& argv,
                                    const std::string& text);

// Accepts and closes every connection to addr:port inside ns: the "remote mail server".
// Only a SYN that got past the firewall under test can reach it.
[[nodiscard]] Result<Child> start_listener(const Netns& ns, const std::string& addr,
                                           std::uint16_t port);

// The remote end of every client's link: 192.0.2.25 and its listener.
class Remote {
  public:
    [[nodiscard]] static Result<Remote> create();
    // A new namespace whose route to 192.0.2.0/24 leads over its own veth pair here.
    [[nodiscard]] Result<Netns> add_client();
    [[nodiscard]] const Netns& ns() const { return ns_; }

  private:
    Remote(Netns ns, Child listener) : ns_(std::move(ns)), listener_(std::move(listener)) {}
    Netns ns_;
    Child listener_;
    int links_ = 0;
};

// CPU time of the calling process: the scheduler's exact runtime, which on a shared
// machine leaves out the time other processes held the CPU.
[[nodiscard]] std::int64_t cpu_time_ns();

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
[[nodiscard]] Result<ProbeCounts> probe_connects(const Netns& ns, const ProbeSpec& spec,
                                                 Millis watchdog = Millis(10000));

}  // namespace smtpfence::bench
