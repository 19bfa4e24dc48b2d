// smtpfence-bench-worker: what the NFQUEUE worker costs under a flood, measured side by
// side in one run. A program, not a test: it prints rates, ratios, CPU and memory and
// never judges timing by its exit status, which is non-zero only when something broke
// (setup failed, a blocked connection got through, or the attempt history's counts differ
// from the connects made: "Every attempt counted" is a promise, not a goal).
//
// The flood: 4 processes at once, each as its own blocked uid (61001..61004, so the
// observe chain's per-uid rate limit runs 4 times and 4 x 20 SYNs a second reach the
// worker; --same-uid runs all 4 as 61001), each looping socket() + connect() + close()
// to 192.0.2.25:25. Three firewalls, each in its own namespace:
//   (a) smtpfenced with its smtpfence-worker: the observe chain queues the sampled SYNs,
//       the worker explains them and reconciles with the kernel's per-uid counters;
//   (b) smtpfenced --no-worker: the very same ruleset, nobody bound to the queue, so
//       the `bypass` flag passes the sampled SYNs on: the observe chain's own cost;
//   (c) the same ruleset without the observe chain (the daemon's own compute_desired
//       with queue mode none, applied with Engine::apply): the reference.
// The machine is shared and noisy, so they are measured interleaved: every variant once
// per round, in an order rotated from round to round, its time cut into slices
// interleaved with the other variants' slices; ratios are taken within a round, then
// median [min..max] over the rounds. The first 0.25 s of every slice are flooded but not
// measured: the limit's per-uid burst (40 SYNs) refills while the other variants run, so
// (a) would pay it at the start of every slice where a real flood pays it once (the
// summary gives the ratio with it too).
//
// After every round, (a)'s attempt history is followed until it accounts for every connect
// (or its totals stop changing, at most 5 s) and compared, per uid, with the connects
// made and with the kernel's counters. Then a fresh daemon and worker take continuous
// floods of 2, 10 and 30 s (--quick: 2 and 10), one after the other: the worker's CPU per
// attempt (utime+stime from /proc/PID/stat over the flood and its reconciliation) and its
// peak memory (VmHWM) after each, to show both stay flat whatever the flood's length.
//
// Everything happens in network namespaces made for the run (see sandbox.h), never in
// the host's: a remote namespace holds 192.0.2.25 (TEST-NET-1) and a listener on port
// 25, each variant's namespace is linked to it by a veth pair (198.18.N.0/24), and the
// daemons are exec'd inside their namespace. Their files (config, passwd, group, state)
// live in a temporary directory removed at the end.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench/bench_daemon.h"
#include "bench/bench_main.h"
#include "bench/report.h"
#include "bench/sandbox.h"
#include "common/sqlite.h"
#include "ctl/daemon.h"
#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/support/temp_dir.h"

#ifndef SMTPFENCED_PATH
#error "SMTPFENCED_PATH must be defined by CMake"
#endif
#ifndef SMTPFENCE_WORKER_PATH
#error "SMTPFENCE_WORKER_PATH must be defined by CMake"
#endif

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;
using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kTable = "sfbench";
constexpr std::size_t kProcesses = 4;
constexpr uid_t kFirstFloodUid = 61001;
// The goals.
constexpr double kRefusalGoal = 0.9;
constexpr double kMemoryGoalMiB = 32;
// "Flat": across flood lengths, CPU per attempt within this factor of the shortest
// flood's, and peak memory no more than this much above it.
constexpr double kCpuFlatFactor = 1.5;
constexpr double kMemoryFlatMiB = 1.0;
// Following the attempt history after a flood: the worker reconciles every second, so
// totals unchanged for longer than that have stopped changing; never more than 5 s.
constexpr auto kStableWindow = 1500ms;
constexpr auto kSettleLimit = 5s;
constexpr auto kPollEvery = 50ms;

struct Options {
    int rounds = 5;
    double seconds = 3.0;
    int slices = 3;
    double skip = 0.25;
    std::vector<double> memory_floods{2, 10, 30};
    bool same_uid = false;
    bool quick = false;
};

// ---- numbers and text ---------------------------------------------------------------

const char* verdict(bool met) {
    return met ? "goal met" : "goal NOT met";
}

// ---- smtpfenced in a namespace ---------------------------------------------------------

struct Files {
    std::string dir;
    std::string config;
    std::string passwd;
    std::string group;
};

std::vector<uid_t> flood_uids(bool same_uid) {
    std::vector<uid_t> uids;
    uids.reserve(kProcesses);
    for (std::size_t i = 0; i < kProcesses; ++i) {
        uids.push_back(same_uid ? kFirstFloodUid : kFirstFloodUid + static_cast<uid_t>(i));
    }
    return uids;
}

Result<Files> write_files(const std::string& dir) {
    Files f{dir, dir + "/smtpfence.conf", dir + "/passwd", dir + "/group"};
    std::string passwd =
        "root:x:0:0:root:/root:/bin/sh\nmail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n";
    std::string group = "root:x:0:\nmail:x:8:\n";
    for (std::size_t i = 0; i < kProcesses; ++i) {
        const std::string uid = std::to_string(kFirstFloodUid + i);
        const std::string name = "flood" + std::to_string(i + 1);
        passwd += name + ":x:" + uid + ":" + uid + "::/nonexistent:/bin/sh\n";
        group += name + ":x:" + uid + ":\n";
    }
    // The defaults otherwise: ports 25, 465, 587; root and mail allowed; observe rate
    // 20/s, burst 40 per uid; queue 2525.
    for (const auto& [path, text] : {std::pair{f.config, std::string("SMTP_BLOCK = \"1\"\n")},
                                     std::pair{f.passwd, passwd}, std::pair{f.group, group}}) {
        if (auto r = write_text(path, text); !r) {
            return std::unexpected(r.error());
        }
    }
    return f;
}

// smtpfenced of variant `name`, its files under files.dir/name.
Result<Daemon> start_daemon(const Netns& ns, const Files& files, const std::string& name,
                            bool with_worker) {
    return Daemon::start(ns, DaemonSpec{.program = "smtpfence-bench-worker",
                                        .daemon_path = SMTPFENCED_PATH,
                                        .worker_path = with_worker ? SMTPFENCE_WORKER_PATH : "",
                                        .table = kTable,
                                        .config = files.config,
                                        .passwd = files.passwd,
                                        .group = files.group,
                                        .dir = files.dir + "/" + name});
}

