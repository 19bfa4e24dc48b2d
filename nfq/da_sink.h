// The DirectAdmin sink: direct-out attempts recorded in the files DirectAdmin's Exim
// integration (exim.pl) reads and writes under /etc/virtual, so that an attempt counts
// against the user's daily send limit exactly as a send does, and DirectAdmin's notice
// fires once when the limit is reached. What is written, how hostile input is encoded,
// how files are opened, and how a crossing of the limit is coordinated with Exim's own
// notice: docs/directadmin.md.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "nfq/attempt.h"
#include "policy/accounts.h"
#include "policy/policy.h"

namespace smtpfence::nfq {

inline constexpr const char* kDefaultVirtualDir = "/etc/virtual";
inline constexpr const char* kDefaultBlockedScriptPaths = "/var/spool/exim/blocked_script_paths";
// The method= value of our usage/ACCOUNT.bytes lines (Exim writes outgoing/incoming).
inline constexpr const char* kDirectOutMethod = "direct_out";

struct FileOwner {
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
};

struct DaSinkConfig {
    std::string virtual_dir = kDefaultVirtualDir;
    std::string blocked_script_paths = kDefaultBlockedScriptPaths;
    std::uint32_t attempt_weight = 1;  // DA_ATTEMPT_WEIGHT: bytes per attempt (0: none)
    bool block_cracking = false;       // DA_BLOCK_CRACKING
    // Never counted (Exim's uid_exempt); uid 0 never is either.
    std::vector<std::string> exempt_accounts = {"root", "diradmin"};
    // Owner of the files and the usage directory we create (DirectAdmin's mail:mail);
    // nullopt leaves them to whoever runs us (tests, a non-root run).
    std::optional<FileOwner> owner;
    // Home directory of an account, for BlockCracking: a working directory is blocked
    // only when it lies inside the account's home (blocking "/" or "/tmp" would stop
    // every user's scripts there). Unset or nullopt: nothing is blocked.
    std::function<std::optional<std::string>(const std::string& account)> account_home;
    // The usage file stops growing here (an attempt flood must not fill /etc): the kernel
    // and the attempt history keep the exact count. A limit above it raises it, up to
    // kMaxUsageCeiling, so that any enforced limit is still reached.
    std::uint64_t max_usage_bytes = 1U << 20U;
    // How long an ambiguous crossing waits for a concurrent Exim's own notification.
    std::chrono::milliseconds settle_delay{2000};
};

inline constexpr std::uint64_t kMaxUsageCeiling = 64ULL << 20U;
inline constexpr std::uint32_t kMaxAttemptWeight = 1000;

struct DaSinkStats {
    std::uint64_t attempts = 0;        // explained + counted-only attempts, not exempt
    std::uint64_t bytes_appended = 0;  // to usage/ACCOUNT files
    std::uint64_t exempt = 0;          // attempts not counted (exempt account)
    std::uint64_t capped = 0;          // bytes not appended because of the ceiling
    std::uint64_t notifications = 0;   // action=limit lines written
    std::uint64_t exim_notified = 0;   // pending crossings Exim had notified itself
    std::uint64_t blocked_paths = 0;   // BlockCracking entries written
    std::uint64_t errors = 0;          // failed or refused writes (each logged)
};

class DaSink final : public AttemptSink {
  public:
    // Checks the configuration (weight <= kMaxAttemptWeight, virtual_dir a directory).
    // The sink is held by pointer (the worker keeps a list of sinks); its destructor
    // settles pending crossings, so none is lost when the worker stops.
    [[nodiscard]] static Result<std::unique_ptr<DaSink>> open(DaSinkConfig config);

    DaSink(const DaSink&) = delete;
    DaSink& operator=(const DaSink&) = delete;
    ~DaSink() override;

    void explained(const Attempt& attempt) override;
    void counted_only(const CountedOnly& record) override;
    // Settles the pending crossings that are old enough.
    void checkpoint(const Checkpoint& checkpoint) override;

    // Writes the notifications of pending crossings older than settle_delay (all of
    // them with force). The worker's reconcile timer may call it: checkpoint() comes
    // only when the kernel counted something new.
    void settle(bool force = false);

