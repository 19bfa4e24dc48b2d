#include "ctl/daemon.h"

#include <cerrno>
#include <filesystem>
#include <string>

#include "common/log.h"
#include "common/text.h"
#include "csf-compat/csf_policy.h"
#include "nfq/da_sink.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace smtpfence {
namespace {

// smtpfence.conf, or in CSF mode csf.conf read the way CSF reads it over smtpfence.conf.
Result<LoadedPolicy> load_configured_policy(const DaemonOptions& options) {
    if (options.csf_conf_path.empty())
        return load_policy(options.config_path, !options.config_given);
    return csf::load_csf_mode(options.csf_conf_path, options.config_path, options.config_given);
}

}  // namespace

std::vector<std::string> policy_files(const DaemonOptions& options) {
    if (options.csf_conf_path.empty())
        return {options.config_path};
    return {options.csf_conf_path, options.config_path};
}

// The scratch table for the queue probe: never one an admin or we use.
std::string probe_table_for(const std::string& table) {
    return table + "-probe";
}

std::string managed_allow_path(const DaemonOptions& options) {
    if (!options.allow_list_path.empty())
        return options.allow_list_path;
    const std::filesystem::path dir = std::filesystem::path(options.config_path).parent_path();
    return (dir.empty() ? std::filesystem::path(".") : dir) / "allow.list";
}

Result<void> apply_desired(nft::Engine& engine, const DaemonOptions& options,
                           const Desired& desired) {
    for (const std::string& w : desired.warnings)
        log::warning(w);
    if (!desired.loaded.policy.enabled) {
        if (auto r = engine.remove(options.table); !r)
            return r;
        log::notice("SMTP_BLOCK is \"0\" in " + desired.loaded.policy.source +
                    ": nothing is enforced, outbound SMTP is open to every user");
        return {};
    }
    const nft::Ruleset ruleset = nft::build_ruleset(desired.spec);
    auto report = engine.apply(ruleset);
    if (!report)
        return std::unexpected(report.error());
    if (report->table_existed && !report->counters_kept)
        log::warning(report->note);
    log::notice("enforcing: " + describe(desired));
    return {};
}

std::vector<std::string> worker_argv(const DaemonOptions& o, const Policy& policy) {
    std::string path = o.worker_path;
    if (path.empty()) {
        std::error_code ec;
        const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
        path = (ec ? std::filesystem::path("/usr/sbin") : self.parent_path()) / "smtpfence-worker";
    }
    std::vector<std::string> argv = {path,
                                     "--table",
                                     o.table,
                                     "--queue-num",
                                     std::to_string(policy.queue_num),
                                     "--state-dir",
                                     o.state_dir,
                                     "--passwd",
                                     o.passwd_path,
                                     "--group",
                                     o.group_path,
                                     "--history-days",
                                     std::to_string(policy.history_days),
                                     "--history-max-mb",
                                     std::to_string(policy.history_max_mb)};
    if (nfq::resolve_da_pipeline(policy.da_pipeline, o.virtual_dir).enabled) {
        argv.insert(argv.end(), {"--da-pipeline", "--virtual-dir", o.virtual_dir,
                                 "--da-attempt-weight", std::to_string(policy.da_attempt_weight)});
        if (policy.da_block_cracking)
            argv.emplace_back("--da-block-cracking");
    }
    return argv;
}

Result<KernelFeatures> probe_kernel(nft::Engine& engine, const std::string& table) {
    KernelFeatures f;
    auto mode = engine.probe_queue_mode(probe_table_for(table));
    if (!mode)
        return std::unexpected(mode.error().wrap("probe the kernel's queue support"));
    f.queue = *mode;
    auto owned = engine.probe_ownership(probe_table_for(table));
    if (!owned)
        return std::unexpected(owned.error().wrap("probe the kernel's table ownership"));
    f.ownership = *owned;
    auto exprs = engine.probe_set_expressions(probe_table_for(table));
    if (!exprs)
        return std::unexpected(exprs.error().wrap("probe the kernel's set expressions"));
    f.set_expressions = *exprs;
    return f;
}

std::string describe_kernel(const KernelFeatures& kernel) {
    std::string out =
        std::string("queue support: ") + nft::to_string(kernel.queue) + "; owned tables: " +
        (kernel.ownership ? "yes"
                          : "no (Linux 6.9: the table is restored after "
                            "foreign changes instead)") +
        "; set expressions: " +
        (kernel.set_expressions ? "yes"
                                : "no (Linux 5.11: the rules count blocked SYNs per uid instead)");
    return out;
}

Result<KernelSession> open_kernel_session(const std::string& table) {
    auto sock = nft::NetlinkSocket::open();
    if (!sock)
        return std::unexpected(sock.error());
    KernelSession session{std::move(*sock), {}};
    nft::Engine engine(session.socket);
    auto features = probe_kernel(engine, table);
    if (!features)
        return std::unexpected(features.error());
    session.features = *features;
    return session;
}