// ---- the attempt history, followed ---------------------------------------------------------

// Reads STATE_DIR/history.db (read only, as the daemon's query children do) after each
// flood: the attempt records and counted-only counts per uid, and the last checkpoint.
class LogFollower {
  public:
    explicit LogFollower(std::string state_dir) : dir_(std::move(state_dir)) {}

    void poll() {
        auto db = sql::Database::open(dir_ + "/history.db", sql::Database::Mode::ReadOnly);
        if (!db)
            return;  // not there yet
        auto totals =
            db->prepare("SELECT uid, explained, sum(count) FROM records GROUP BY uid, explained");
        auto cp = db->prepare("SELECT kernel FROM checkpoint");
        if (!totals || !cp)
            return;
        explained_.clear();
        counted_.clear();
        while (totals->step().value_or(false)) {
            auto& to = totals->int64(1) != 0 ? explained_ : counted_;
            to[static_cast<uid_t>(totals->int64(0))] = static_cast<std::uint64_t>(totals->int64(2));
        }
        checkpoint_.clear();
        const Json kernel =
            cp->step().value_or(false) ? Json::parse(cp->text(0), nullptr, false) : Json::object();
        if (kernel.is_object()) {
            for (const auto& [key, count] : kernel.items()) {
                if (count.is_number_unsigned()) {
                    checkpoint_[static_cast<uid_t>(std::strtoul(key.c_str(), nullptr, 10))] =
                        count.get<std::uint64_t>();
                }
            }
        }
    }

    [[nodiscard]] std::uint64_t explained(uid_t uid) const { return value(explained_, uid); }
    [[nodiscard]] std::uint64_t counted(uid_t uid) const { return value(counted_, uid); }
    [[nodiscard]] std::uint64_t total(uid_t uid) const { return explained(uid) + counted(uid); }
    [[nodiscard]] std::optional<std::uint64_t> checkpoint(uid_t uid) const {
        const auto it = checkpoint_.find(uid);
        return it == checkpoint_.end() ? std::nullopt : std::optional(it->second);
    }
    // history.db with its write-ahead log.
    [[nodiscard]] std::uint64_t bytes() const {
        std::uint64_t n = 0;
        for (const char* suffix : {"", "-wal"}) {
            struct stat st {};
            if (::stat((dir_ + "/history.db" + suffix).c_str(), &st) == 0)
                n += static_cast<std::uint64_t>(st.st_size);
        }
        return n;
    }

  private:
    static std::uint64_t value(const std::map<uid_t, std::uint64_t>& m, uid_t uid) {
        const auto it = m.find(uid);
        return it == m.end() ? 0 : it->second;
    }

    std::string dir_;
    std::map<uid_t, std::uint64_t> explained_;
    std::map<uid_t, std::uint64_t> counted_;
    std::map<uid_t, std::uint64_t> checkpoint_;
};

// ---- the flood ------------------------------------------------------------------------------

// What one flood process saw. Trivially copyable: it crosses a pipe.
struct ProcCounts {
    std::uint64_t attempts = 0;   // connect()s
    std::uint64_t refused = 0;    // ECONNREFUSED: the firewall's tcp reset
    std::uint64_t connected = 0;  // the remote answered: the SYN got through
    std::uint64_t other = 0;      // any other errno
    int first_other_errno = 0;
    int setup_errno = 0;          // the process could not take its uid (nothing was measured)
    std::int64_t elapsed_ns = 0;  // wall-clock time of the whole flood
    // The measured window: the flood after its first `skip` seconds.
    std::uint64_t window_refused = 0;
    std::int64_t window_ns = 0;      // wall-clock time
    std::int64_t window_cpu_ns = 0;  // CPU time the process got meanwhile
};

struct FloodReport {
    std::size_t index = 0;
    ProcCounts counts;
};

struct Flood {
    std::vector<uid_t> uids;
    std::vector<ProcCounts> procs;  // one per process, in uids' order

    [[nodiscard]] std::uint64_t sum(std::uint64_t ProcCounts::*field) const {
        std::uint64_t n = 0;
        for (const ProcCounts& c : procs) {
            n += c.*field;
        }
        return n;
    }
    // The processes ran side by side: their mean running time is the flood's.
    [[nodiscard]] double seconds() const {
        double s = 0;
        for (const ProcCounts& c : procs) {
            s += static_cast<double>(c.elapsed_ns) / 1e9;
        }
        return procs.empty() ? 0 : s / static_cast<double>(procs.size());
    }
    // The same for the measured window.
    [[nodiscard]] double window_seconds() const {
        double s = 0;
        for (const ProcCounts& c : procs) {
            s += static_cast<double>(c.window_ns) / 1e9;
        }
        return procs.empty() ? 0 : s / static_cast<double>(procs.size());
    }
    [[nodiscard]] double window_cpu_seconds() const {
        double s = 0;
        for (const ProcCounts& c : procs) {
            s += static_cast<double>(c.window_cpu_ns) / 1e9;
        }
        return s;
    }
    [[nodiscard]] double rate() const {
        const double s = window_seconds();
        return s > 0 ? static_cast<double>(sum(&ProcCounts::window_refused)) / s : 0;
    }
};

