#include "ctl/daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "common/fd.h"
#include "common/log.h"
#include "ctl/supervisor.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace smtpfence {
namespace {

std::string join_numbers(const auto& values) {
    std::string out;
    for (const auto& v : values) {
        if (!out.empty())
            out += ",";
        out += std::to_string(v);
    }
    return out;
}

// The scratch table for the queue probe: never one an admin or we use.
std::string probe_table_name(const std::string& table) {
    return table + "-probe";
}

struct State {
    DaemonOptions options;
    nft::QueueMode queue = nft::QueueMode::None;
};

// Loads, resolves and applies. On any error the rules in force are left alone.
// Returns the policy in force.
Result<Policy> load_and_apply(nft::Engine& engine, const State& state) {
    auto desired = compute_desired(state.options, state.queue);
    if (!desired)
        return std::unexpected(desired.error());
    for (const std::string& w : desired->warnings)
        log::warning(w);
    if (!desired->loaded.policy.enabled) {
        if (auto r = engine.remove(state.options.table); !r)
            return std::unexpected(r.error());
        log::notice("SMTP_BLOCK is \"0\" in " + desired->loaded.policy.source +
                    ": nothing is enforced, outbound SMTP is open to every user");
        return desired->loaded.policy;
    }
    const nft::Ruleset ruleset = nft::build_ruleset(desired->spec);
    auto report = engine.apply(ruleset);
    if (!report)
        return std::unexpected(report.error());
    if (report->table_existed && !report->counters_kept)
        log::warning(report->note);
    log::notice("enforcing: " + describe(*desired));
    return desired->loaded.policy;
}

std::vector<std::string> worker_argv(const DaemonOptions& o, const Policy& policy) {
    std::string path = o.worker_path;
    if (path.empty()) {
        std::error_code ec;
        const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
        path = (ec ? std::filesystem::path("/usr/sbin") : self.parent_path()) / "smtpfence-worker";
    }
    return {path,          "--table",   o.table,    "--queue-num", std::to_string(policy.queue_num),
            "--state-dir", o.state_dir, "--passwd", o.passwd_path, "--group",
            o.group_path};
}

Result<UniqueFd> block_signals() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    if (const int err = pthread_sigmask(SIG_BLOCK, &mask, nullptr); err != 0) {
        return fail(err, "block signals");
    }
    UniqueFd fd(signalfd(-1, &mask, SFD_CLOEXEC));
    if (!fd.valid())
        return fail(errno, "signalfd");
    return fd;
}

// Classic daemon(3) detachment, after the first apply so that errors up to then
// reach the admin's terminal and exit status.
Result<void> detach() {
    const pid_t pid = fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid > 0)
        _exit(kExitOk);
    if (setsid() < 0)
        return fail(errno, "setsid");
    UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!null.valid())
        return fail(errno, "open /dev/null");
    for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
        if (dup2(null.get(), fd) < 0)
            return fail(errno, "dup2");
    }
    log::use_syslog();
    return {};
}

}  // namespace

nft::RulesetSpec make_spec(const Policy& policy, const Allowlist& allow, const std::string& table,
                           nft::QueueMode queue) {
    nft::RulesetSpec spec;
    spec.table = table;
    spec.ports = policy.ports;
    spec.allow_uids = allow.uids;
    spec.allow_gids = allow.gids;
    spec.allow_local = policy.allow_local;
    spec.verdict = policy.action == BlockAction::Drop ? nft::Verdict::Drop : nft::Verdict::Reset;
    spec.queue = queue;
    spec.queue_num = policy.queue_num;
    spec.observe_rate = policy.observe_rate;
    spec.observe_burst = policy.observe_burst;
    return spec;
}

Result<Desired> compute_desired(const DaemonOptions& options, nft::QueueMode queue) {
    Desired d;
    auto loaded = load_policy(options.config_path, !options.config_given);
    if (!loaded)
        return std::unexpected(loaded.error());
    d.loaded = std::move(*loaded);
    auto accounts = AccountDb::load(options.passwd_path, options.group_path);
    if (!accounts)
        return std::unexpected(accounts.error());
    d.allow = resolve_allowlist(d.loaded.policy, *accounts);
    d.warnings = d.loaded.warnings;
    d.warnings.insert(d.warnings.end(), accounts->warnings().begin(), accounts->warnings().end());
    d.warnings.insert(d.warnings.end(), d.allow.warnings.begin(), d.allow.warnings.end());
    d.spec = make_spec(d.loaded.policy, d.allow, options.table, queue);
    return d;
}

