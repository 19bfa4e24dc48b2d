// From config file and accounts to the ruleset in the kernel, shared by smtpfenced and
// smtpfencectl's dry run; the daemon's loop that keeps it there is ctl/controller.h.
#pragma once

#include <string>
#include <vector>

#include "common/error.h"
#include "nft/engine.h"
#include "nft/ruleset.h"
#include "policy/accounts.h"
#include "policy/allow_store.h"
#include "policy/policy.h"
#include "policy/resolve.h"

namespace smtpfence {

struct DaemonOptions {
    std::string config_path = kDefaultConfigPath;
    bool config_given = false;  // an explicit --config must exist; the default may not
    std::string table = "smtpfence";
    std::string control_socket = "/run/smtpfence/control.sock";
    std::string state_dir = "/var/lib/smtpfence";
    std::string virtual_dir = "/etc/virtual";
    std::string passwd_path = "/etc/passwd";
    std::string group_path = "/etc/group";
    bool foreground = false;
    std::string worker_path;      // "" = smtpfence-worker next to this binary
    bool no_worker = false;       // kernel-only: refuse and count, explain nothing
    std::string allow_list_path;  // "" = allow.list beside the config file
    // Where the DNS servers for the names of destination exceptions are read from.
    std::string resolv_conf_path = "/etc/resolv.conf";
    // --csf-conf: the policy comes from CSF's csf.conf (csf-compat/csf_policy.h) instead
    // of the config file; "" = not in CSF mode.
    std::string csf_conf_path;
    // The metrics textfile when the config sets no METRICS_TEXTFILE (tests move it).
    std::string metrics_textfile = kDefaultMetricsTextfile;
};

// The files the policy is read from (and watched): --config, and before it in CSF mode
// csf.conf (which then decides the SMTP settings).
[[nodiscard]] std::vector<std::string> policy_files(const DaemonOptions& options);

// Everything the daemon derives from its inputs at one instant.
struct Desired {
    LoadedPolicy loaded;
    ManagedAllow managed;  // smtpfencectl allow/deny, from allow.list
    AccountDb accounts;    // as read for this resolution
    Allowlist allow;
    nft::RulesetSpec spec;
    std::vector<std::string> warnings;  // config + accounts + resolution warnings
};

// What the running kernel offers, probed once when the daemon starts.
struct KernelFeatures {
    nft::QueueMode queue = nft::QueueMode::None;
    bool ownership = false;       // persistent owned tables (Linux 6.9)
    bool set_expressions = true;  // a set's counter copied into its elements (Linux 5.11)
};

// One line for the log at start: what the kernel offers, and for what it lacks, the
// feature, the Linux version that has it and what the daemon does instead.
[[nodiscard]] std::string describe_kernel(const KernelFeatures& kernel);

// Probes each in a throwaway table (probe_table_for(table)); nothing is left behind.
[[nodiscard]] Result<KernelFeatures> probe_kernel(nft::Engine& engine, const std::string& table);

// Opens a netfilter netlink socket and probes the kernel: what every command that
// programs the table does first. The error says which step failed.
struct KernelSession {
    nft::NetlinkSocket socket;
    KernelFeatures features;
};
[[nodiscard]] Result<KernelSession> open_kernel_session(const std::string& table);

[[nodiscard]] nft::RulesetSpec make_spec(const Policy& policy, const Allowlist& allow,
                                         const std::string& table, const KernelFeatures& kernel);

// Loads the config and the accounts and resolves them. Errors name file and line.
// TABLE_OWNER = "1" on a kernel without ownership is an error naming the setting.
[[nodiscard]] Result<Desired> compute_desired(const DaemonOptions& options,
                                              const KernelFeatures& kernel);

// What the daemon enforces when compute_desired fails at start, so that a broken file
// at boot fails closed instead of leaving SMTP open: the built-in default policy (every
// uid but root and the MTA's refused on 25, 465, 587, both families) with the accounts
// and, when it can still be read, the managed allowlist. Fails only when the accounts
// cannot be read (without them the MTA's uid is unknown).
[[nodiscard]] Result<Desired> compute_fallback(const DaemonOptions& options,
                                               const KernelFeatures& kernel);

// Applies what compute_desired found, in one transaction (or removes the table when
// the policy says SMTP_BLOCK = "0"). On any error the rules in force are left alone.
[[nodiscard]] Result<void> apply_desired(nft::Engine& engine, const DaemonOptions& options,
                                         const Desired& desired);

// Where the managed allowlist lives: --allow-list, else allow.list beside the config.
[[nodiscard]] std::string managed_allow_path(const DaemonOptions& options);

// The scratch table used to probe the kernel's queue support.
[[nodiscard]] std::string probe_table_for(const std::string& table);

// The worker's command line for this policy.
[[nodiscard]] std::vector<std::string> worker_argv(const DaemonOptions& options,
                                                   const Policy& policy);

// One line for the log and for status: what is enforced.
[[nodiscard]] std::string describe(const Desired& desired);

// Runs the daemon until SIGTERM/SIGINT. Returns the process exit code. Without
// --foreground it detaches once the rules are in the kernel, so the exit status of
// the command that started it tells whether the block is in force.
[[nodiscard]] int run_daemon(const DaemonOptions& options);

// One-shot operations of smtpfenced: apply the policy and exit; remove the table.
[[nodiscard]] int apply_once(const DaemonOptions& options);
[[nodiscard]] int remove_table(const DaemonOptions& options);

// Process exit codes shared by smtpfenced and smtpfencectl (documented in the README).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the kernel refused, I/O failed
inline constexpr int kExitUsage = 2;    // bad arguments or configuration

}  // namespace smtpfence
