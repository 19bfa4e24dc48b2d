// smtpfenced: the controller. Programs table inet smtpfence from the policy and keeps
// it in force; see docs/commands.md and `smtpfenced --help`.
#include <CLI/CLI.hpp>

#include "common/log.h"
#include "ctl/daemon.h"

static int run(int argc, char** argv) {
    using namespace smtpfence;
    log::set_program("smtpfenced");
    DaemonOptions options;
    bool once = false;
    bool remove = false;
    bool verbose = false;

    CLI::App app{
        "smtpfenced: refuses outbound SMTP for every user but root, the MTA and an "
        "allowlist, in the kernel (nftables)"};
    app.option_defaults()->always_capture_default();
    app.set_version_flag("--version", std::string("smtpfenced ") + SMTPFENCE_VERSION);
    auto* config =
        app.add_option("--config", options.config_path, "configuration file (csf.conf syntax)");
    app.add_option("--csf-conf", options.csf_conf_path,
                   "take the SMTP settings from CSF's csf.conf (e.g. /etc/csf/csf.conf), read "
                   "as CSF reads them and re-read when it changes; --config still gives "
                   "smtpfence's own settings");
    app.add_flag("--foreground", options.foreground, "do not detach (for systemd and tests)");
    app.add_option("--table", options.table, "name of our nftables table (family inet)")
        ->check([](const std::string& name) -> std::string {
            if (name.empty() || name.size() > 200)
                return "table name must be 1-200 characters";
            for (const char c : name) {
                if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_' && c != '-') {
                    return "table name may contain only letters, digits, '_' and '-'";
                }
            }
            return {};
        });
    app.add_option("--control-socket", options.control_socket, "control socket path");
    app.add_option("--allow-list", options.allow_list_path,
                   "the allowlist smtpfencectl allow/deny manage (default: allow.list beside "
                   "the config file)");
    app.add_option("--resolv-conf", options.resolv_conf_path,
                   "resolver configuration for the names of destination exceptions")
        ->capture_default_str();
    app.add_option("--state-dir", options.state_dir,
                   "state directory (attempt history and stream)");
    app.add_option("--metrics-textfile", options.metrics_textfile,
                   "the metrics textfile when the configuration sets no METRICS_TEXTFILE")
        ->capture_default_str();
    app.add_option("--virtual-dir", options.virtual_dir, "DirectAdmin's /etc/virtual root");
    app.add_option("--passwd", options.passwd_path, "passwd(5) file to resolve user names");
    app.add_option("--group", options.group_path, "group(5) file to resolve group names");
    app.add_option("--worker", options.worker_path,
                   "NFQUEUE worker binary (default: smtpfence-worker next to smtpfenced)");
    app.add_flag("--no-worker", options.no_worker,
                 "do not start the worker: refuse and count in the kernel, explain nothing");
    app.add_flag("--once", once, "apply the policy and exit (no daemon)");
    app.add_flag("--remove", remove,
                 "delete the table and exit: outbound SMTP is no longer guarded");
    app.add_flag("-v,--verbose", verbose, "debug logging");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? kExitOk : kExitUsage;
    }
    options.config_given = config->count() > 0;
    log::set_verbose(verbose);
    if (remove)
        return remove_table(options);
    if (once)
        return apply_once(options);
    return run_daemon(options);
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