nft::RulesetSpec make_spec(const Policy& policy, const Allowlist& allow, const std::string& table,
                           const KernelFeatures& kernel) {
    const nft::QueueMode queue = kernel.queue;
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
    spec.redirect = policy.redirect;
    spec.log_blocked = policy.log_blocked;
    spec.log_uid = policy.log_uid;
    spec.owned = kernel.ownership && policy.table_owner != TableOwner::Off;
    spec.set_expressions = kernel.set_expressions;
    return spec;
}

namespace {

// The rest of a Desired once its policy is known: the accounts, the managed list (or
// none, for the fallback, when it cannot be read), the resolution and the spec.
Result<Desired> resolve_desired(LoadedPolicy loaded, const DaemonOptions& options,
                                const KernelFeatures& kernel, bool tolerate_managed_error) {
    Desired d;
    d.loaded = std::move(loaded);
    auto accounts = AccountDb::load(options.passwd_path, options.group_path);
    if (!accounts)
        return std::unexpected(accounts.error());
    auto managed = load_managed_allow(managed_allow_path(options));
    if (managed) {
        d.managed = std::move(*managed);
    } else if (tolerate_managed_error) {
        d.loaded.warnings.push_back(managed.error().message() +
                                    "; nobody from that list is allowed until it is fixed");
    } else {
        return std::unexpected(managed.error());
    }
    d.allow = resolve_allowlist(d.loaded.policy, *accounts, d.managed);
    d.warnings = d.loaded.warnings;
    d.warnings.insert(d.warnings.end(), accounts->warnings().begin(), accounts->warnings().end());
    d.warnings.insert(d.warnings.end(), d.allow.warnings.begin(), d.allow.warnings.end());
    d.spec = make_spec(d.loaded.policy, d.allow, options.table, kernel);
    d.accounts = std::move(*accounts);
    return d;
}

}  // namespace

Result<Desired> compute_desired(const DaemonOptions& options, const KernelFeatures& kernel) {
    auto loaded = load_configured_policy(options);
    if (!loaded)
        return std::unexpected(loaded.error());
    if (loaded->policy.table_owner == TableOwner::On && !kernel.ownership) {
        return fail(0, loaded->policy.source + ": TABLE_OWNER = \"1\"",
                    "this kernel cannot keep an owned table after its owner exits (persistent "
                    "owned tables need Linux 6.9 or later); set \"auto\" or \"0\"");
    }
    return resolve_desired(std::move(*loaded), options, kernel, false);
}

Result<Desired> compute_fallback(const DaemonOptions& options, const KernelFeatures& kernel) {
    LoadedPolicy defaults;
    defaults.policy.source =
        "built-in defaults (" + policy_files(options).front() + " could not be used)";
    return resolve_desired(std::move(defaults), options, kernel, true);
}

std::string describe(const Desired& d) {
    const Policy& p = d.loaded.policy;
    std::string out = "outbound TCP ports " + text::join_numbers(p.ports) + " (IPv4 and IPv6) ";
    if (p.redirect)
        out += "redirected to the local MTA";
    else
        out += p.action == BlockAction::Drop ? "dropped" : "refused";
    out += " for all but " + std::to_string(d.allow.uids.size()) + " uid(s) [" +
           text::join_numbers(d.allow.uids) + "] and " + std::to_string(d.allow.gids.size()) +
           " gid(s) [" + text::join_numbers(d.allow.gids) + "]";
    if (p.allow_local)
        out += "; the server's own addresses allowed";
    else
        out += p.redirect ? "; SMTP to the server's own addresses redirected too"
                          : "; local addresses guarded too";
    if (p.log_blocked)
        out += p.log_uid ? "; refused SYNs logged with their uid" : "; refused SYNs logged";
    out += "; observation: ";
    out +=
        d.spec.queue == nft::QueueMode::None
            ? std::string("off (this kernel has no queue support)")
            : std::string(nft::to_string(d.spec.queue)) + " queue " + std::to_string(p.queue_num);
    out += "; table inet " + d.spec.table;
    out += d.spec.owned ? " (owned: no other tool can change it)" : "";
    if (!d.spec.set_expressions)
        out +=
            "; kernel without set expressions (Linux 5.11): blocked SYNs counted per uid by "
            "the rules";
    out += "; config " + p.source;
    return out;
}

int apply_once(const DaemonOptions& options) {
    auto session = open_kernel_session(options.table);
    if (!session) {
        log::error(session.error().message());
        return kExitFailure;
    }
    // The inputs first: a config or accounts file that cannot be read or parsed is a
    // configuration error (exit 2), whatever errno came with it.
    auto inputs = compute_desired(options, session->features);
    if (!inputs) {
        log::error(inputs.error().message());
        return kExitUsage;
    }
    nft::Engine engine(session->socket);
    if (auto r = apply_desired(engine, options, *inputs); !r) {
        log::error(r.error().message());
        return kExitFailure;
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
        if (r.error().code == EPERM) {
            log::error("table inet " + options.table +
                       " is owned by a running smtpfenced: `smtpfencectl remove` asks it to "
                       "remove the table (stopping the daemon does not)");
        }
        return kExitFailure;
    }
    log::notice("table inet " + options.table + " removed: outbound SMTP is no longer guarded");
    return kExitOk;
}

}  // namespace smtpfence
