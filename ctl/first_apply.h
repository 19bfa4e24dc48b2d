// The daemon's first apply, and what follows when it fails while a table a previous
// run left is in force (issue 16): that table stays, the daemon serves its control
// socket and runs its worker, and the apply is tried again with backoff (and by each
// reload) rather than ending the daemon into a restart loop.
#pragma once

#include <chrono>

#include "common/error.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/worker_host.h"
#include "nft/engine.h"

namespace smtpfence {

// apply_desired, timed into state.last_apply when it succeeds.
[[nodiscard]] Result<void> apply_timed(nft::Engine& engine, const DaemonOptions& options,
                                       const Desired& desired, DaemonState& state);

class FirstApply {
  public:
    FirstApply(const DaemonOptions& options, nft::Engine& engine, DaemonState& state,
               WorkerHost& worker)
        : options_(options), engine_(engine), state_(state), worker_(worker) {}

    // Applies desired. Its error is returned (the daemon ends), unless a table a
    // previous run left is in force: then that table stays, the error is kept in
    // state.retry and logged, and {} is returned.
    [[nodiscard]] Result<void> apply(const Desired& desired,
                                     ApplyRetry::Clock::time_point now = ApplyRetry::Clock::now());
    // Each second: applies the policy in force again when a retry is due, shown in
    // systemd's STATUS=; success ends the retry and syncs the worker.
    void retry_if_due(ApplyRetry::Clock::time_point now = ApplyRetry::Clock::now());

  private:
    // A table is in force that a new daemon may take over (no live process owns it).
    [[nodiscard]] bool previous_table_in_force();

    const DaemonOptions& options_;
    nft::Engine& engine_;
    DaemonState& state_;
    WorkerHost& worker_;
};

}  // namespace smtpfence
