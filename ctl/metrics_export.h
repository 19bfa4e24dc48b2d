// The metrics textfile's producer (docs/metrics.md): every kInterval from the main
// loop, and at once after an apply, it reads the kernel's counters and the daemon's
// state, renders them (ctl/metrics.h) and writes them (ctl/metrics_textfile.h).
// No network listener: node_exporter serves the file.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "ctl/attempt_totals.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/metrics.h"
#include "ctl/worker_host.h"
#include "nft/engine.h"

namespace smtpfence {

class MetricsExporter {
  public:
    using Clock = std::chrono::steady_clock;
    static constexpr std::chrono::seconds kInterval{5};

    MetricsExporter(const DaemonOptions& options, nft::Engine& engine, DaemonState& state,
                    const WorkerHost& worker)
        : options_(options), engine_(engine), state_(state), worker_(worker) {}

    // Each pass of the main loop: writes when kInterval has passed, or at once after
    // an apply, a reload that failed, a `remove` or a self-heal.
    void tick(Clock::time_point now = Clock::now());

  private:
    // What changes the state at once (compared on each pass: a few integers).
    using Events = std::tuple<std::uint64_t, bool, bool, bool, std::uint64_t>;
    [[nodiscard]] Events events() const;
    [[nodiscard]] MetricsSnapshot snapshot();
    [[nodiscard]] std::string path() const;
    void write();
    // Logs message unless it is the one logged last (a missing directory would
    // otherwise be logged every 5 s); "" forgets it, so that a recurrence is logged.
    void report(const std::string& message);

    const DaemonOptions& options_;
    nft::Engine& engine_;
    DaemonState& state_;
    const WorkerHost& worker_;
    AttemptTotals totals_;
    std::optional<std::uint64_t> explained_;
    std::optional<Clock::time_point> next_;
    Events written_events_;
    std::string logged_;
    std::string written_path_;  // the last path written, removed when the path changes
};

// history.db's explained total (nfq/history_schema.h: totals), read only; nullopt when
// there is no history (no worker yet, --no-worker) or a worker too old to keep one.
[[nodiscard]] Result<std::optional<std::uint64_t>> read_explained_total(
    const std::string& state_dir);

}  // namespace smtpfence
