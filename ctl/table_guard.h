// The table's self-heal: puts the desired table back when someone else deletes,
// flushes or takes it, seen through nf_tables events (at once) or the check each
// second (the safety net when events are lost or unavailable).
#pragma once

#include <optional>
#include <string>

#include "ctl/daemon_state.h"
#include "nft/engine.h"
#include "nft/monitor.h"

namespace smtpfence {

class TableGuard {
  public:
    TableGuard(std::string table, nft::Engine& engine, DaemonState& state)
        : table_(std::move(table)), engine_(engine), state_(state) {}

    // Subscribes to the table's events; without them (warned) the check finds changes.
    void watch_events();
    [[nodiscard]] bool has_events() const { return monitor_.has_value(); }
    // The events socket to poll, -1 without one.
    [[nodiscard]] int events_fd() const;
    // Reads the events waiting and restores the table after a foreign change.
    void on_events();

    // Someone else changed the table: put the desired state back at once.
    void on_change(const nft::ForeignChange& change);
    // Is the table there, and ours? Restores it when not; waits while the first apply
    // is retried (state.retry).
    void check();
    // Applies the desired table again, counted in state.heal; left alone while
    // nothing is enforced.
    void restore(const std::string& who, const std::string& what);

  private:
    std::string table_;
    nft::Engine& engine_;
    DaemonState& state_;
    std::optional<nft::TableMonitor> monitor_;
};

}  // namespace smtpfence
