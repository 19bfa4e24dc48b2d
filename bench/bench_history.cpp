// smtpfence-bench-history: the attempt history at 1M and 10M records (--quick: 20k and
// 100k). A program, not a test: it prints rates, latencies and memory, and its exit
// status is non-zero only when something broke (a store or daemon that could not be set
// up, a query that failed, a blocked connect that got through): timing never fails it.
//
// For each size N:
//   1. a store of N records written through the worker's own writer, HistoryStore
//      (history_build.h): the write rate (only the writer's calls timed, a commit every
//      4,000 records, a checkpoint every tenth commit) and history.db's size after a WAL
//      checkpoint, per million records. Kept in /var/tmp/smtpfence-bench-history/<N>
//      and reused by the next run (--fresh rebuilds);
//   2. smtpfenced with its worker in a network namespace of the run, its --state-dir the
//      store's (the worker adds the few records of a customer's refused connects at
//      start: "a little writing"), CONTROL_READ = "all", HISTORY_DAYS and
//      HISTORY_MAX_MB wide enough that retention leaves the store alone, its passwd and
//      group the store's 2,000 accounts (never the host's files);
//   3. `smtpfencectl top`, `top --since 30d`, `attempts --account X --since 7d` and
//      `attempts --limit 100`, each exec'd --runs times as root and as X (a customer,
//      the account that sends the most): wall-clock time to exit, median and max;
//   4. `status` over the control socket while 4 processes run `attempts --since 90d
//      --limit 100000` over and over, against `status` with nothing else running;
//   5. peak memory: the daemon's VmHWM after all that, its query children's (VmHWM read
//      from /proc every 2 ms while one runs), the worker's after its start on the store
//      and after it wrote;
//   6. HistoryStore::prune_step on the store (its oldest records, which no query
//      above reads): how long one step (HistoryStore::kPruneBatch records) holds the worker.
#include <sqlite3.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "bench/bench_daemon.h"
#include "bench/bench_main.h"
#include "bench/history_build.h"
#include "bench/history_live.h"
#include "bench/report.h"
#include "nfq/history_schema.h"

#ifndef SMTPFENCED_PATH
#error "SMTPFENCED_PATH must be defined by CMake"
#endif
#ifndef SMTPFENCE_WORKER_PATH
#error "SMTPFENCE_WORKER_PATH must be defined by CMake"
#endif
#ifndef SMTPFENCECTL_PATH
#error "SMTPFENCECTL_PATH must be defined by CMake"
#endif

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;

// The goals.
constexpr double kQueryGoal = 0.100;
constexpr double kStatusGoal = 0.020;
constexpr double kMemoryGoalKiB = 32 * 1024;

struct Options {
    std::vector<std::uint64_t> records{1'000'000, 10'000'000};
    int runs = 20;
    int status_calls = 50;
    int prune_steps = 5;
    bool fresh = false;
    bool quick = false;
};

const char* verdict(bool met) {
    return met ? "goal met" : "goal NOT met";
}

std::string ms(double seconds) {
    return strf("%.1f", seconds * 1e3);
}

std::string when(std::time_t t) {
    char buf[32];
    std::tm tm{};
    (void)::localtime_r(&t, &tm);
    (void)std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
    return buf;
}

void print_header(const Options& opt) {
    utsname uts{};
    (void)::uname(&uts);
    std::printf(
        "smtpfence-bench-history: the attempt history at %zu size(s); kernel %s %s, %ld CPUs, "
        "SQLite %s, schema %d\n",
        opt.records.size(), uts.sysname, uts.release, ::sysconf(_SC_NPROCESSORS_ONLN),
        sqlite3_libversion(), nfq::history::kSchemaVersion);
    std::printf(
        "store: %zu accounts (uids 10001..), a web server uid (33) billed by working directory, "
        "90 days up to the build, ~2%% counted-only records; written through HistoryStore, a "
        "commit per 4,000 records, a checkpoint every 10th commit\n"
        "write: time in HistoryStore's calls only (explained/counted_only/checkpoint/commit), "
        "not the generator's; size: history.db's st_size after PRAGMA wal_checkpoint(TRUNCATE)\n"
        "queries: smtpfencectl exec'd to its exit (text output read whole), %d runs each, "
        "median / max in ms; \"customer\": a uid of the store's, CONTROL_READ = \"all\" "
        "(only its own records)\n"
        "status: smtpfenced's `status` over its socket from the benchmark itself (no exec), %d "
        "calls 20 ms apart, idle and while 4 processes run `attempts --since 90d --limit "
        "100000` over and over\n"
        "memory: VmHWM from /proc/PID/status (the query child's sampled every 2 ms while it "
        "runs, the largest over the queries)\n\n",
        kAccounts, opt.runs, opt.status_calls);
}

