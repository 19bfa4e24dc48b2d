// The local threshold alert, for servers without Prometheus (docs/alerts.md): an
// account with at least ALERT_ATTEMPTS blocked attempts within ALERT_INTERVAL is logged,
// and ALERT_COMMAND runs and/or ALERT_EMAIL gets a mail, once per account and interval.
// AlertWindow decides (pure, fed samples and the time); LocalAlerts feeds it the
// kernel's per-uid counts from the daemon's loop and hands each alert to a child
// (ctl/local_alert_child.h), so that the loop never waits on history.db, a command or
// the MTA.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policy/accounts.h"
#include "policy/policy.h"

namespace smtpfence {

namespace nft {
class Engine;
}

// ALERT_ATTEMPTS (0 = off), ALERT_INTERVAL, ALERT_COMMAND, ALERT_EMAIL, as loaded.
using AlertSettings = AlertPolicy;

struct FiredAlert {
    std::uint32_t uid = 0;
    std::uint64_t count = 0;  // attempts within the interval
    bool operator==(const FiredAlert&) const = default;
};

// Which accounts reached the threshold within the last interval (a sliding window over
// the samples fed), each at most once per interval: after an alert at T the account's
// next one comes at T + interval at the earliest, counting only attempts after T.
// Totals only grow; one that falls is a counter that started again (the kernel's set
// element was re-added): it is carried on from where it was. The first feed is the
// baseline (what the counters held before the daemon started is not "within the
// interval"); a uid that first appears later had 0 at the feed before.
class AlertWindow {
  public:
    using Clock = std::chrono::steady_clock;

    // A new threshold or interval keeps the samples; threshold 0 forgets everything.
    void configure(std::uint64_t threshold, std::chrono::seconds interval);
    [[nodiscard]] std::vector<FiredAlert> feed(const std::map<std::uint32_t, std::uint64_t>& totals,
                                               Clock::time_point now);
    // Accounts with state (for the tests: idle ones are dropped).
    [[nodiscard]] std::size_t tracked() const { return accounts_.size(); }

  private:
    struct Sample {
        Clock::time_point at;
        std::uint64_t total;  // carried
    };
    struct Account {
        // When the total changed, oldest first; the first is the baseline. Changes closer
        // than interval/64 share a sample (the newer total at the older time), so an
        // account holds about 64 samples whatever the interval: the window may count up
        // to interval/64 of attempts less, never more.
        std::deque<Sample> samples;
        std::uint64_t last_raw = 0;
        std::uint64_t carried = 0;
        std::optional<Clock::time_point> fired;
    };
    void add(Account& a, std::uint64_t raw, Clock::time_point now) const;
    [[nodiscard]] std::uint64_t in_window(Account& a, Clock::time_point now) const;

    std::uint64_t threshold_ = 0;
    std::chrono::seconds interval_{600};
    std::optional<Clock::time_point> last_feed_;
    std::map<std::uint32_t, Account> accounts_;
};

// The daemon's part: the settings of the policy in force, the kernel's counts read every
// kFeedPeriod from the loop's one-second tick, a child per alert (reaped through
// ctl/children.h).
class LocalAlerts {
  public:
    using Clock = AlertWindow::Clock;

    LocalAlerts(std::string state_dir, std::string passwd_path, std::string group_path)
        : state_dir_(std::move(state_dir)),
          passwd_path_(std::move(passwd_path)),
          group_path_(std::move(group_path)) {}
    LocalAlerts(const LocalAlerts&) = delete;
    LocalAlerts& operator=(const LocalAlerts&) = delete;

    // After each apply: the settings of the policy in force.
    void configure(const AlertSettings& settings);
    // Each second: every kFeedPeriod, the per-uid counts of table's blocked set.
    // accounts names the uids in the journal entry (null: the uid alone).
    void tick(nft::Engine& engine, const std::string& table, Clock::time_point now,
              const AccountDb* accounts);
    // The per-uid attempt totals (only growing; see AlertWindow) at now: logs and starts
    // a child for each alert that fires.
    void feed(const std::map<std::uint32_t, std::uint64_t>& totals, Clock::time_point now,
              const AccountDb* accounts = nullptr);
    // The daemon's reaper reaped pid: true when it was an alert child.
    bool ended(pid_t pid);

    static constexpr std::chrono::seconds kFeedPeriod{5};
    // Alert children at once; an alert beyond them is logged without its actions.
    static constexpr std::size_t kMaxRunning = 4;

  private:
    void start_child(const FiredAlert& alert);

    std::string state_dir_, passwd_path_, group_path_;
    AlertSettings settings_;
    AlertWindow window_;
    std::optional<Clock::time_point> next_feed_;
    bool announce_ = false;  // logged after the first feed of new settings (its baseline)
    std::vector<pid_t> children_;
};

}  // namespace smtpfence