// kProcesses children in ns, one per uid, each taking its uid (gid the same, no
// supplementary groups) and then, all together once every one is ready, looping
// socket() + blocking connect() + close() for skip + seconds; the rates are taken over
// the last `seconds`.
Result<Flood> flood(const Netns& ns, const std::vector<uid_t>& uids, double skip, double seconds) {
    auto go = testing::make_pipe();
    auto ready = testing::make_pipe();
    auto results = testing::make_pipe();
    if (!go || !ready || !results) {
        return fail(errno, "pipe");
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(kSmtpPort);
    if (::inet_pton(AF_INET, kRemoteAddr, &sa.sin_addr) != 1) {
        return fail(EINVAL, "parse " + std::string(kRemoteAddr));
    }
    const auto window_start = std::chrono::duration_cast<Clock::duration>(Seconds(skip));
    const auto budget = std::chrono::duration_cast<Clock::duration>(Seconds(skip + seconds));
    const pid_t parent = ::getpid();
    std::vector<Child> children;
    for (std::size_t i = 0; i < uids.size(); ++i) {
        const uid_t uid = uids[i];
        auto child = testing::spawn_in(ns, [&]() -> int {
            go->write.reset();
            ready->read.reset();
            results->read.reset();
            FloodReport rep;
            rep.index = i;
            ProcCounts& c = rep.counts;
            if (!testing::become({"", uid, uid, {}})) {
                c.setup_errno = errno;
                (void)!::write(results->write.get(), &rep, sizeof rep);
                return 1;
            }
            // A change of credentials clears the parent-death signal: set it again.
            if (!testing::die_with_parent(parent, SIGKILL)) {
                return 1;
            }
            const char byte = 1;
            (void)!::write(ready->write.get(), &byte, 1);
            char got = 0;
            while (::read(go->read.get(), &got, 1) < 0 && errno == EINTR) {
            }
            const auto start = Clock::now();
            auto now = start;
            auto mark = start;
            std::int64_t mark_cpu = cpu_time_ns();
            std::uint64_t mark_refused = 0;
            bool marked = window_start.count() == 0;
            while (c.attempts == 0 || now - start < budget) {
                ++c.attempts;
                const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                const int r =
                    s < 0 ? -1 : ::connect(s, reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
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
                if (!marked && now - start >= window_start) {
                    marked = true;
                    mark = now;
                    mark_cpu = cpu_time_ns();
                    mark_refused = c.refused;
                }
            }
            c.elapsed_ns =
                std::chrono::duration_cast<std::chrono::nanoseconds>(now - start).count();
            c.window_refused = c.refused - mark_refused;
            c.window_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now - mark).count();
            c.window_cpu_ns = cpu_time_ns() - mark_cpu;
            // Smaller than PIPE_BUF: one write, delivered whole.
            (void)!::write(results->write.get(), &rep, sizeof rep);
            return 0;
        });
        if (!child) {
            return std::unexpected(child.error().wrap("start a flood process"));
        }
        children.push_back(std::move(*child));
    }
    ready->write.reset();
    results->write.reset();
    const std::string what = "flood of " + std::to_string(uids.size()) + " processes";
    std::vector<char> bytes(uids.size());
    if (!testing::read_exact(ready->read.get(), bytes.data(), bytes.size(), Clock::now() + 10s)) {
        // A child that failed to take its uid said why on the results pipe.
        FloodReport rep;
        if (testing::read_exact(results->read.get(), &rep, sizeof rep, Clock::now() + 1s) &&
            rep.counts.setup_errno != 0) {
            return fail(rep.counts.setup_errno,
                        what + ": take uid " + std::to_string(uids[rep.index]));
        }
        return fail(ETIMEDOUT, what, "the processes did not get ready");
    }
    go->write.reset();  // every child's read() returns: go
    Flood out;
    out.uids = uids;
    out.procs.resize(uids.size());
    const auto deadline = Clock::now() + budget + 10s;
    for (std::size_t n = 0; n < uids.size(); ++n) {
        FloodReport rep;
        if (!testing::read_exact(results->read.get(), &rep, sizeof rep, deadline) ||
            rep.index >= uids.size()) {
            return fail(ETIMEDOUT, what,
                        "a connect() neither failed nor succeeded (a SYN got past the firewall "
                        "and was never answered), or a process died");
        }
        if (rep.counts.setup_errno != 0) {
            return fail(rep.counts.setup_errno, what + ": take uid " + std::to_string(uids[n]));
        }
        out.procs[rep.index] = rep.counts;
    }
    for (Child& c : children) {
        if (auto reaped = c.wait(); !reaped) {
            return std::unexpected(reaped.error().wrap(what));
        }
    }
    return out;
}

// ---- variants ----------------------------------------------------------------------------

// Per-uid bookkeeping of one namespace's blocked uids.
struct Tally {
    std::uint64_t made = 0;       // connect()s of that uid (every one must be refused)
    std::uint64_t kernel = 0;     // the kernel's counter in set `blocked`
    std::uint64_t explained = 0;  // "attempt" records
    std::uint64_t counted = 0;    // sum of "counted" records
    [[nodiscard]] std::uint64_t logged() const { return explained + counted; }
};

struct Variant {
    Variant(std::string k, std::string l, Netns n, std::unique_ptr<NsEngine> e)
        : key(std::move(k)), label(std::move(l)), ns(std::move(n)), engine(std::move(e)) {}
    std::string key;    // "(a)"
    std::string label;  // what it is
    Netns ns;
    std::unique_ptr<NsEngine> engine;
    std::optional<Daemon> daemon;
    std::vector<double> rates;      // refusals per second of wall-clock time, per round
    std::vector<double> cpu_rates;  // per second of the flood processes' CPU time
    std::vector<double> ratios;     // to (c), per round
    std::vector<double> cpu_ratios;
    // The same over the whole slices, their first `skip` seconds included.
    std::vector<double> whole_rates;
    std::vector<double> whole_ratios;
    std::map<uid_t, std::uint64_t> made;
    ProcCounts total;
};

// One comparison of (a)'s log with the connects made.
struct CountCheck {
    std::string label;
    std::map<uid_t, Tally> per_uid;
    double settle_s = 0;
    std::string how;  // why following the log stopped
    bool equal = true;
    bool kernel_equal = true;
};

void add(Variant& v, const Flood& f) {
    for (std::size_t i = 0; i < f.procs.size(); ++i) {
        const ProcCounts& c = f.procs[i];
        v.made[f.uids[i]] += c.attempts;
        v.total.attempts += c.attempts;
        v.total.refused += c.refused;
        v.total.connected += c.connected;
        v.total.other += c.other;
        if (v.total.first_other_errno == 0) {
            v.total.first_other_errno = c.first_other_errno;
        }
    }
}

// Follows the log until it accounts for every connect made (its totals and the last
// checkpoint both equal them: the worker has nothing left to add) or its totals stop
// changing (unchanged for longer than one reconcile period), at most kSettleLimit;
// then compares it, uid by uid, with the connects made and the kernel's counters.
Result<CountCheck> check_counts(std::string label, LogFollower& log, Variant& v) {
    CountCheck check;
    check.label = std::move(label);
    const auto start = Clock::now();
    auto last_change = start;
    std::map<uid_t, std::uint64_t> previous;
    while (true) {
        log.poll();
        std::map<uid_t, std::uint64_t> now;
        bool accounted = true;
        for (const auto& [uid, made] : v.made) {
            now[uid] = log.total(uid);
            accounted = accounted && now[uid] == made && log.checkpoint(uid) == made;
        }
        if (now != previous) {
            previous = now;
            last_change = Clock::now();
        }
        const auto elapsed = Clock::now() - start;
        if (accounted) {
            check.how = "accounted";
            break;
        }
        if (Clock::now() - last_change >= kStableWindow) {
            check.how = "stopped changing";
            break;
        }
        if (elapsed >= kSettleLimit) {
            check.how = "still changing after 5 s";
            break;
        }
        std::this_thread::sleep_for(kPollEvery);
    }
    check.settle_s = Seconds(Clock::now() - start).count();
    auto kernel = v.engine->engine().read_blocked(kTable);
    if (!kernel) {
        return std::unexpected(kernel.error().wrap("read the kernel's counters"));
    }
    for (const auto& [uid, made] : v.made) {
        Tally& t = check.per_uid[uid];
        t.made = made;
        const auto k = kernel->find(uid);
        t.kernel = k == kernel->end() ? 0 : k->second.packets;
        t.explained = log.explained(uid);
        t.counted = log.counted(uid);
        check.equal = check.equal && t.logged() == t.made;
        check.kernel_equal = check.kernel_equal && t.kernel == t.made;
    }
    return check;
}

struct CpuMem {
    std::uint64_t ticks = 0;
    std::uint64_t hwm_kib = 0;
    std::uint64_t rss_kib = 0;
};

Result<CpuMem> sample_worker(Daemon& d) {
    const pid_t pid = d.worker();
    const auto ticks = cpu_ticks(pid);
    const auto hwm = status_kib(pid, "VmHWM");
    const auto rss = status_kib(pid, "VmRSS");
    if (pid <= 0 || !ticks || !hwm || !rss || d.refresh_worker() != pid) {
        return fail(ESRCH, "read /proc of worker pid " + std::to_string(pid),
                    "the worker is gone (restarted: pid now " + std::to_string(d.worker()) +
                        "); daemon log:\n" + tail(d.log(), 2000));
    }
    return CpuMem{*ticks, *hwm, *rss};
}

// ---- the run ---------------------------------------------------------------------------

int fail_setup(const Error& e) {
    note("smtpfence-bench-worker: setup failed: %s\n", e.message().c_str());
    return 1;
}

void loud(const std::string& message) {
    note("\n!!! %s !!!\n\n", message.c_str());
    std::printf("\n!!! %s !!!\n\n", message.c_str());
}

std::string uid_range(const std::vector<uid_t>& uids) {
    const auto [lo, hi] = std::minmax_element(uids.begin(), uids.end());
    return *lo == *hi ? "uid " + std::to_string(*lo) + " for all"
                      : "uids " + std::to_string(*lo) + ".." + std::to_string(*hi) + ", one each";
}

void print_check_row(const CountCheck& c) {
    Tally sum;
    for (const auto& [uid, t] : c.per_uid) {
        sum.made += t.made;
        sum.kernel += t.kernel;
        sum.explained += t.explained;
        sum.counted += t.counted;
    }
    std::printf("%-16s %11s %11s %10s %11s %11s  %5.2f s %-17s %s\n", c.label.c_str(),
                grouped(sum.made).c_str(), grouped(sum.kernel).c_str(),
                grouped(sum.explained).c_str(), grouped(sum.counted).c_str(),
                grouped(sum.logged()).c_str(), c.settle_s, c.how.c_str(),
                c.equal ? "equal, every uid" : "MISMATCH");
}

void print_check_header() {
    std::printf("%-16s %11s %11s %10s %11s %11s  %-25s %s\n", "after", "made", "kernel",
                "explained", "counted", "logged", "log followed", "logged vs made");
}

void print_per_uid(const CountCheck& c) {
    for (const auto& [uid, t] : c.per_uid) {
        std::printf("  uid %-6u made %11s  kernel %11s  explained %6s + counted %11s = %11s  %s\n",
                    uid, grouped(t.made).c_str(), grouped(t.kernel).c_str(),
                    grouped(t.explained).c_str(), grouped(t.counted).c_str(),
                    grouped(t.logged()).c_str(),
                    t.logged() == t.made ? "equal" : "!!! MISMATCH !!!");
    }
}

struct MemoryRow {
    std::string label;
    double seconds = 0;
    std::uint64_t attempts = 0;
    double rate = 0;
    std::uint64_t ticks = 0;
    double interval_s = 0;  // wall-clock time the ticks were counted over
    double cpu_us_per_attempt = 0;
    std::uint64_t hwm_kib = 0;
    std::uint64_t rss_kib = 0;
    bool counted_ok = true;
};

int run(const Options& opt) {
    const auto run_start = Clock::now();
    if (::geteuid() != 0) {
        note("smtpfence-bench-worker: must run as root (network namespaces, nftables)\n");
        return 1;
    }
    const std::vector<uid_t> uids = flood_uids(opt.same_uid);
    const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
    const double us_per_tick = 1e6 / static_cast<double>(ticks_per_second);
    bool broken = false;

    auto tmp = testing::TempDir::create({"smtpfence-bench-worker", "/tmp", 0700});
    if (!tmp) {
        return fail_setup(tmp.error());
    }
    auto files = write_files(tmp->path());
    if (!files) {
        return fail_setup(files.error());
    }
    note("setting up namespaces, daemons and firewalls...\n");
    auto remote = Remote::create();
    if (!remote) {
        return fail_setup(remote.error());
    }

    // ---- the three variants -----------------------------------------------------------
    std::vector<Variant> variants;
    for (const auto& [key, label] :
         {std::pair{"(a)", "smtpfenced + worker"}, std::pair{"(b)", "smtpfenced --no-worker"},
          std::pair{"(c)", "no observe chain"}}) {
        auto ns = remote->add_client();
        if (!ns) {
            return fail_setup(ns.error());
        }
        auto e = NsEngine::open(*ns);
        if (!e) {
            return fail_setup(e.error());
        }
        variants.push_back(Variant{key, label, std::move(*ns), std::move(*e)});
    }
    Variant& va = variants[0];
    Variant& vb = variants[1];
    Variant& vc = variants[2];
    {
        auto a = start_daemon(va.ns, *files, "a", true);
        if (!a) {
            return fail_setup(a.error().wrap("(a)"));
        }
        va.daemon.emplace(std::move(*a));
        auto b = start_daemon(vb.ns, *files, "b", false);
        if (!b) {
            return fail_setup(b.error().wrap("(b)"));
        }
        vb.daemon.emplace(std::move(*b));
    }
    // (c): what the daemon computes from the same files, without the observe chain.
    DaemonOptions dopt;
    dopt.config_path = files->config;
    dopt.config_given = true;
    dopt.table = kTable;
    dopt.passwd_path = files->passwd;
    dopt.group_path = files->group;
    auto desired = compute_desired(dopt, KernelFeatures{});
    if (!desired) {
        return fail_setup(desired.error().wrap("(c): compute the policy"));
    }
    if (auto r = vc.engine->engine().apply(nft::build_ruleset(desired->spec)); !r) {
        return fail_setup(r.error().wrap("(c): apply"));
    }
    // Each variant holds what its label says: the observe chain in (a) and (b) only,
    // and the path to the remote is there (root, allowed, gets through).
    for (Variant& v : variants) {
        auto inv = v.engine->engine().inventory(kTable);
        if (!inv) {
            return fail_setup(inv.error().wrap(v.key));
        }
        const bool observe =
            std::any_of(inv->chains.begin(), inv->chains.end(),
                        [](const auto& chain) { return chain.name == nft::kChainObserve; });
        if (observe != (&v != &vc)) {
            return fail_setup(Error{0, v.key + " " + v.label,
                                    observe ? "has an observe chain" : "has no observe chain"});
        }
        ProbeSpec root;
        root.addr = kRemoteAddr;
        root.seconds = 0;
        root.max_attempts = 1;
        auto r = probe_connects(v.ns, root, Millis(5000));
        if (!r) {
            return fail_setup(r.error().wrap(v.key));
        }
        if (r->connected != 1) {
            return fail_setup(Error{r->first_other_errno, v.key + " " + v.label,
                                    "root did not reach " + std::string(kRemoteAddr) + ":25"});
        }
    }

    utsname uts{};
    (void)::uname(&uts);
    std::printf(
        "smtpfence-bench-worker: %d rounds, %.2f s of measured flood per variant and round in %d "
        "interleaved slices (each %.2f s longer: its first %.2f s are not measured); then "
        "continuous floods of",
        opt.rounds, opt.seconds, opt.slices, opt.skip, opt.skip);
    for (const double s : opt.memory_floods) {
        std::printf(" %g s", s);
    }
    std::printf("\nkernel %s %s, %ld CPUs, %ld clock ticks/s\n", uts.sysname, uts.release,
                ::sysconf(_SC_NPROCESSORS_ONLN), ticks_per_second);
    std::printf(
        "flood: %zu processes at once, %s (the observe chain's per-uid limit runs %zu time(s)), "
        "each looping socket()+connect()+close() to %s:%u\n",
        kProcesses, uid_range(uids).c_str(),
        static_cast<std::size_t>(std::set(uids.begin(), uids.end()).size()), kRemoteAddr,
        kSmtpPort);
    std::printf(
        "(a) smtpfenced + smtpfence-worker, observation: %s (daemon pid %d, worker pid %d)\n",
        va.daemon->observation().c_str(), va.daemon->pid(), va.daemon->worker());
    std::printf("(b) smtpfenced --no-worker, observation: %s, nobody bound to the queue (bypass)\n",
                vb.daemon->observation().c_str());
    std::printf(
        "(c) the same ruleset without the observe chain (compute_desired, queue mode none, "
        "Engine::apply)\n\n");
    (void)std::fflush(stdout);

    auto run_flood = [&](Variant& v, double skip, double seconds) -> Result<Flood> {
        auto f = flood(v.ns, uids, skip, seconds);
        if (!f) {
            return std::unexpected(f.error().wrap(v.key + " " + v.label));
        }
        add(v, *f);
        if (const std::uint64_t got = f->sum(&ProcCounts::connected); got > 0) {
            broken = true;
            loud("BUG: " + std::to_string(got) + " connection(s) of blocked uids got through " +
                 v.key + " " + v.label);
        }
        return f;
    };

    // ---- rounds ---------------------------------------------------------------------------
    note("warming up...\n");
    for (Variant& v : variants) {
        if (auto f = run_flood(v, 0, opt.quick ? 0.1 : 0.2); !f) {
            return fail_setup(f.error());
        }
    }
    LogFollower alog(va.daemon->state_dir());
    std::vector<CountCheck> checks;
    std::vector<double> round_cpu_us;  // worker CPU per attempt of (a), per round
    std::uint64_t rounds_ticks = 0;
    std::uint64_t rounds_attempts = 0;
    const std::size_t nv = variants.size();
    for (int round = 0; round < opt.rounds; ++round) {
        const auto round_start = Clock::now();
        auto cpu0 = sample_worker(*va.daemon);
        if (!cpu0) {
            return fail_setup(cpu0.error());
        }
        const std::uint64_t made0 = va.total.attempts;
        std::vector<std::uint64_t> refused(nv);
        std::vector<double> seconds(nv);
        std::vector<double> cpu_seconds(nv);
        std::vector<std::uint64_t> whole_refused(nv);
        std::vector<double> whole_seconds(nv);
        for (int slice = 0; slice < opt.slices; ++slice) {
            for (std::size_t k = 0; k < nv; ++k) {
                const std::size_t i = (k + static_cast<std::size_t>(round + slice)) % nv;
                auto f = run_flood(variants[i], opt.skip, opt.seconds / opt.slices);
                if (!f) {
                    note("smtpfence-bench-worker: %s\n", f.error().message().c_str());
                    return 1;
                }
                refused[i] += f->sum(&ProcCounts::window_refused);
                seconds[i] += f->window_seconds();
                cpu_seconds[i] += f->window_cpu_seconds();
                whole_refused[i] += f->sum(&ProcCounts::refused);
                whole_seconds[i] += f->seconds();
            }
        }
        for (std::size_t i = 0; i < nv; ++i) {
            Variant& v = variants[i];
            v.rates.push_back(seconds[i] > 0 ? static_cast<double>(refused[i]) / seconds[i] : 0);
            v.cpu_rates.push_back(
                cpu_seconds[i] > 0 ? static_cast<double>(refused[i]) / cpu_seconds[i] : 0);
            v.whole_rates.push_back(whole_seconds[i] > 0
                                        ? static_cast<double>(whole_refused[i]) / whole_seconds[i]
                                        : 0);
        }
        for (Variant& v : variants) {
            v.ratios.push_back(vc.rates.back() > 0 ? v.rates.back() / vc.rates.back() : 0);
            v.cpu_ratios.push_back(
                vc.cpu_rates.back() > 0 ? v.cpu_rates.back() / vc.cpu_rates.back() : 0);
            v.whole_ratios.push_back(
                vc.whole_rates.back() > 0 ? v.whole_rates.back() / vc.whole_rates.back() : 0);
        }
        auto check = check_counts("round " + std::to_string(round + 1), alog, va);
        if (!check) {
            note("smtpfence-bench-worker: %s\n", check.error().message().c_str());
            return 1;
        }
        auto cpu1 = sample_worker(*va.daemon);
        if (!cpu1) {
            return fail_setup(cpu1.error());
        }
        const std::uint64_t made = va.total.attempts - made0;
        rounds_ticks += cpu1->ticks - cpu0->ticks;
        rounds_attempts += made;
        round_cpu_us.push_back(made > 0 ? static_cast<double>(cpu1->ticks - cpu0->ticks) *
                                              us_per_tick / static_cast<double>(made)
                                        : 0);
        if (!check->equal) {
            broken = true;
            loud("MISMATCH: (a) attempts counted != attempts made after " + check->label);
            print_per_uid(*check);
        }
        checks.push_back(std::move(*check));
        note("round %d/%d done in %.1f s\n", round + 1, opt.rounds,
             Seconds(Clock::now() - round_start).count());
    }
    const std::uint64_t a_hwm = status_kib(va.daemon->worker(), "VmHWM").value_or(0);

    // ---- continuous floods against a fresh daemon and worker ---------------------------------
    note("continuous floods against a fresh daemon and worker...\n");
    auto mns = remote->add_client();
    if (!mns) {
        return fail_setup(mns.error());
    }
    auto meng = NsEngine::open(*mns);
    if (!meng) {
        return fail_setup(meng.error());
    }
    Variant vm{"(m)", "fresh smtpfenced + worker", std::move(*mns), std::move(*meng)};
    {
        auto m = start_daemon(vm.ns, *files, "m", true);
        if (!m) {
            return fail_setup(m.error().wrap("(m)"));
        }
        vm.daemon.emplace(std::move(*m));
    }
    LogFollower mlog(vm.daemon->state_dir());
    std::vector<MemoryRow> mem_rows;
    std::vector<CountCheck> mem_checks;
    {
        auto idle = sample_worker(*vm.daemon);
        if (!idle) {
            return fail_setup(idle.error());
        }
        mem_rows.push_back(MemoryRow{"idle", 0, 0, 0, 0, 0, 0, idle->hwm_kib, idle->rss_kib, true});
    }
    for (const double secs : opt.memory_floods) {
        auto cpu0 = sample_worker(*vm.daemon);
        if (!cpu0) {
            return fail_setup(cpu0.error());
        }
        const auto t0 = Clock::now();
        auto f = run_flood(vm, 0, secs);
        if (!f) {
            note("smtpfence-bench-worker: %s\n", f.error().message().c_str());
            return 1;
        }
        const std::string label = strf("%g s flood", secs);
        auto check = check_counts(label, mlog, vm);
        if (!check) {
            note("smtpfence-bench-worker: %s\n", check.error().message().c_str());
            return 1;
        }
        auto cpu1 = sample_worker(*vm.daemon);
        if (!cpu1) {
            return fail_setup(cpu1.error());
        }
        MemoryRow row;
        row.label = label;
        row.seconds = secs;
        row.attempts = f->sum(&ProcCounts::attempts);
        row.rate = f->rate();
        row.ticks = cpu1->ticks - cpu0->ticks;
        row.interval_s = Seconds(Clock::now() - t0).count();
        row.cpu_us_per_attempt = row.attempts > 0 ? static_cast<double>(row.ticks) * us_per_tick /
                                                        static_cast<double>(row.attempts)
                                                  : 0;
        row.hwm_kib = cpu1->hwm_kib;
        row.rss_kib = cpu1->rss_kib;
        row.counted_ok = check->equal;
        mem_rows.push_back(row);
        if (!check->equal) {
            broken = true;
            loud("MISMATCH: (m) attempts counted != attempts made after the " + label);
            print_per_uid(*check);
        }
        mem_checks.push_back(std::move(*check));
        note("%s done in %.1f s\n", label.c_str(), Seconds(Clock::now() - t0).count());
    }

    // ---- report ---------------------------------------------------------------------------
    std::printf(
        "Refusal rate, %zu processes together (median [min..max] over %d rounds; ratios taken "
        "per round)\n"
        "Each slice's first %.2f s are left out: the per-uid burst of the observe chain's limit "
        "(40 SYNs) refills while the other variants run, and (a) would pay it at the start of "
        "every slice, where a continuous flood pays it once (the summary gives both)\n\n",
        kProcesses, opt.rounds, opt.skip);
    std::printf("%-30s %11s %10s %10s %8s   %-22s %s\n", "variant", "refusals/s", "min", "max",
                "us/conn", "ratio to (c), wall", "per flood CPU-s: refusals/s, ratio to (c)");
    for (const Variant& v : variants) {
        const Spread r = spread(v.rates);
        const Spread c = spread(v.cpu_rates);
        std::printf("%-30s %11s %10s %10s %8.2f   %-22s %s, %s\n", (v.key + " " + v.label).c_str(),
                    grouped(r.median).c_str(), grouped(r.min).c_str(), grouped(r.max).c_str(),
                    r.median > 0 ? 1e6 / r.median : 0.0,
                    &v == &vc ? "1 (reference)" : ratio_text(spread(v.ratios)).c_str(),
                    grouped(c.median).c_str(),
                    &v == &vc ? "1" : ratio_text(spread(v.cpu_ratios)).c_str());
    }
    std::printf(
        "(us/conn: wall-clock time per refused connect of the %zu processes together; per flood "
        "CPU-s: refusals per second of CPU time the flood processes got)\n",
        kProcesses);
    for (const Variant& v : variants) {
        if (v.total.other > 0) {
            std::printf(
                "warning: %s: %s of %s connect()s failed otherwise than ECONNREFUSED "
                "(first: %s)\n",
                v.key.c_str(), grouped(v.total.other).c_str(), grouped(v.total.attempts).c_str(),
                errno_text(v.total.first_other_errno).c_str());
        }
    }

    std::printf(
        "\nEvery attempt counted, (a): the attempt history against the connects made, cumulative "
        "(warm-up included), summed over the uids\n"
        "(explained: \"attempt\" records; counted: sum of \"counted\" records; logged = explained "
        "+ counted; log followed: until it accounted for every connect, or stopped changing)\n\n");
    print_check_header();
    for (const CountCheck& c : checks) {
        print_check_row(c);
    }
    if (!checks.empty()) {
        std::printf("per uid, after %s:\n", checks.back().label.c_str());
        print_per_uid(checks.back());
    }
    std::printf(
        "worker CPU (utime+stime, %ld ticks/s) per attempt, per round (the flood slices, the "
        "other variants' slices between them, and the reconciliation after): median %.3f us "
        "[%.3f..%.3f]; all rounds: %s ticks over %s attempts = %.3f us\n",
        ticks_per_second, spread(round_cpu_us).median, spread(round_cpu_us).min,
        spread(round_cpu_us).max, grouped(rounds_ticks).c_str(), grouped(rounds_attempts).c_str(),
        rounds_attempts > 0
            ? static_cast<double>(rounds_ticks) * us_per_tick / static_cast<double>(rounds_attempts)
            : 0.0);
    std::printf(
        "worker peak memory after the rounds: VmHWM %s; attempt history %s bytes "
        "(history.db and its -wal)\n",
        mib(a_hwm).c_str(), grouped(alog.bytes()).c_str());

    std::printf(
        "\nContinuous floods against a fresh daemon and worker, one after the other (worker CPU: "
        "utime+stime delta over the flood and its reconciliation, and its share of one CPU over "
        "that time; memory: after it)\n\n");
    std::printf("%-12s %11s %11s %11s %9s %13s %10s %10s  %s\n", "flood", "attempts", "refusals/s",
                "worker CPU", "CPU share", "CPU/attempt", "VmHWM", "VmRSS", "logged vs made");
    for (const MemoryRow& r : mem_rows) {
        if (r.seconds == 0) {
            std::printf("%-12s %11s %11s %11s %9s %13s %10s %10s  %s\n", r.label.c_str(), "-", "-",
                        "-", "-", "-", mib(r.hwm_kib).c_str(), mib(r.rss_kib).c_str(), "-");
            continue;
        }
        const double cpu_s = static_cast<double>(r.ticks) * us_per_tick / 1e6;
        std::printf("%-12s %11s %11s %8.0f ms %8.1f%% %10.3f us %10s %10s  %s\n", r.label.c_str(),
                    grouped(r.attempts).c_str(), grouped(r.rate).c_str(), cpu_s * 1000,
                    r.interval_s > 0 ? 100 * cpu_s / r.interval_s : 0.0, r.cpu_us_per_attempt,
                    mib(r.hwm_kib).c_str(), mib(r.rss_kib).c_str(),
                    r.counted_ok ? "equal, every uid" : "MISMATCH");
    }
    std::printf("\n");
    print_check_header();
    for (const CountCheck& c : mem_checks) {
        print_check_row(c);
    }
    if (!mem_checks.empty()) {
        std::printf("per uid, after the %s:\n", mem_checks.back().label.c_str());
        print_per_uid(mem_checks.back());
    }

    // ---- summary ----------------------------------------------------------------------------
    const double ratio_a = spread(va.ratios).median;
    const double cpu_ratio_a = spread(va.cpu_ratios).median;
    std::printf("\nSummary\n");
    std::printf(
        "  goal: refusal rate with the worker active >= %.2f of the rate without the observe "
        "chain\n",
        kRefusalGoal);
    std::printf("        wall clock: (a) %s/s vs (c) %s/s, ratio %s  -> %s\n",
                grouped(spread(va.rates).median).c_str(), grouped(spread(vc.rates).median).c_str(),
                ratio_text(spread(va.ratios)).c_str(), verdict(ratio_a >= kRefusalGoal));
    std::printf("        CPU time:   (a) %s/cpu-s vs (c) %s/cpu-s, ratio %s  -> %s\n",
                grouped(spread(va.cpu_rates).median).c_str(),
                grouped(spread(vc.cpu_rates).median).c_str(),
                ratio_text(spread(va.cpu_ratios)).c_str(), verdict(cpu_ratio_a >= kRefusalGoal));
    std::printf(
        "        slices measured whole, the burst at each slice's start included: (a)/(c) %s "
        "wall\n",
        ratio_text(spread(va.whole_ratios)).c_str());
    std::printf("        the observe chain alone, nobody listening: (b)/(c) %s wall, %s CPU\n",
                ratio_text(spread(vb.ratios)).c_str(), ratio_text(spread(vb.cpu_ratios)).c_str());

    bool all_equal = true;
    bool kernel_equal = true;
    std::size_t nchecks = 0;
    for (const auto* list : {&checks, &mem_checks}) {
        for (const CountCheck& c : *list) {
            all_equal = all_equal && c.equal;
            kernel_equal = kernel_equal && c.kernel_equal;
            ++nchecks;
        }
    }
    std::printf("  goal: attempts counted == attempts made (must be equal)\n");
    std::printf(
        "        %zu checks x %zu uid(s) (rounds in (a), floods in (m)): %s; the kernel's counters "
        "%s  -> %s\n",
        nchecks, static_cast<std::size_t>(std::set(uids.begin(), uids.end()).size()),
        all_equal ? "logged == made every time" : "MISMATCH",
        kernel_equal ? "== made every time" : "!= made somewhere", verdict(all_equal));

    // Flat: compared with the shortest continuous flood.
    std::vector<const MemoryRow*> floods;
    for (const MemoryRow& r : mem_rows) {
        if (r.seconds > 0) {
            floods.push_back(&r);
        }
    }
    if (!floods.empty()) {
        const MemoryRow& first = *floods.front();
        bool cpu_flat = true;
        bool mem_flat = true;
        std::uint64_t peak = 0;
        std::string cpu_text;
        std::string mem_text;
        for (const MemoryRow* r : floods) {
            // One clock tick of slack: utime+stime is counted in ticks.
            const double tick_per_attempt =
                us_per_tick / static_cast<double>(std::max<std::uint64_t>(r->attempts, 1));
            cpu_flat = cpu_flat && r->cpu_us_per_attempt <=
                                       first.cpu_us_per_attempt * kCpuFlatFactor + tick_per_attempt;
            mem_flat = mem_flat && static_cast<double>(r->hwm_kib) <=
                                       static_cast<double>(first.hwm_kib) + kMemoryFlatMiB * 1024;
            peak = std::max(peak, r->hwm_kib);
            const double share = r->interval_s > 0 ? 100 * static_cast<double>(r->ticks) *
                                                         us_per_tick / 1e6 / r->interval_s
                                                   : 0;
            cpu_text += strf("%s%g s: %.3f us (%.1f%% of a CPU)", cpu_text.empty() ? "" : ", ",
                             r->seconds, r->cpu_us_per_attempt, share);
            mem_text += strf("%s%g s: %s", mem_text.empty() ? "" : ", ", r->seconds,
                             mib(r->hwm_kib).c_str());
        }
        std::printf(
            "  goal: worker CPU per attempt flat, whatever the flood's length (within x%.1f of the "
            "%g s flood's)\n",
            kCpuFlatFactor, first.seconds);
        std::printf("        %s  -> %s\n", cpu_text.c_str(), verdict(cpu_flat));
        std::printf(
            "  goal: worker peak memory flat (within %.0f MiB of the %g s flood's) and under %.0f "
            "MiB, whatever the flood's length\n",
            kMemoryFlatMiB, first.seconds, kMemoryGoalMiB);
        std::printf("        VmHWM %s (idle %s)  -> %s\n", mem_text.c_str(),
                    mib(mem_rows.front().hwm_kib).c_str(),
                    verdict(mem_flat && static_cast<double>(peak) < kMemoryGoalMiB * 1024));
    }
    std::uint64_t attempts = 0;
    std::uint64_t connected = 0;
    for (const Variant* v : {&va, &vb, &vc, &vm}) {
        attempts += v->total.attempts;
        connected += v->total.connected;
    }
    std::printf("  connections of blocked uids that got through: %s of %s connect()s%s\n",
                grouped(connected).c_str(), grouped(attempts).c_str(),
                connected > 0 ? "  !!! BUG !!!" : "");
    std::printf("  total run time %.1f s\n", Seconds(Clock::now() - run_start).count());

    for (Variant* v : {&va, &vb, &vm}) {
        if (auto r = v->daemon->stop(); !r) {
            note("smtpfence-bench-worker: %s %s\n", v->key.c_str(), r.error().message().c_str());
        }
    }
    return broken ? 1 : 0;
}

int bench_main(int argc, char** argv) {
    Options opt;
    CLI::App app{
        "smtpfence-bench-worker: the NFQUEUE worker under a 4-process flood: refusal rate with "
        "the worker vs without the observe chain, attempts counted vs made, the worker's CPU per "
        "attempt and peak memory (root; runs in its own network namespaces)"};
    app.add_option("--rounds", opt.rounds,
                   "rounds; each floods every variant (default 5, --quick 2)")
        ->check(CLI::Range(1, 1000));
    app.add_option("--seconds", opt.seconds,
                   "seconds of measured flood per variant and round (default 3, --quick 0.3)")
        ->check(CLI::Range(0.05, 600.0));
    app.add_option("--slices", opt.slices,
                   "interleaved slices each round's flood is cut into (default 3, --quick 1)")
        ->check(CLI::Range(1, 1000));
    app.add_option("--skip", opt.skip,
                   "seconds at the start of each slice left out of the rates (default 0.25)")
        ->check(CLI::Range(0.0, 60.0));
    app.add_option("--memory-floods", opt.memory_floods,
                   "lengths in seconds of the continuous floods against a fresh worker (default "
                   "2 10 30, --quick 2 10)")
        ->check(CLI::Range(0.1, 3600.0));
    app.add_flag("--same-uid", opt.same_uid,
                 "all 4 processes as one uid (default: a distinct uid each)");
    app.add_flag("--quick", opt.quick, "a smoke run of under 20 s");
    CLI11_PARSE(app, argc, argv);
    if (opt.quick) {
        if (app.count("--rounds") == 0) {
            opt.rounds = 2;
        }
        if (app.count("--seconds") == 0) {
            opt.seconds = 0.3;
        }
        if (app.count("--slices") == 0) {
            opt.slices = 1;
        }
        if (app.count("--memory-floods") == 0) {
            opt.memory_floods = {2, 10};
        }
    }
    // The temporary directory is removed by the next run when this one is interrupted;
    // the daemons stop their workers when they get SIGTERM from PR_SET_PDEATHSIG.
    exit_on_interrupt("smtpfence-bench-worker");
    return run(opt);
}

}  // namespace
}  // namespace smtpfence::bench

int main(int argc, char** argv) {
    return smtpfence::bench::guarded_main("smtpfence-bench-worker",
                                          [&] { return smtpfence::bench::bench_main(argc, argv); });
}
