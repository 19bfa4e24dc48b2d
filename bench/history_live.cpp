#include "bench/history_live.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <thread>

#include "bench/bench_daemon.h"
#include "bench/sandbox.h"
#include "common/sqlite.h"
#include "ctl/control_server.h"
#include "nfq/history_schema.h"
#include "nfq/history_store.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;
using namespace std::chrono_literals;
using testing::Credentials;

constexpr const char* kTable = "sfbenchhist";
constexpr auto kQueryTimeout = 60s;

double since(Clock::time_point t0) {
    return Seconds(Clock::now() - t0).count();
}

// Whether the other end of a stop pipe closed it (or wrote): now, without waiting
// (testing::wait_readable does not poll once its deadline has come).
bool stopped(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

// The daemon's children other than its worker: its query children.
std::vector<pid_t> query_children(pid_t daemon, pid_t worker) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos)
            continue;
        const auto pid = static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10));
        if (pid != worker && testing::parent_of(pid) == daemon)
            out.push_back(pid);
    }
    return out;
}

// The largest VmHWM of the daemon's query children while it runs: a process of ours
// that polls /proc every 2 ms until told to stop (VmHWM only grows, so the last
// reading of a child before it exits is its peak, give or take 2 ms of growth).
class ChildPeak {
  public:
    static Result<ChildPeak> start(pid_t daemon, pid_t worker) {
        auto stop = testing::make_pipe();
        auto result = testing::make_pipe();
        if (!stop || !result)
            return fail(errno, "pipe");
        auto child = testing::spawn([&]() -> int {
            stop->write.reset();
            result->read.reset();
            std::uint64_t peak = 0;
            while (!testing::wait_readable(stop->read.get(), Clock::now() + 2ms)) {
                for (const pid_t pid : query_children(daemon, worker))
                    peak = std::max(peak, status_kib(pid, "VmHWM").value_or(0));
            }
            return testing::write_all(result->write.get(), &peak, sizeof peak) ? 0 : 1;
        });
        if (!child)
            return std::unexpected(child.error());
        return ChildPeak(std::move(*child), std::move(stop->write), std::move(result->read));
    }
    // The peak in kB, 0 when no child was seen.
    std::uint64_t finish() {
        stop_.reset();
        std::uint64_t peak = 0;
        if (!testing::read_exact(result_.get(), &peak, sizeof peak, Clock::now() + 5s))
            peak = 0;
        (void)child_.wait_for(5s);
        return peak;
    }

  private:
    ChildPeak(Child child, UniqueFd stop, UniqueFd result)
        : child_(std::move(child)), stop_(std::move(stop)), result_(std::move(result)) {}
    Child child_;
    UniqueFd stop_, result_;
};

struct Session {
    const LiveSpec& spec;
    std::string socket;
    Credentials user;
    LiveReport& report;

    // smtpfencectl args as who (root when nullopt): seconds to its exit.
    double ctl(const std::vector<std::string>& args, const std::optional<Credentials>& who) {
        std::vector<std::string> argv{spec.ctl_path, "--socket", socket};
        argv.insert(argv.end(), args.begin(), args.end());
        const auto t0 = Clock::now();
        const testing::RunResult r = testing::run(nullptr, argv, who, kQueryTimeout);
        const double s = since(t0);
        if (r.exit_code != 0 || r.out.empty()) {
            report.last_failure = argv[3] + ": " + tail(r.describe(), 200);
            if (report.failures++ == 0)
                report.first_failure = report.last_failure;
        }
        return s;
    }

    // `status` over the socket from this process: the daemon's loop, without an exec.
    Result<double> status() {
        ctl::Request req;
        req.command = ctl::Command::Status;
        const auto t0 = Clock::now();
        auto r = ctl::call(socket, req, std::chrono::milliseconds(5000));
        if (!r)
            return fail(EIO, "status", r.error().message);
        return since(t0);
    }
};

struct Query {
    std::string label;
    std::vector<std::string> args;
    bool as_root, as_user;
};

