// smtpfenced's parts (state, table guard, first apply, worker host, allowlist sync,
// handlers) built as the Controller builds them, on files in a temporary directory and
// a fake kernel that keeps tables: what the handler, table guard and first apply tests
// share. The worker is off (--no-worker), so nothing is forked or bound.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "ctl/allowlist_sync.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/dest_sync.h"
#include "ctl/first_apply.h"
#include "ctl/handlers.h"
#include "ctl/table_guard.h"
#include "ctl/worker_host.h"
#include "nft/engine.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/fake_kernel.h"

namespace smtpfence::testing {

inline constexpr const char* kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "mail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n"
    "alice:x:1001:1001::/home/alice:/bin/bash\n"
    "bob:x:1002:1002::/home/bob:/bin/bash\n"
    "carol:x:1003:50::/home/carol:/bin/bash\n";
inline constexpr const char* kGroup =
    "root:x:0:\n"
    "mail:x:8:\n"
    "admins:x:50:dave\n"
    "alice:x:1001:\n"
    "bob:x:1002:\n";

class DaemonPartsTest : public ::testing::Test {
  protected:
    DaemonPartsTest() { kernel.keeps_tables = true; }

    // Writes the config and puts it in force as the daemon's start does (without the
    // event socket and the CSF rules probe).
    void load(const std::string& config = "") {
        dir.write("smtpfence.conf", config);
        auto desired = compute_desired(options, features);
        ASSERT_TRUE(desired.has_value()) << desired.error().message();
        dest.prepare(*desired);
        auto applied = apply_desired(engine, options, *desired);
        ASSERT_TRUE(applied.has_value()) << applied.error().message();
        dest.apply_succeeded();
        adopt(state, std::move(*desired), server);
    }

    [[nodiscard]] Answer ask(ctl::Command command) {
        ctl::Request r;
        r.command = command;
        return handlers.answer(r);
    }
    [[nodiscard]] Answer ask_user(ctl::Command command, const std::string& user) {
        ctl::Request r;
        r.command = command;
        r.user = user;
        return handlers.answer(r);
    }

    [[nodiscard]] const FakeTable* table() const { return kernel.table("smtpfence"); }

    TempDir dir;
    DaemonOptions options = options_in(dir);
    FakeKernel kernel;
    nft::Engine engine{kernel};
    KernelFeatures features{nft::QueueMode::Native, false};
    ctl::ControlServer server = ctl::ControlServer::listen(dir.path() + "/control.sock").value();
    DaemonState state;
    WorkerHost worker{options, features.queue};
    TableGuard guard{options.table, engine, state};
    FirstApply first_apply{options, engine, state, worker};
    AllowlistSync allowlist{options, engine, features, state, server};
    DestSync dest{options, engine, state};
    // What the `reload` request gets from the daemon's reload.
    Result<void> reload_result;
    Handlers handlers{options, engine, state,
                      worker,  guard,  allowlist,
                      dest,    server, [this] { return reload_result; }};

  private:
    static DaemonOptions options_in(const TempDir& dir) {
        DaemonOptions o;
        o.config_path = dir.path() + "/smtpfence.conf";
        o.config_given = true;
        o.passwd_path = dir.write("passwd", kPasswd);
        o.group_path = dir.write("group", kGroup);
        o.state_dir = dir.path() + "/state";
        o.virtual_dir = dir.path() + "/virtual";  // none: DirectAdmin's pipeline is off
        o.control_socket = dir.path() + "/control.sock";
        o.no_worker = true;
        // No name server: the tests' exceptions are addresses and networks.
        o.resolv_conf_path = dir.write("resolv.conf", "nameserver 127.0.0.1\n");
        return o;
    }
};

}  // namespace smtpfence::testing
