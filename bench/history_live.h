// smtpfence-bench-history's measurements against a running smtpfenced (with its
// worker) whose state directory holds a built store (history_build.h): `smtpfencectl`
// queries end to end as root and as a customer, `status` while 4 heavy queries run, the
// peak memory of the daemon, of its query children and of the worker; then one step of
// retention on the store.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench/history_build.h"
#include "bench/report.h"
#include "common/error.h"

namespace smtpfence::bench {

struct LiveSpec {
    std::string daemon_path, worker_path, ctl_path;
    int runs = 20;          // of each query, as each reader
    int status_calls = 50;  // with and without the heavy queries
    // The heavy query run by 4 processes at once, over and over.
    std::vector<std::string> heavy{"attempts", "--since", "90d", "--limit", "100000"};
};

// A query's wall-clock times, smtpfencectl exec'd to its exit (output read whole).
struct QueryRow {
    std::string label;
    Spread root, user;  // user: the customer, CONTROL_READ = "all"
    bool as_root = true, as_user = true;
    std::uint64_t child_hwm_kib = 0;  // its query child's VmHWM, sampled (root's run)
};

struct LiveReport {
    std::string user;           // the customer reading: the account sending the most
    std::string quiet;          // an account that sends little
    double version_median = 0;  // `smtpfencectl status`: the fixed cost of a query
    std::vector<QueryRow> queries;
    Spread status_idle, status_loaded;  // `status` over the socket, in-process, seconds
    double children_during = 0;         // the daemon's query children at each loaded call, median
    std::uint64_t heavy_done = 0;
    // Heavy runs that ended in an error (the child's time limit, say): reported, not
    // counted as broken.
    std::uint64_t heavy_failures = 0;
    std::string heavy_failure;  // the first one's message
    Spread heavy;               // the heavy queries' own times under that load
    std::uint64_t heavy_child_hwm_kib = 0;
    double heavy_alone = 0;         // one heavy query alone, smtpfencectl to its exit
    double heavy_socket = 0;        // the same over the socket from the benchmark: the child's part
    std::uint64_t heavy_bytes = 0;  // its answer
    std::uint64_t daemon_hwm_kib = 0, daemon_rss_kib = 0;
    std::uint64_t worker_hwm_start_kib = 0, worker_hwm_kib = 0, worker_rss_kib = 0;
    std::uint64_t probe_attempts = 0;  // the customer's connects during the worker's start
    std::uint64_t failures = 0;        // queries that did not exit 0
    std::string first_failure, last_failure;
};

[[nodiscard]] Result<LiveReport> measure_live(const LiveSpec& spec, const StoreInfo& store);

struct PruneReport {
    int days = 0;  // HISTORY_DAYS given, so that the oldest records are due
    std::vector<double> step_seconds;
    std::uint64_t pruned = 0;
};

// `steps` calls of HistoryStore::prune_step on the store (its oldest records go).
[[nodiscard]] Result<PruneReport> measure_prune(const StoreInfo& store, int steps);

}  // namespace smtpfence::bench
