// smtpfenced's main loop and composition root: it owns the daemon's state and one of
// each part sharing it (table guard, worker host, allowlist sync, request handlers,
// history queries),
// reloads on SIGHUP, a changed config file or a request, and serves the control socket.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_watch.h"
#include "ctl/allowlist_sync.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/dest_sync.h"
#include "ctl/first_apply.h"
#include "ctl/handlers.h"
#include "ctl/history_child.h"
#include "ctl/local_alerts.h"
#include "ctl/metrics_export.h"
#include "ctl/table_guard.h"
#include "ctl/worker_host.h"
#include "nft/engine.h"

namespace smtpfence {

class Controller {
  public:
    Controller(const DaemonOptions& options, nft::Engine& engine, const KernelFeatures& kernel,
               ctl::ControlServer& server);
    Controller(const Controller&) = delete;
    Controller& operator=(const Controller&) = delete;

    // The daemon's inputs (config, accounts, managed list), read after the file watches
    // are armed so that no change after the read goes unseen. An error here is a
    // configuration error.
    [[nodiscard]] Result<Desired> read_inputs();
    // When read_inputs() failed at start: the built-in defaults instead (fail closed:
    // compute_fallback), and the error kept in status until a reload succeeds.
    [[nodiscard]] Result<Desired> fallback_inputs(const Error& why);
    // The first apply of what read_inputs() returned. An error ends the daemon before
    // it detaches, unless a table a previous run left is in force: then that table
    // stays, the daemon serves, and the apply is tried again (FirstApply).
    [[nodiscard]] Result<void> start(Desired desired);
    // Until SIGTERM/SIGINT; returns the exit code.
    [[nodiscard]] int run(int signal_fd);

  private:
    [[nodiscard]] int poll_timeout(std::optional<std::chrono::milliseconds> watchdog,
                                   std::chrono::steady_clock::time_point next_ping);
    // Returns an exit code when the daemon must end.
    [[nodiscard]] std::optional<int> on_signal(int signal_fd);
    [[nodiscard]] Result<void> reload();
    void watch_files();
    // The accounts or allow.list changed: the allowlist and the exceptions follow.
    void refresh_accounts();
    void look_for_csf_rules();
    [[nodiscard]] std::optional<std::string> dispatch(const ctl::Request& r, const ctl::Peer& peer,
                                                      int client_fd);

    const DaemonOptions& options_;
    nft::Engine& engine_;
    KernelFeatures kernel_;
    ctl::ControlServer& server_;
    FileWatch accounts_watch_;
    FileWatch config_watch_;
    DaemonState state_;
    WorkerHost worker_;
    TableGuard guard_;
    FirstApply first_apply_;
    AllowlistSync allowlist_;
    DestSync dest_;
    Handlers handlers_;
    HistoryQueries history_;
    MetricsExporter metrics_;
    LocalAlerts alerts_;
    std::vector<pid_t> test_children_;  // `test`, until reaped
};

}  // namespace smtpfence
