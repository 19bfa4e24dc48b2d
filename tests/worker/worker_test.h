// The fixture of the worker tests (issue 3): a fresh server/remote namespace pair per
// test (the integration harness's Topology), made-up accounts with homes in the
// test's temporary directory, smtpfenced with its real worker in the server
// namespace, and sft-connector processes run as those accounts from chosen working
// directories. What the tests check is the worker's attempt log against what the
// connectors did and against the kernel's per-uid counters.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "tests/integration/harness.h"

namespace smtpfence::wtest {

using itest::Child;
using itest::Credentials;
using itest::Millis;
using itest::Netns;
using itest::Topology;
using testing::parent_of;
using namespace std::chrono_literals;
using Json = nlohmann::json;

// The accounts of the test's passwd (never the host's). www-data is a shared web
// server account: its attempts are billed by working directory.
inline const Credentials kAlice{"alice", 2001, 2001, {2001}};
inline const Credentials kBob{"bob", 2002, 2002, {2002}};
inline const Credentials kCarol{"carol", 2003, 2003, {2003}};
inline const Credentials kDave{"dave", 2004, 2004, {2004}};
inline const Credentials kWebServer{"www-data", 2033, 2033, {2033}};
inline constexpr std::uint16_t kQueueNum = 2525;
inline constexpr unsigned kExplainPerProcess = 5;

// What one sft-connector run reported (see connector.cpp).
struct ConnectorReport {
    std::uint64_t refused = 0;
    std::uint64_t connected = 0;
    std::uint64_t timed_out = 0;
    std::uint64_t other = 0;
    int last_errno = 0;
    std::int64_t slowest_us = 0;
};

// A connector started in a namespace as some account; its stdout is kept.
class Connector {
  public:
    Connector(Child child, UniqueFd out, std::vector<std::string> argv)
        : argv_(std::move(argv)), out_(std::move(out)), child_(std::move(child)) {}
    [[nodiscard]] pid_t pid() const { return child_.pid(); }
    [[nodiscard]] bool running() { return child_.running(); }
    [[nodiscard]] const std::vector<std::string>& argv() const { return argv_; }
    // Waits for the exit; the wait status and the output, or an error on timeout (the
    // process is killed then).
    struct Exit {
        int status = -1;
        std::string out;
        std::optional<ConnectorReport> report;  // when the summary line parsed
    };
    [[nodiscard]] Result<Exit> wait(Millis timeout);

  private:
    std::vector<std::string> argv_;
    UniqueFd out_;
    Child child_;
};

// The worker's attempt log, read back (attempts.jsonl.1 first, when it exists).
// What STATE_DIR/history.db holds: its records (as the JSON objects the stream writes,
// in the order they were written) and its checkpoint.
struct AttemptLogView {
    std::vector<Json> attempts;
    std::vector<Json> counted;
    std::vector<Json> checkpoints;  // the last one, when there is one
    std::size_t unparsable = 0;     // a checkpoint whose kernel counters are not JSON
    std::string text;               // for failure messages

    // Attempt records plus counted-only counts, per uid.
    [[nodiscard]] std::map<std::uint32_t, std::uint64_t> totals() const;
    [[nodiscard]] std::vector<Json> attempts_of(std::uint32_t uid) const;
};
[[nodiscard]] AttemptLogView read_attempt_log(const std::string& state_dir);
// "{2001: 3, 2002: 1}", for failure messages.
[[nodiscard]] std::string describe_counts(const std::map<std::uint32_t, std::uint64_t>& m);

// The kernel's per-uid packet counters of set `blocked`, read with `nft -j` in ns (not
// with the project's own engine, so the two are checked against each other).
[[nodiscard]] Result<std::map<std::uint32_t, std::uint64_t>> kernel_blocked(
    const Netns& ns, const std::string& table);

// The pids of the processes in ns whose executable is exe.
[[nodiscard]] std::vector<pid_t> processes_running(const Netns& ns, const std::string& exe);
// The line of /proc/net/netfilter/nfnetlink_queue for queue num in ns, "" when nobody
// is bound to it.
[[nodiscard]] std::string queue_binding(const Netns& ns, std::uint16_t num);
// Packets waiting in that queue (its queue_total field), 0 when nobody is bound.
[[nodiscard]] std::uint64_t queue_waiting(const Netns& ns, std::uint16_t num);

[[nodiscard]] std::string worker_path();
[[nodiscard]] std::string connector_build_path();

// One part of a flood: `count` blocking connects by one process.
struct FloodPart {
    Credentials who;
    std::string address;
    std::uint16_t port = 25;
    std::uint64_t count = 0;
};

class WorkerTest : public ::testing::Test {
  protected:
    void SetUp() override;

