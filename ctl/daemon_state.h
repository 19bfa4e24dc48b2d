// What smtpfenced holds between events: the inputs in force and what happened to them.
// One instance, owned by the Controller and shared by reference with its parts.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "policy/accounts.h"

namespace smtpfence {

// The config, csf.conf or managed list could not be used (at start, or on the last
// reload): shown in status and systemd's STATUS= until a reload succeeds.
struct InputError {
    std::string message;
    std::time_t since = 0;
    bool fallback = false;  // the built-in defaults are in force (since the start)
};

// The first apply failed while a table a previous run left was in force: that table
// stays, the policy in force is applied again at `at` (and by a reload), waiting twice
// as long after each failure, and the error is shown in status until an apply succeeds.
struct ApplyRetry {
    using Clock = std::chrono::steady_clock;
    static constexpr std::chrono::seconds kFirstDelay{1};
    static constexpr std::chrono::seconds kMaxDelay{60};

    std::string error;
    std::time_t since = 0;
    std::chrono::seconds delay = kFirstDelay;
    Clock::time_point at;  // the next attempt

    // The first failure, at now: the next attempt after kFirstDelay.
    [[nodiscard]] static ApplyRetry after(std::string error, Clock::time_point now);
    // Another failure, at now: the delay doubled (kMaxDelay at most), then the next attempt.
    void failed_again(std::string error, Clock::time_point now);
    [[nodiscard]] bool due(Clock::time_point now) const { return now >= at; }
};

// The table guard's restores of our table after foreign changes.
struct HealStats {
    std::uint64_t count = 0;
    std::uint64_t failures = 0;
    std::time_t last_at = 0;
    std::string last_who;
    std::string last_what;
    std::int64_t last_restore_us = 0;
    bool last_ok = false;
    std::string last_error;
};

// The last apply that succeeded (first apply, retry or reload), for the metrics.
struct LastApply {
    std::uint64_t count = 0;  // applies so far: a new one is written out at once
    std::time_t at = 0;
    std::chrono::microseconds took{0};
};

// The metrics textfile (ctl/metrics_export.h), for status.
struct MetricsStatus {
    std::string path;  // "" when off
    std::time_t last_written = 0;
    std::string last_error;      // "" after a write that succeeded
    std::uint64_t failures = 0;  // writes that failed (each logged once: see the exporter)
};

struct DaemonState {
    std::optional<Desired> current;
    bool removed = false;  // by `smtpfencectl remove`, until a reload
    std::time_t applied_at = 0;
    std::string csf_rules;  // "" when CSF's SMTP rules are not loaded
    std::optional<InputError> input_error;
    std::optional<ApplyRetry> retry;
    HealStats heal;
    LastApply last_apply;
    MetricsStatus metrics;

    [[nodiscard]] bool enforcing() const {
        return current && current->loaded.policy.enabled && !removed;
    }
    // The messages of input_error and retry, for status; "" without either.
    [[nodiscard]] std::string error_text() const;
    // One line for systemd's STATUS= (`systemctl status smtpfenced`).
    [[nodiscard]] std::string status_line() const;
};

// A configuration error just recorded in state (input_error or retry) as a journal
// entry of kind config_error (docs/journal.md): error, when ("start", "reload") and
// what is in force; `line` is its message (and the log line without a journal).
void journal_config_error(const DaemonState& state, const std::string& error, std::string_view when,
                          std::string line);

// Puts desired in force in state (applied now) and gives the control socket the access
// its policy sets (CONTROL_ADMIN_GROUP, CONTROL_READ).
void adopt(DaemonState& state, Desired desired, ctl::ControlServer& server);

// Who may use the control socket under desired's policy; an unknown admin group is
// warned about and leaves changes to root.
[[nodiscard]] ctl::AccessPolicy control_access(const Desired& desired);

// A user or group by name or number, as the protocol and the config accept them.
[[nodiscard]] const Account* find_user(const AccountDb& db, const std::string& name);
[[nodiscard]] const GroupEntry* find_group(const AccountDb& db, const std::string& name);

}  // namespace smtpfence