Result<void> time_queries(Session& s, const Daemon& d) {
    const std::string& x = s.report.user;
    const std::vector<Query> queries{
        {"top (today)", {"top"}, true, true},
        {"top --since 30d", {"top", "--since", "30d"}, true, true},
        {"attempts --account " + x + " --since 7d",
         {"attempts", "--account", x, "--since", "7d"},
         true,
         true},
        {"attempts --limit 100 (newest)", {"attempts", "--limit", "100"}, true, true},
    };
    std::vector<std::vector<double>> root(queries.size()), user(queries.size());
    std::vector<double> version;
    for (int run = 0; run < s.spec.runs; ++run) {
        version.push_back(s.ctl({"status"}, std::nullopt));
        for (std::size_t q = 0; q < queries.size(); ++q) {
            root[q].push_back(s.ctl(queries[q].args, std::nullopt));
            user[q].push_back(s.ctl(queries[q].args, s.user));
        }
    }
    s.report.version_median = spread(version).median;
    for (std::size_t q = 0; q < queries.size(); ++q) {
        // Once more as root, the child's memory sampled meanwhile.
        auto peak = ChildPeak::start(d.pid(), d.worker());
        if (!peak)
            return std::unexpected(peak.error());
        (void)s.ctl(queries[q].args, std::nullopt);
        s.report.queries.push_back(
            {queries[q].label, spread(root[q]), spread(user[q]), true, true, peak->finish()});
    }
    auto peak = ChildPeak::start(d.pid(), d.worker());
    if (!peak)
        return std::unexpected(peak.error());
    s.report.heavy_alone = s.ctl(s.spec.heavy, std::nullopt);
    s.report.heavy_child_hwm_kib = peak->finish();
    // The same from this process: the daemon's child alone, without smtpfencectl's
    // parsing and printing.
    ctl::Request req;
    req.command = ctl::Command::Attempts;
    req.since = std::time(nullptr) - std::int64_t{90} * 86400;
    req.limit = 100000;
    const auto t0 = Clock::now();
    auto answer = ctl::call(s.socket, req, std::chrono::milliseconds(60000));
    if (!answer)
        return fail(EIO, "attempts over the socket", answer.error().message);
    s.report.heavy_socket = since(t0);
    s.report.heavy_bytes = answer->size();
    return {};
}

// 4 processes running the heavy query over and over until told to stop, then saying
// how many they ran and how long each took.
struct HeavyResult {
    std::uint64_t done = 0;
    std::uint64_t failures = 0;
    double seconds[64] = {};  // the first 64
    char first_failure[256] = {};
};

Result<void> status_under_load(Session& s, const Daemon& d) {
    std::vector<double> idle, loaded, children;
    for (int i = 0; i < s.spec.status_calls; ++i) {
        auto t = s.status();
        if (!t)
            return std::unexpected(t.error());
        idle.push_back(*t);
        std::this_thread::sleep_for(20ms);
    }
    auto stop = testing::make_pipe();
    auto results = testing::make_pipe();
    if (!stop || !results)
        return fail(errno, "pipe");
    std::vector<Child> loaders;
    for (int i = 0; i < 4; ++i) {
        auto c = testing::spawn([&]() -> int {
            stop->write.reset();
            results->read.reset();
            HeavyResult r;
            const std::uint64_t failures = s.report.failures;
            while (!stopped(stop->read.get())) {
                const double t = s.ctl(s.spec.heavy, std::nullopt);
                if (r.done < 64)
                    r.seconds[r.done] = t;
                ++r.done;
            }
            r.failures = s.report.failures - failures;
            if (r.failures > 0) {
                (void)std::snprintf(r.first_failure, sizeof r.first_failure, "%s",
                                    s.report.last_failure.c_str());
            }
            return testing::write_all(results->write.get(), &r, sizeof r) ? 0 : 1;
        });
        if (!c)
            return std::unexpected(c.error());
        loaders.push_back(std::move(*c));
    }
    stop->read.reset();
    results->write.reset();
    // Until all 4 run in the daemon's children.
    (void)testing::wait_until([&] { return query_children(d.pid(), d.worker()).size() >= 4; },
                              10000ms, 5ms);
    for (int i = 0; i < s.spec.status_calls; ++i) {
        auto t = s.status();
        if (!t)
            return std::unexpected(t.error());
        loaded.push_back(*t);
        children.push_back(static_cast<double>(query_children(d.pid(), d.worker()).size()));
        std::this_thread::sleep_for(20ms);
    }
    stop->write.reset();
    std::vector<double> heavy;
    for (std::size_t i = 0; i < loaders.size(); ++i) {
        HeavyResult r;
        if (!testing::read_exact(results->read.get(), &r, sizeof r, Clock::now() + kQueryTimeout))
            return fail(ETIMEDOUT, "the heavy queries did not stop");
        s.report.heavy_done += r.done;
        s.report.heavy_failures += r.failures;
        if (r.failures > 0 && s.report.heavy_failure.empty())
            s.report.heavy_failure = r.first_failure;
        heavy.insert(heavy.end(), r.seconds, r.seconds + std::min<std::uint64_t>(r.done, 64));
    }
    s.report.status_idle = spread(idle);
    s.report.status_loaded = spread(loaded);
    s.report.children_during = spread(children).median;
    s.report.heavy = spread(heavy);
    return {};
}

}  // namespace