    // Starts smtpfenced (config given or the default one) with the test accounts;
    // fatal on failure (call through ASSERT_NO_FATAL_FAILURE).
    void start_daemon(std::vector<std::string> extra = {});
    // What start_daemon starts it with: the test's table, config, accounts and folder.
    [[nodiscard]] itest::DaemonArgs daemon_args(std::vector<std::string> extra = {}) const;
    void write_config(const std::string& text);
    // Waits until a worker (a child of the daemon) is bound to the queue; its pid.
    void wait_for_worker(pid_t* pid, pid_t not_this = 0, Millis timeout = 10s);
    [[nodiscard]] std::optional<pid_t> daemon_pid() const;
    [[nodiscard]] std::optional<pid_t> worker_pid() const;

    // <tmp>/home/NAME/domains/DOMAIN/public_html, created for every test account.
    [[nodiscard]] std::string docroot(const std::string& user, const std::string& domain) const;
    // The docroot of who's own site (alice: x.test, bob: b.test, ...), else /tmp.
    [[nodiscard]] std::string site_of(const Credentials& who) const;
    [[nodiscard]] std::string state_dir() const { return dir_->path() + "/state"; }
    [[nodiscard]] const std::string& connector() const { return connector_path_; }

    // Runs the connector in the server namespace as who, in cwd, with args.
    [[nodiscard]] Result<Connector> start_connector(const Credentials& who, const std::string& cwd,
                                                    const std::vector<std::string>& args);

    // Waits (bounded) until the log's totals and the kernel's counters of every uid in
    // expected both equal the expected count and stay so for more than one reconcile
    // period; then checks it with EXPECTs naming what differs.
    void expect_exact_totals(const std::map<std::uint32_t, std::uint64_t>& expected,
                             Millis timeout = 8s);
    // Every attempt record names one of the given processes of its uid (or none, when
    // "identified" is false) and no process got more than `limit` explained.
    void expect_attempts_name_only(const std::map<pid_t, std::uint32_t>& uid_of_pid,
                                   unsigned limit);

    // Starts one connector per part, all at once: `interval_us` between connects, or
    // (parallel) all of a part's connects in flight together, each waited for up to
    // timeout_ms.
    void start_flood(const std::vector<FloodPart>& parts, std::uint64_t interval_us,
                     std::vector<Connector>* flood, bool parallel = false, int timeout_ms = 5000);
    // Waits for them; every connect must have been refused, none connected, none
    // timed out. Fills the pid -> uid map of the flood's processes.
    void finish_flood(std::vector<Connector>& flood, const std::vector<FloodPart>& parts,
                      std::map<pid_t, std::uint32_t>* uid_of_pid);
    [[nodiscard]] static bool any_running(std::vector<Connector>& flood);

    [[nodiscard]] std::string diagnostics();

    std::string table_;
    std::string config_path_;
    std::string passwd_path_;
    std::string group_path_;
    std::string connector_path_;
    std::optional<itest::TempDir> dir_;
    std::optional<Topology> topo_;
    std::optional<itest::SmtpListener> remote_smtp_;
    std::optional<itest::Daemon> daemon_;
};

}  // namespace smtpfence::wtest
