// The policy: what the admin asked for, in names (users, groups) and numbers (ports).
// Loaded from /etc/smtpfence/smtpfence.conf (csf.conf syntax) or built-in defaults.
// Names are resolved to uids/gids separately (policy/resolve.h), so a policy can be
// re-resolved whenever /etc/passwd or /etc/group change.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/conf_reader.h"
#include "common/error.h"
#include "policy/destination.h"

namespace smtpfence {

enum class BlockAction {
    Reject,  // reject with tcp reset: the caller gets ECONNREFUSED at once
    Drop,    // silently dropped: the caller times out (CSF's DROP_OUT = "DROP")
};

// DA_PIPELINE: record attempts in DirectAdmin's /etc/virtual (nfq/da_sink.h).
enum class DaPipeline {
    Auto,  // when the virtual directory exists
    On,
    Off,
};

// TABLE_OWNER: the daemon owns its table (nft/ruleset.h RulesetSpec::owned), so that
// no other tool can flush, change or delete it while the daemon runs.
enum class TableOwner {
    Auto,  // when the kernel has persistent owned tables (Linux 6.9)
    On,    // required: the daemon refuses to start without
    Off,   // never: foreign changes are repaired from nftables' events instead
};

inline constexpr const char* kDefaultConfigPath = "/etc/smtpfence/smtpfence.conf";

// Where Debian's prometheus-node-exporter reads textfiles (docs/metrics.md).
inline constexpr const char* kDefaultMetricsTextfile =
    "/var/lib/prometheus/node-exporter/smtpfence.prom";

// MTA accounts allowed by default when they exist (MTA_USERS = "auto").
inline const std::vector<std::string> kAutoMtaUsers = {"mail", "Debian-exim", "mailnull", "exim",
                                                       "postfix"};

// The local threshold alert (ctl/local_alerts.h, docs/alerts.md): an account with at
// least `attempts` attempts within `interval` runs `command` and/or mails `email`, once
// per account and interval.
struct AlertPolicy {
    std::chrono::seconds interval{600};  // ALERT_INTERVAL, 60-86400
    std::string command;                 // ALERT_COMMAND: absolute path, "" = none
    std::string email;                   // ALERT_EMAIL: an address, "" = none
    std::uint32_t attempts = 0;          // ALERT_ATTEMPTS, 0 (off) or 1-1000000
    bool operator==(const AlertPolicy&) const = default;
};

struct Policy {
    bool enabled = true;                                       // SMTP_BLOCK
    std::vector<std::uint16_t> ports{25, 465, 587};            // SMTP_PORTS, sorted, unique
    std::vector<std::string> allow_users;                      // SMTP_ALLOWUSER (names or uids)
    std::vector<std::string> allow_groups{"mail", "mailman"};  // SMTP_ALLOWGROUP
    bool allow_groups_default = true;  // not set in the config: missing groups are no news
    std::vector<std::string> mta_users = kAutoMtaUsers;  // MTA_USERS ("auto" = this list)
    bool mta_users_auto = true;                          // MTA names missing here: no warning
    bool allow_local = true;                             // SMTP_ALLOWLOCAL
    BlockAction action = BlockAction::Reject;            // DROP_OUT
    std::uint16_t queue_num = 2525;                      // NFQUEUE_NUM
    std::uint32_t observe_rate = 20;                     // OBSERVE_RATE (per uid, per second)
    std::uint32_t observe_burst = 40;                    // OBSERVE_BURST
    std::string source = "(built-in defaults)";          // file it came from
    // The control socket: who besides root may change things (a group name or gid,
    // "" = root only), and whether every local user may read status and attempts.
    std::string control_admin_group;  // CONTROL_ADMIN_GROUP
    bool control_read_all = false;    // CONTROL_READ = "admin" | "all"
    // DirectAdmin's limit pipeline: attempts counted in /etc/virtual/usage like sends.
    DaPipeline da_pipeline = DaPipeline::Auto;  // DA_PIPELINE = "auto" | "1" | "0"
    TableOwner table_owner = TableOwner::Auto;  // TABLE_OWNER = "auto" | "1" | "0"
    std::uint32_t da_attempt_weight = 1;        // DA_ATTEMPT_WEIGHT: sends per attempt, 0-1000
    bool da_block_cracking = false;             // DA_BLOCK_CRACKING
    // The attempt history's retention (docs/history.md): by age and by size.
    std::uint32_t history_days = 90;      // HISTORY_DAYS, 1-3650
    std::uint32_t history_max_mb = 1024;  // HISTORY_MAX_MB, 16-1048576
    // CSF's SMTP_REDIRECT: a blocked user's connection goes to the local MTA (same port,
    // nat redirect) instead of being refused.
    bool redirect = false;  // SMTP_REDIRECT
    // Kernel log lines for refused SYNs with CSF's prefixes, rate-limited as CSF's
    // (lfd's UID tracking and admins' greps read them).
    bool log_blocked = false;  // DROP_OUT_LOGGING
    bool log_uid = false;      // DROP_UID_LOGGING: the line carries UID= and GID=
    // Relay exceptions (docs/relay-exceptions.md): who may reach which HOST[:PORT]
    // despite the block, in the admin's order; origin "FILE:LINE".
    std::vector<DestException> allow_dest;  // SMTP_ALLOWDEST
    // The addresses of an exception's DNS name are trusted for the answer's TTL clamped
    // to [min, max] (a failing name is retried on the same backoff), and kept for grace
    // after they leave the answer (a client may hold an older one). Whole seconds.
    std::chrono::seconds dest_ttl_min{30};    // DEST_TTL_MIN, 1-86400
    std::chrono::seconds dest_ttl_max{3600};  // DEST_TTL_MAX, DEST_TTL_MIN-86400
    std::chrono::seconds dest_grace{900};     // DEST_GRACE, 0-86400
    // node_exporter's textfile collector reads this (docs/metrics.md); "" writes none,
    // nullopt: not set, the daemon's default (kDefaultMetricsTextfile).
    std::optional<std::string> metrics_textfile;  // METRICS_TEXTFILE
    AlertPolicy alert;                            // ALERT_*
};

struct LoadedPolicy {
    Policy policy;
    std::vector<std::string> warnings;  // "FILE:LINE: ..." for things worth telling
};

// Maps a parsed smtpfence.conf onto a Policy. Keys not given keep their defaults.
// An unknown key or a malformed value is an error naming file, line, key and value.
[[nodiscard]] Result<LoadedPolicy> policy_from_conf(const conf::ConfFile& conf);

// Reads path. When the file does not exist and missing_ok, returns the defaults
// (with source "(built-in defaults; PATH not found)").
[[nodiscard]] Result<LoadedPolicy> load_policy(const std::string& path, bool missing_ok);

}  // namespace smtpfence