struct Goals {
    bool queries = true, status = true, memory = true;
};

void print_size(const StoreInfo& st, const LiveReport& live, const PruneReport& prune,
                Goals& goals) {
    std::printf(
        "== %s records: %s, built %s%s\n", grouped(st.records).c_str(), st.state_dir.c_str(),
        when(st.built).c_str(),
        st.reused ? " (reused: it matched N and the schema; write figures from its build)" : "");
    const double n = static_cast<double>(st.records);
    const double tenth = static_cast<double>(st.records / 10);
    std::printf(
        "write   %s records/s = %.2f us/record over the whole build (%s s, %s commits, %s "
        "checkpoints); last tenth %s records/s = %.2f us/record\n",
        grouped(n / st.write_seconds).c_str(), st.write_seconds / n * 1e6,
        strf("%.1f", st.write_seconds).c_str(), grouped(st.commits).c_str(),
        grouped(st.checkpoints).c_str(), grouped(tenth / st.last_tenth_seconds).c_str(),
        st.last_tenth_seconds / tenth * 1e6);
    std::printf("size    history.db %s bytes = %.1f MiB per million records (%.0f bytes/record)\n",
                grouped(st.file_bytes).c_str(),
                static_cast<double>(st.file_bytes) / n * 1e6 / (1 << 20),
                static_cast<double>(st.file_bytes) / n);
    std::printf("\n%-48s %10s %8s %10s %8s %12s\n", "query (ms, exec to exit)", "root med", "max",
                "cust. med", "max", "child VmHWM");
    std::printf("%-48s %10s %8s %10s %8s %12s\n", "smtpfencectl status (no history: the floor)",
                ms(live.version_median).c_str(), "", "", "", "");
    for (const QueryRow& q : live.queries) {
        const auto cell = [](bool on, double v) { return on ? ms(v) : std::string("-"); };
        std::printf("%-48s %10s %8s %10s %8s %12s\n", q.label.c_str(),
                    cell(q.as_root, q.root.median).c_str(), cell(q.as_root, q.root.max).c_str(),
                    cell(q.as_user, q.user.median).c_str(), cell(q.as_user, q.user.max).c_str(),
                    q.child_hwm_kib > 0 ? mib(q.child_hwm_kib).c_str() : "-");
        goals.queries = goals.queries && (!q.as_root || q.root.median < kQueryGoal) &&
                        (!q.as_user || q.user.median < kQueryGoal);
    }
    std::printf("(customer: %s, who sends the most; child VmHWM: a root run's query child)\n",
                live.user.c_str());
    std::printf(
        "\nstatus  idle %s ms median, %s max; with 4 heavy queries (%g children running, "
        "median) %s ms median, %s max  -> %s\n",
        ms(live.status_idle.median).c_str(), ms(live.status_idle.max).c_str(), live.children_during,
        ms(live.status_loaded.median).c_str(), ms(live.status_loaded.max).c_str(),
        verdict(live.status_loaded.max < kStatusGoal));
    goals.status = goals.status && live.status_loaded.max < kStatusGoal;
    std::printf(
        "heavy   attempts --since 90d --limit 100000: alone %s ms (over the socket without "
        "smtpfencectl %s ms, answer %s bytes), its child's VmHWM %s; %s runs under the load "
        "above, %s ms median, %s max\n",
        ms(live.heavy_alone).c_str(), ms(live.heavy_socket).c_str(),
        grouped(live.heavy_bytes).c_str(), mib(live.heavy_child_hwm_kib).c_str(),
        grouped(live.heavy_done).c_str(), ms(live.heavy.median).c_str(),
        ms(live.heavy.max).c_str());
    if (live.heavy_failures > 0) {
        std::printf("        %s of those %s heavy runs ended in an error; the first: %s\n",
                    grouped(live.heavy_failures).c_str(), grouped(live.heavy_done).c_str(),
                    live.heavy_failure.c_str());
    }
    std::uint64_t child = live.heavy_child_hwm_kib;
    for (const QueryRow& q : live.queries)
        child = std::max(child, q.child_hwm_kib);
    const std::uint64_t peak =
        std::max({live.daemon_hwm_kib, child, live.worker_hwm_start_kib, live.worker_hwm_kib});
    std::printf(
        "memory  daemon VmHWM %s (VmRSS %s) after all queries; query child at most %s; worker "
        "VmHWM %s after its start (recovery), %s after %s refused connects and the queries "
        "(VmRSS %s)  -> %s\n",
        mib(live.daemon_hwm_kib).c_str(), mib(live.daemon_rss_kib).c_str(), mib(child).c_str(),
        mib(live.worker_hwm_start_kib).c_str(), mib(live.worker_hwm_kib).c_str(),
        grouped(live.probe_attempts).c_str(), mib(live.worker_rss_kib).c_str(),
        verdict(static_cast<double>(peak) < kMemoryGoalKiB));
    goals.memory = goals.memory && static_cast<double>(peak) < kMemoryGoalKiB;
    const Spread p = spread(prune.step_seconds);
    std::printf(
        "prune   prune_step %s ms median, %s max over %zu steps (HISTORY_DAYS %d: the oldest "
        "records due), %s records removed\n\n",
        ms(p.median).c_str(), ms(p.max).c_str(), prune.step_seconds.size(), prune.days,
        grouped(prune.pruned).c_str());
    (void)std::fflush(stdout);
}