    [[nodiscard]] const DaSinkStats& stats() const { return stats_; }
    [[nodiscard]] std::size_t pending() const;
    [[nodiscard]] const DaSinkConfig& config() const { return config_; }

  private:
    explicit DaSink(DaSinkConfig config) : config_(std::move(config)) {}

    enum class CrossingState { Idle, Pending, Done };
    // What we know of one account's crossing of its limit, for one usage file (inode)
    // and one limit value: anything else is a new day.
    struct Watch {
        dev_t dev = 0;
        ino_t ino = 0;
        std::uint64_t limit = 0;
        CrossingState state = CrossingState::Idle;
        std::chrono::steady_clock::time_point since{};
        std::time_t since_epoch = 0;  // wall clock then, to match Exim's log_time
        std::time_t time = 0;         // the crossing attempt's time, our log_time
        std::uint64_t count = 0;      // count= of our line
        std::uint64_t last_end = 0;   // where our last bytes in this file ended
    };

    void record(const std::string& account, std::uint32_t uid, std::uint64_t attempts,
                std::time_t time, const Attempt* explained);
    // Appends to usage/ACCOUNT; updates the crossing watch.
    void count(const std::string& account, std::uint64_t attempts, std::time_t time);
    void write_bytes_line(const std::string& account, const Attempt& attempt);
    void block_script_path(const std::string& account, const Attempt& attempt);
    bool notify_limit(const std::string& account, std::uint64_t count, std::uint64_t limit,
                      std::time_t time);
    void settle_one(const std::string& account, Watch& watch);
    void report(const Error& error);

    DaSinkConfig config_;
    DaSinkStats stats_;
    std::map<std::string, Watch, std::less<>> watches_;
    // The last action=limit line we wrote per account: the one line in mail_task.queue
    // that a settle must not take for Exim's (which may have an empty email= too).
    std::map<std::string, std::string, std::less<>> own_notices_;
    // Error log rate limit: at most kErrorBurst lines per minute, the rest counted.
    std::chrono::steady_clock::time_point error_window_{};
    unsigned errors_in_window_ = 0;
    std::uint64_t errors_suppressed_ = 0;
};

// DA_PIPELINE resolved against the machine, for the worker and for status.
struct DaPipelineStatus {
    bool enabled = false;
    std::string reason;  // "auto: /etc/virtual exists", "DA_PIPELINE = 0", ...
};
[[nodiscard]] DaPipelineStatus resolve_da_pipeline(DaPipeline mode, const std::string& virtual_dir);

// The sink's configuration from the policy: weight, BlockCracking, owner mail:mail and
// the accounts' homes from accounts (copied: the sink does not follow later reloads).
[[nodiscard]] DaSinkConfig da_sink_config(const Policy& policy, const std::string& virtual_dir,
                                          const AccountDb& accounts);

// The user "mail" and group "mail" (DirectAdmin's owner of /etc/virtual's files); the
// group falls back to the user's primary group. nullopt when there is no user "mail".
[[nodiscard]] std::optional<FileOwner> mail_owner(const AccountDb& accounts);

// exim.pl's per-User limit: limit_ACCOUNT when that file exists (even empty), else
// limit; 0 when neither exists. Enforced only when > 0.
[[nodiscard]] std::uint64_t da_user_limit(const std::string& virtual_dir, std::string_view account);

// A limit file's text as Perl's int() reads it: leading whitespace, an optional '+',
// then digits (saturating); anything else, empty or negative is 0. (Perl would also take
// an exponent, "1e3"; DirectAdmin writes plain digits.)
[[nodiscard]] std::uint64_t parse_da_limit(std::string_view text);

// A value made safe for a DirectAdmin key=value line: printable ASCII except '%', '&' and
// '=' as is, every other byte as %XX. decode_da_value reverses it (for tests and tools).
[[nodiscard]] std::string encode_da_value(std::string_view value);
[[nodiscard]] std::string decode_da_value(std::string_view value);

// A plain login name that is safe as a file name under usage/.
[[nodiscard]] bool is_da_account_name(std::string_view account);

// The line format of exim.pl's action=limit notice.
[[nodiscard]] std::string da_limit_line(std::string_view account, std::uint64_t count,
                                        std::uint64_t limit, std::time_t time);

}  // namespace smtpfence::nfq
