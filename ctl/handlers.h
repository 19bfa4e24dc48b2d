// The answers to control requests (all but `test`, see connect_test.h, and `attempts`
// and `top`, see history_child.h), from the
// daemon's state and parts. Who may ask what is checked before, by the ControlServer.
#pragma once

#include <expected>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/error.h"
#include "ctl/allowlist_sync.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/dest_sync.h"
#include "ctl/protocol.h"
#include "ctl/table_guard.h"
#include "ctl/worker_host.h"
#include "nft/engine.h"

namespace smtpfence {

using Answer = std::expected<nlohmann::json, ctl::ProtocolError>;

[[nodiscard]] std::unexpected<ctl::ProtocolError> refuse(ctl::ErrorCode code, std::string message);

class Handlers {
  public:
    // reload: the daemon's reload (as SIGHUP), for the `reload` request.
    Handlers(const DaemonOptions& options, nft::Engine& engine, DaemonState& state,
             WorkerHost& worker, const TableGuard& guard, AllowlistSync& allowlist, DestSync& dest,
             const ctl::ControlServer& server, std::function<Result<void>()> reload)
        : options_(options),
          engine_(engine),
          state_(state),
          worker_(worker),
          guard_(guard),
          allowlist_(allowlist),
          dest_(dest),
          server_(server),
          reload_(std::move(reload)) {}

    [[nodiscard]] Answer answer(const ctl::Request& r);

  private:
    [[nodiscard]] Answer status();
    [[nodiscard]] Answer list();
    [[nodiscard]] Answer check(const ctl::Request& r);
    [[nodiscard]] Answer change(const ctl::Request& r);
    [[nodiscard]] Answer change_exception(const ctl::Request& r);
    // check --to: which exceptions let the user reach the destination, port by port.
    void check_destination(const Account& a, const std::string& to, nlohmann::json& j) const;
    [[nodiscard]] Answer reload();
    [[nodiscard]] Answer remove();
    // Parts of status and change.
    void add_policy_status(nlohmann::json& j) const;
    void add_worker_status(nlohmann::json& j) const;
    [[nodiscard]] std::optional<std::string> still_allowed(bool user,
                                                           const std::string& name) const;

    const DaemonOptions& options_;
    nft::Engine& engine_;
    DaemonState& state_;
    WorkerHost& worker_;
    const TableGuard& guard_;
    AllowlistSync& allowlist_;
    DestSync& dest_;
    const ctl::ControlServer& server_;
    std::function<Result<void>()> reload_;
};

}  // namespace smtpfence
