// smtpfencectl: the admin's tool. `apply --dry-run` shows the ruleset the policy
// produces, as nft text, without changing anything.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "common/log.h"
#include "ctl/daemon.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace {

using namespace smtpfence;

// The queue notation differs between the native expression and the xtables target;
// ask the kernel when we may (root), else assume the xtables target.
nft::QueueMode dry_run_queue_mode(const std::string& table) {
    if (geteuid() != 0)
        return nft::QueueMode::Xt;
    auto sock = nft::NetlinkSocket::open();
    if (!sock)
        return nft::QueueMode::Xt;
    nft::Engine engine(*sock);
    auto mode = engine.probe_queue_mode(table + "-probe");
    return mode ? *mode : nft::QueueMode::Xt;
}

int dry_run(const DaemonOptions& options) {
    auto desired = compute_desired(options, dry_run_queue_mode(options.table));
    if (!desired) {
        log::error(desired.error().message());
        return desired.error().code == 0 ? kExitUsage : kExitFailure;
    }
    for (const std::string& w : desired->warnings)
        log::warning(w);
    if (!desired->loaded.policy.enabled) {
        std::cout << "# SMTP_BLOCK is \"0\" in " << desired->loaded.policy.source
                  << ": no table would be programmed\n";
        return kExitOk;
    }
    std::cout << nft::render_nft(nft::build_ruleset(desired->spec));
    return kExitOk;
}

}  // namespace

static int run(int argc, char** argv) {
    log::set_program("smtpfencectl");
    DaemonOptions options;
    CLI::App app{"smtpfencectl: manage smtpfence, the outbound SMTP block"};
    app.require_subcommand(1);

    auto* apply =
        app.add_subcommand("apply", "show or apply the ruleset the configuration produces");
    bool dry = false;
    auto* config = apply->add_option("--config", options.config_path, "configuration file")
                       ->capture_default_str();
    apply->add_option("--table", options.table, "nftables table name")->capture_default_str();
    apply->add_option("--passwd", options.passwd_path, "passwd(5) file")->capture_default_str();
    apply->add_option("--group", options.group_path, "group(5) file")->capture_default_str();
    apply->add_flag("--dry-run", dry, "print the ruleset as nft text; change nothing");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? kExitOk : kExitUsage;
    }
    options.config_given = config->count() > 0;
    if (apply->parsed()) {
        if (!dry) {
            log::error(
                "apply without --dry-run goes through the daemon: use `smtpfenced --once` "
                "or send SIGHUP to smtpfenced");
            return kExitUsage;
        }
        return dry_run(options);
    }
    return kExitUsage;
}

int main(int argc, char** argv) {
    // Nothing is expected to throw but allocation failure; report it as one line.
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        smtpfence::log::error(std::string("fatal: ") + e.what());
        return smtpfence::kExitFailure;
    }
}
