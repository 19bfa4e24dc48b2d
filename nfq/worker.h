// The NFQUEUE worker: explains the SYNs it is shown and reconciles its records with
// the kernel's exact per-uid counters (nfq/reconciler.h), so every attempt is recorded
// exactly once.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "nfq/attempt.h"
#include "nfq/queue.h"
#include "policy/accounts.h"

namespace smtpfence::nfq {

struct WorkerOptions {
    std::string table = "smtpfence";
    std::uint16_t queue_num = 2525;
    int queue_fd = -1;  // the NFQUEUE socket inherited from the daemon, -1: bind our own
    // The smtpfenced that started us: the worker ends with it (follow_daemon in
    // worker.cpp). 0: started by hand, nothing to follow.
    pid_t daemon_pid = 0;
    std::string state_dir = "/var/lib/smtpfence";
    std::string passwd_path = "/etc/passwd";
    std::string group_path = "/etc/group";
    std::vector<std::string> web_users = {"apache", "nobody", "webapps", "www-data"};
    // Explain at most this many attempts per process; later ones of the same pid are
    // counted only (a flood from one script is one story, told once).
    std::uint32_t explain_per_process = 5;
    int reconcile_ms = 1000;
    // DirectAdmin's pipeline (nfq/da_sink.h): on when the daemon resolved DA_PIPELINE so.
    bool da_enabled = false;
    std::string virtual_dir = "/etc/virtual";
    std::uint32_t da_attempt_weight = 1;
    bool da_block_cracking = false;
    std::string blocked_script_paths = "/var/spool/exim/blocked_script_paths";
    // The history's retention (HISTORY_DAYS, HISTORY_MAX_MB; docs/history.md).
    int history_days = 90;
    std::uint64_t history_max_mb = 1024;
};

// What the worker explained; what it counted only is in ReconcilerStats
// (nfq/reconciler.h).
struct WorkerStats {
    std::uint64_t explained = 0;
    std::uint64_t unidentified = 0;  // explained, but the process was already gone
};

// STATE_DIR/worker.ready: the pid of the worker that takes SYNs now (written once its
// start-up is done, removed when it exits cleanly; a stale one names a dead pid).
[[nodiscard]] inline std::string ready_file_path(const std::string& state_dir) {
    return state_dir + "/worker.ready";
}

// Runs until SIGTERM/SIGINT (blocked by the caller and read from a signalfd).
[[nodiscard]] int run_worker(const WorkerOptions& options);

}  // namespace smtpfence::nfq
