// The root integration harness: a veth topology of two namespaces, a scripted SMTP
// server, the daemon under test, a connect() probe and a connect flood. Namespaces,
// children, commands and temporary directories come from tests/support, shared with the
// benchmarks. Every resource is owned by an RAII object so a failing assertion never
// leaks a namespace, a process or a temporary directory.
//
// Children are forked from the (single-threaded) test process; each enters its
// namespace with setns(CLONE_NEWNET) before doing anything else. Nothing here touches
// the host's own network namespace, firewall, /etc or users.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "tests/support/child.h"
#include "tests/support/netns.h"
#include "tests/support/run.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::itest {

// The support names, as the suites call them.
using testing::Child;
using testing::Credentials;
using testing::describe_status;
using testing::Millis;
using testing::Netns;
using testing::NsEngine;
using testing::read_file;
using testing::run;
using testing::RunResult;
using testing::TempDir;
using testing::wait_until;
using namespace std::chrono_literals;

// Why the integration tests cannot run here (not root, no network namespaces, no
// nftables), or nullopt when they can. Computed once per process.
[[nodiscard]] std::optional<std::string> skip_reason();

enum class Outcome {
    Connected,     // the three-way handshake completed
    Refused,       // ECONNREFUSED
    TimedOut,      // no answer within the timeout
    OtherErrno,    // any other connect() error
    HarnessError,  // the probe itself failed (setns, credentials, ...)
};
std::ostream& operator<<(std::ostream& os, Outcome outcome);

struct ConnectResult {
    Outcome outcome = Outcome::HarnessError;
    int error = 0;         // errno for Refused / OtherErrno / HarnessError
    std::string greeting;  // first line the server sent, without CR LF (Connected only)
    Millis elapsed{0};     // time connect() took to succeed or fail
    std::string note;      // what failed, for HarnessError
    [[nodiscard]] std::string describe() const;
};

// connect() from inside ns as creds (setgroups + setresgid + setresuid in a forked
// child) to address (IPv4 or IPv6 text) and port, non-blocking with a poll timeout.
// When connected, reads the greeting line, sends QUIT and closes.
[[nodiscard]] ConnectResult connect_as(const Netns& ns, const Credentials& creds,
                                       const std::string& address, std::uint16_t port,
                                       Millis timeout = 3s);

// A scripted SMTP server in a namespace: listens on every port given, IPv4 and IPv6
// (one socket each, IPV6_V6ONLY), answers each connection with
// "220 <host> ESMTP smtpfence-test\r\n" and reads until QUIT or close.
class SmtpListener {
  public:
    [[nodiscard]] static Result<SmtpListener> start(const Netns& ns,
                                                    const std::vector<std::uint16_t>& ports,
                                                    const std::string& host);
    // Connections accepted so far, on all ports.
    [[nodiscard]] std::uint64_t accepted() const;
    [[nodiscard]] static std::string greeting_for(const std::string& host) {
        return "220 " + host + " ESMTP smtpfence-test";
    }

  private:
    struct SharedCounter {
        void operator()(std::atomic<std::uint64_t>* p) const noexcept;
    };
    using CounterPtr = std::unique_ptr<std::atomic<std::uint64_t>, SharedCounter>;
    SmtpListener(Child child, CounterPtr counter)
        : counter_(std::move(counter)), child_(std::move(child)) {}
    CounterPtr counter_;  // in MAP_SHARED memory, written by the child
    Child child_;         // declared last: killed before the counter is unmapped
};

// Two namespaces joined by a veth pair (veth0 on each side):
//   server  192.0.2.1/24   2001:db8::1/64   and 198.51.100.1/24 on lo
//   remote  192.0.2.25/24  2001:db8::25/64
class Topology {
  public:
    [[nodiscard]] static Result<Topology> create();

    static constexpr const char* kServer4 = "192.0.2.1";
    static constexpr const char* kServer6 = "2001:db8::1";
    static constexpr const char* kServerExtra4 = "198.51.100.1";
    static constexpr const char* kRemote4 = "192.0.2.25";
    static constexpr const char* kRemote6 = "2001:db8::25";

    Netns server;
    Netns remote;

