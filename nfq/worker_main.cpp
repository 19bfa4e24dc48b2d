// smtpfence-worker: the NFQUEUE worker, started and supervised by smtpfenced.
#include <CLI/CLI.hpp>

#include "common/log.h"
#include "nfq/worker.h"

namespace {

int run(int argc, char** argv) {
    using namespace smtpfence;
    log::set_program("smtpfence-worker");
    nfq::WorkerOptions options;
    CLI::App app{"smtpfence-worker: explains and counts refused direct SMTP attempts"};
    app.add_option("--table", options.table, "nftables table (family inet)")->capture_default_str();
    app.add_option("--queue-num", options.queue_num, "NFQUEUE number")->capture_default_str();
    app.add_option("--queue-fd", options.queue_fd,
                   "an NFQUEUE socket already bound to --queue-num, inherited from smtpfenced");
    app.add_option("--daemon-pid", options.daemon_pid,
                   "the smtpfenced that started this worker: exit when it does");
    app.add_option("--state-dir", options.state_dir, "where history.db and attempts.jsonl live")
        ->capture_default_str();
    app.add_option("--history-days", options.history_days,
                   "keep attempt records this many days (HISTORY_DAYS)")
        ->capture_default_str()
        ->check(CLI::Range(1, 3650));
    app.add_option("--history-max-mb", options.history_max_mb,
                   "keep the history under this many MiB (HISTORY_MAX_MB)")
        ->capture_default_str()
        ->check(CLI::Range(16, 1048576));
    app.add_option("--passwd", options.passwd_path, "passwd(5) file")->capture_default_str();
    app.add_option("--group", options.group_path, "group(5) file")->capture_default_str();
    app.add_option("--web-users", options.web_users, "shared web server accounts")->delimiter(',');
    app.add_option("--explain-per-process", options.explain_per_process,
                   "attempts explained per process before counting only")
        ->capture_default_str();
    app.add_flag("--da-pipeline", options.da_enabled,
                 "record attempts in DirectAdmin's limit pipeline (--virtual-dir)");
    app.add_option("--virtual-dir", options.virtual_dir, "DirectAdmin's /etc/virtual")
        ->capture_default_str();
    app.add_option("--da-attempt-weight", options.da_attempt_weight,
                   "sends counted per attempt (DA_ATTEMPT_WEIGHT)")
        ->capture_default_str()
        ->check(CLI::Range(0, 1000));
    app.add_flag("--da-block-cracking", options.da_block_cracking,
                 "add the script's folder to BlockCracking's blocked_script_paths");
    app.add_option("--blocked-script-paths", options.blocked_script_paths,
                   "BlockCracking's blocked_script_paths file")
        ->capture_default_str();
    app.add_option("--reconcile-ms", options.reconcile_ms, "reconcile period")
        ->check(CLI::Range(100, 60000));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    return nfq::run_worker(options);
}

}  // namespace

int main(int argc, char** argv) {
    // Errors are values; only allocation failure (or a library's exception, CLI11's
    // while the options are declared) can end up here. Report it as one line.
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        smtpfence::log::error(std::string("fatal: ") + e.what());
        return 1;
    }
}