std::string describe(const Desired& d) {
    const Policy& p = d.loaded.policy;
    std::string out = "outbound TCP ports " + join_numbers(p.ports) + " (IPv4 and IPv6) ";
    out += p.action == BlockAction::Drop ? "dropped" : "refused";
    out += " for all but " + std::to_string(d.allow.uids.size()) + " uid(s) [" +
           join_numbers(d.allow.uids) + "] and " + std::to_string(d.allow.gids.size()) +
           " gid(s) [" + join_numbers(d.allow.gids) + "]";
    out += p.allow_local ? "; the server's own addresses allowed" : "; local addresses guarded too";
    out += "; observation: ";
    out +=
        d.spec.queue == nft::QueueMode::None
            ? std::string("off (this kernel has no queue support)")
            : std::string(nft::to_string(d.spec.queue)) + " queue " + std::to_string(p.queue_num);
    out += "; table inet " + d.spec.table + "; config " + p.source;
    return out;
}

int run_daemon(const DaemonOptions& options) {
    auto signals = block_signals();
    if (!signals) {
        log::error(signals.error().message());
        return kExitFailure;
    }
    auto sock = nft::NetlinkSocket::open();
    if (!sock) {
        log::error(sock.error().message());
        return kExitFailure;
    }
    nft::Engine engine(*sock);
    State state{options, nft::QueueMode::None};
    auto mode = engine.probe_queue_mode(probe_table_name(options.table));
    if (!mode) {
        log::error("probe the kernel's queue support: " + mode.error().message());
        return kExitFailure;
    }
    state.queue = *mode;
    log::info(std::string("queue support: ") + nft::to_string(state.queue));

    auto policy = load_and_apply(engine, state);
    if (!policy) {
        log::error(policy.error().message());
        log::error(
            "nothing was changed in the kernel; a table left by a previous run stays in force");
        return policy.error().code == 0 ? kExitUsage : kExitFailure;
    }
    if (!options.foreground) {
        if (auto r = detach(); !r) {
            log::error(r.error().message());
            return kExitFailure;
        }
    }
    // No worker when told so, when the kernel cannot queue, or when nothing is enforced.
    const auto wants_worker = [&](const Policy& p) {
        return !options.no_worker && state.queue != nft::QueueMode::None && p.enabled;
    };
    WorkerSupervisor worker(worker_argv(options, *policy));
    if (wants_worker(*policy))
        worker.start();

    while (true) {
        pollfd pfd{signals->get(), POLLIN, 0};
        const int ready = ::poll(&pfd, 1, worker.tick());
        if (ready < 0 && errno != EINTR) {
            log::error("poll: " + errno_text(errno));
            return kExitFailure;
        }
        if (ready <= 0)
            continue;
        signalfd_siginfo info{};
        const ssize_t n = ::read(signals->get(), &info, sizeof info);
        if (n != sizeof info)
            continue;
        if (info.ssi_signo == SIGCHLD) {
            worker.reap();
            continue;
        }
        if (info.ssi_signo == SIGHUP) {
            log::notice("SIGHUP: reloading " + options.config_path);
            auto reloaded = load_and_apply(engine, state);
            if (!reloaded) {
                log::error("reload failed: " + reloaded.error().message() +
                           "; the rules in force are unchanged");
                continue;
            }
            if (wants_worker(*reloaded)) {
                worker.set_argv(worker_argv(options, *reloaded));
                worker.ensure_running();
            } else {
                worker.stop();
            }
            continue;
        }
        // SIGTERM / SIGINT: the table stays; stopping the daemon never opens SMTP.
        worker.stop();
        log::notice("exiting on signal " + std::to_string(info.ssi_signo) + "; table inet " +
                    options.table + " stays in force");
        return kExitOk;
    }
}

}  // namespace smtpfence

namespace smtpfence {

int apply_once(const DaemonOptions& options) {
    auto sock = nft::NetlinkSocket::open();
    if (!sock) {
        log::error(sock.error().message());
        return kExitFailure;
    }
    nft::Engine engine(*sock);
    auto mode = engine.probe_queue_mode(probe_table_name(options.table));
    if (!mode) {
        log::error("probe the kernel's queue support: " + mode.error().message());
        return kExitFailure;
    }
    if (auto r = load_and_apply(engine, State{options, *mode}); !r) {
        log::error(r.error().message());
        return r.error().code == 0 ? kExitUsage : kExitFailure;
    }
    return kExitOk;
}

int remove_table(const DaemonOptions& options) {
    auto sock = nft::NetlinkSocket::open();
    if (!sock) {
        log::error(sock.error().message());
        return kExitFailure;
    }
    nft::Engine engine(*sock);
    if (auto r = engine.remove(options.table); !r) {
        log::error(r.error().message());
        return kExitFailure;
    }
    log::notice("table inet " + options.table + " removed: outbound SMTP is no longer guarded");
    return kExitOk;
}

}  // namespace smtpfence