Result<LiveReport> measure_live(const LiveSpec& spec, const StoreInfo& store) {
    LiveReport report;
    const Population pop = Population::make(kAccounts);
    const BenchAccount& heavy = pop.accounts.front();
    report.user = heavy.name;
    report.quiet = pop.accounts.back().name;
    // The run's files: readable by the customer, who needs the control socket.
    auto tmp = testing::TempDir::create({"smtpfence-bench-history", "/tmp", 0755});
    if (!tmp)
        return std::unexpected(tmp.error());
    const std::string config =
        tmp->write("smtpfence.conf",
                   // Retention wide enough that the worker keeps the store as built.
                   "SMTP_BLOCK = \"1\"\nCONTROL_READ = \"all\"\nHISTORY_DAYS = \"3650\"\n"
                   "HISTORY_MAX_MB = \"1048576\"\n");
    const std::string passwd = tmp->write("passwd", pop.passwd());
    const std::string group = tmp->write("group", pop.group());
    auto remote = Remote::create();
    if (!remote)
        return std::unexpected(remote.error());
    auto ns = remote->add_client();
    if (!ns)
        return std::unexpected(ns.error());
    note("starting smtpfenced and its worker on the store...\n");
    auto d = Daemon::start(*ns, DaemonSpec{.program = "smtpfence-bench-history",
                                           .daemon_path = spec.daemon_path,
                                           .worker_path = spec.worker_path,
                                           .table = kTable,
                                           .config = config,
                                           .passwd = passwd,
                                           .group = group,
                                           .dir = tmp->path(),
                                           .state_dir = store.state_dir});
    if (!d)
        return std::unexpected(d.error());
    // Its start (recovery, the accounts) done: bound to the queue, and a moment later.
    std::this_thread::sleep_for(1s);
    d->refresh_worker();
    report.worker_hwm_start_kib = status_kib(d->worker(), "VmHWM").value_or(0);
    // A little writing: the customer's connects, refused; the worker explains some and
    // counts the rest, and commits them with its checkpoints.
    ProbeSpec probe{.uid = heavy.uid,
                    .gid = heavy.uid,
                    .addr = kRemoteAddr,
                    .seconds = 1.5,
                    .max_attempts = 1'000'000'000};
    auto probed = probe_connects(*ns, probe);
    if (!probed)
        return std::unexpected(probed.error().wrap("the customer's connects"));
    if (probed->connected > 0)
        return fail(0, "BUG: a connect of a blocked customer got through");
    report.probe_attempts = probed->attempts;
    std::this_thread::sleep_for(2500ms);  // its reconciliations (every second)

    Session s{spec, d->control_socket(), Credentials{heavy.name, heavy.uid, heavy.uid, {}}, report};
    note("timing the queries (%d runs each)...\n", spec.runs);
    if (auto r = time_queries(s, *d); !r)
        return std::unexpected(r.error());
    std::vector<double> quiet;
    const Credentials quiet_user{
        pop.accounts.back().name, pop.accounts.back().uid, pop.accounts.back().uid, {}};
    for (int run = 0; run < spec.runs; ++run)
        quiet.push_back(s.ctl({"attempts", "--limit", "100"}, quiet_user));
    report.queries.push_back({"attempts --limit 100, as " + report.quiet + " (sends little)",
                              Spread{}, spread(quiet), false, true, 0});
    note("status while 4 heavy queries run...\n");
    if (auto r = status_under_load(s, *d); !r)
        return std::unexpected(r.error());
    report.daemon_hwm_kib = status_kib(d->pid(), "VmHWM").value_or(0);
    report.daemon_rss_kib = status_kib(d->pid(), "VmRSS").value_or(0);
    d->refresh_worker();
    report.worker_hwm_kib = status_kib(d->worker(), "VmHWM").value_or(0);
    report.worker_rss_kib = status_kib(d->worker(), "VmRSS").value_or(0);
    if (auto r = d->stop(); !r)
        return std::unexpected(r.error());
    return report;
}

Result<PruneReport> measure_prune(const StoreInfo& store, int steps) {
    PruneReport out;
    const std::time_t now = std::time(nullptr);
    {
        auto db = sql::Database::open(store.state_dir + "/" + nfq::history::kFileName,
                                      sql::Database::Mode::ReadOnly);
        if (!db)
            return std::unexpected(db.error());
        auto oldest = db->query_int("SELECT min(epoch) FROM records");
        if (!oldest)
            return std::unexpected(oldest.error());
        // The oldest day's records are due, nothing younger.
        out.days = std::max<int>(1, static_cast<int>((now - oldest->value_or(now)) / 86400) - 1);
    }
    auto h = nfq::HistoryStore::open(
        store.state_dir,
        nfq::HistoryLimits{.days = out.days, .max_bytes = std::uint64_t{1} << 40U});
    if (!h)
        return std::unexpected(h.error());
    for (int i = 0; i < steps; ++i) {
        const auto t0 = Clock::now();
        auto more = h->prune_step(now);
        out.step_seconds.push_back(since(t0));
        if (!more)
            return std::unexpected(more.error());
    }
    out.pruned = h->counters().pruned;
    return out;
}

}  // namespace smtpfence::bench