int run(const Options& opt) {
    if (::geteuid() != 0) {
        note("smtpfence-bench-history: must run as root (network namespaces, nftables)\n");
        return 1;
    }
    const auto start = Clock::now();
    print_header(opt);
    (void)std::fflush(stdout);
    Goals goals;
    std::uint64_t failures = 0;
    for (const std::uint64_t n : opt.records) {
        auto store = build_or_reuse(n, opt.fresh);
        if (!store) {
            note("smtpfence-bench-history: store of %s records: %s\n", grouped(n).c_str(),
                 store.error().message().c_str());
            return 1;
        }
        LiveSpec spec{.daemon_path = SMTPFENCED_PATH,
                      .worker_path = SMTPFENCE_WORKER_PATH,
                      .ctl_path = SMTPFENCECTL_PATH,
                      .runs = opt.runs,
                      .status_calls = opt.status_calls};
        auto live = measure_live(spec, *store);
        if (!live) {
            note("smtpfence-bench-history: %s records: %s\n", grouped(n).c_str(),
                 live.error().message().c_str());
            return 1;
        }
        auto prune = measure_prune(*store, opt.prune_steps);
        if (!prune) {
            note("smtpfence-bench-history: prune: %s\n", prune.error().message().c_str());
            return 1;
        }
        print_size(*store, *live, *prune, goals);
        if (live->failures > 0) {
            failures += live->failures;
            std::printf("!!! %s query run(s) failed; the first: %s !!!\n\n",
                        grouped(live->failures).c_str(), live->first_failure.c_str());
        }
    }
    std::printf(
        "Summary\n  goal: top (today, 30 days), attempts --account X --since 7d and "
        "attempts --limit 100 under 100 ms (median), root and customer  -> %s\n",
        verdict(goals.queries));
    std::printf("  goal: status within 20 ms (max) while 4 queries run  -> %s\n",
                verdict(goals.status));
    std::printf("  goal: daemon, query child and worker peak memory under 32 MiB  -> %s\n",
                verdict(goals.memory));
    std::printf("  total run time %.1f s\n",
                std::chrono::duration<double>(Clock::now() - start).count());
    return failures > 0 ? 1 : 0;
}

int bench_main(int argc, char** argv) {
    Options opt;
    CLI::App app{
        "smtpfence-bench-history: the attempt history at 1M and 10M records: write rate, store "
        "size, smtpfencectl top/attempts latency as root and as a customer, status while 4 "
        "queries run, peak memory of daemon, query child and worker, one retention step "
        "(root; runs in its own network namespaces; stores kept in " +
        std::string(kStoreRoot) + ")"};
    app.add_option("--records", opt.records,
                   "store sizes, in records (default 1000000 10000000, --quick 20000 100000)")
        ->check(CLI::Range(std::uint64_t{1000}, std::uint64_t{1'000'000'000}));
    app.add_option("--runs", opt.runs, "runs of each query as each reader (default 20, --quick 5)")
        ->check(CLI::Range(1, 1000));
    app.add_option("--status-calls", opt.status_calls,
                   "status calls, idle and under load (default 50, --quick 20)")
        ->check(CLI::Range(1, 10000));
    app.add_option("--prune-steps", opt.prune_steps, "retention steps timed (default 5)")
        ->check(CLI::Range(1, 1000));
    app.add_flag("--fresh", opt.fresh, "build the stores again even when one can be reused");
    app.add_flag("--quick", opt.quick, "a smoke run: small stores, fewer runs");
    CLI11_PARSE(app, argc, argv);
    if (opt.quick) {
        if (app.count("--records") == 0)
            opt.records = {20'000, 100'000};
        if (app.count("--runs") == 0)
            opt.runs = 5;
        if (app.count("--status-calls") == 0)
            opt.status_calls = 20;
    }
    // A store interrupted while built is rebuilt by the next run (no bench.json yet).
    exit_on_interrupt("smtpfence-bench-history");
    return run(opt);
}

}  // namespace
}  // namespace smtpfence::bench

int main(int argc, char** argv) {
    return smtpfence::bench::guarded_main("smtpfence-bench-history",
                                          [&] { return smtpfence::bench::bench_main(argc, argv); });
}
