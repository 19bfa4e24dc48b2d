// Keeps the allowlist in the kernel in step with the accounts and the managed list:
// when either changes, the names are re-resolved with the policy in force and only
// the difference is applied, as set-element changes (O(changes)).
#pragma once

#include "common/error.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "nft/engine.h"

namespace smtpfence {

class AllowlistSync {
  public:
    AllowlistSync(const DaemonOptions& options, nft::Engine& engine, const KernelFeatures& kernel,
                  DaemonState& state, ctl::ControlServer& server)
        : options_(options), engine_(engine), kernel_(kernel), state_(state), server_(server) {}

    // Re-reads the accounts and the managed list and applies the difference; on error
    // the rules and the state in force are unchanged.
    [[nodiscard]] Result<void> refresh();

  private:
    const DaemonOptions& options_;
    nft::Engine& engine_;
    KernelFeatures kernel_;
    DaemonState& state_;
    ctl::ControlServer& server_;
};

}  // namespace smtpfence