  private:
    Topology(Netns s, Netns r) : server(std::move(s)), remote(std::move(r)) {}
};

[[nodiscard]] std::string smtpfenced_path();
[[nodiscard]] std::string smtpfencectl_path();

struct DaemonArgs {
    std::string table;
    std::string config;    // --config
    std::string passwd;    // --passwd (omitted when empty)
    std::string group;     // --group (omitted when empty)
    std::string work_dir;  // control socket, state and virtual dirs and the log go here
    std::vector<std::string> extra;
    std::vector<std::string> env;  // NAME=VALUE set in the daemon's environment
    // A mount namespace to run in (tests/support/journald.h), and a stderr instead of
    // the log file (a journal stream); -1: none.
    int mount_ns = -1;
    int stderr_fd = -1;
    // When set, the daemon is ready once its log holds this text instead of once its
    // table exists (a policy that enforces nothing creates no table).
    std::string ready_log_text;
};

// smtpfenced --foreground inside a namespace, its stdout and stderr in a log file.
// start() returns once the daemon's table exists, or its log holds
// args.ready_log_text (or fails with the log).
class Daemon {
  public:
    [[nodiscard]] static Result<Daemon> start(const Netns& ns, DaemonArgs args,
                                              Millis ready_timeout = 10s);
    Daemon(Daemon&&) noexcept = default;
    Daemon& operator=(Daemon&&) = delete;
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;
    // SIGTERM and a bounded wait, then SIGKILL.
    ~Daemon();

    [[nodiscard]] std::string log() const { return read_file(log_path_); }
    [[nodiscard]] const std::string& log_path() const { return log_path_; }
    [[nodiscard]] const DaemonArgs& args() const { return args_; }
    [[nodiscard]] bool running() { return child_.running(); }
    [[nodiscard]] pid_t pid() const { return child_.pid(); }
    void signal(int sig) const { child_.signal(sig); }
    // SIGTERM, then waits; the wait status, or an error after timeout (then SIGKILL).
    [[nodiscard]] Result<int> stop(Millis timeout = 10s);

  private:
    Daemon(DaemonArgs args, std::string log_path, Child child)
        : args_(std::move(args)), log_path_(std::move(log_path)), child_(std::move(child)) {}
    DaemonArgs args_;
    std::string log_path_;
    Child child_;
};

// A blocked uid's tight connect loop in a child, for checking that no SYN slips
// through while rules are replaced. start() returns once the first connect returned.
class ConnectFlood {
  public:
    struct Counts {
        std::uint64_t connected = 0;
        std::uint64_t refused = 0;
        // Refusals that took longer than kSlow: the first SYN was lost and the
        // kernel's retransmission (after 1 s) was the one refused.
        std::uint64_t slow_refused = 0;
        std::uint64_t other = 0;
        int last_other_errno = 0;
        std::int64_t slowest_us = 0;
    };
    static constexpr Millis kSlow{900};
    [[nodiscard]] static Result<ConnectFlood> start(const Netns& ns, const Credentials& creds,
                                                    const std::string& address, std::uint16_t port,
                                                    std::uint64_t min_attempts);
    // Tells the child to stop (after at least min_attempts) and reads its counts.
    [[nodiscard]] Result<Counts> finish(Millis timeout = 60s);

  private:
    ConnectFlood(Child child, UniqueFd stop, UniqueFd results)
        : stop_(std::move(stop)), results_(std::move(results)), child_(std::move(child)) {}
    UniqueFd stop_;     // closing it tells the child to stop
    UniqueFd results_;  // the child's counts arrive here
    Child child_;
};

// A TcpExt counter of ns's network stack (/proc/net/netstat), e.g. "TCPSynRetrans":
// the SYNs (and listeners' SYN-ACKs) its sockets sent a second time.
[[nodiscard]] Result<std::uint64_t> tcp_ext_counter(const Netns& ns, const std::string& name);

// The text of `nft list table inet TABLE` in ns, with a leading
// "# Warning: table ... is managed by iptables-nft" line removed.
[[nodiscard]] Result<std::string> nft_list_table(const Netns& ns, const std::string& table);

}  // namespace smtpfence::itest
