#include "ctl/daemon_state.h"

#include <algorithm>

#include "common/journal.h"
#include "common/log.h"
#include "common/text.h"

namespace smtpfence {

ApplyRetry ApplyRetry::after(std::string error, Clock::time_point now) {
    return ApplyRetry{std::move(error), std::time(nullptr), kFirstDelay, now + kFirstDelay};
}

void ApplyRetry::failed_again(std::string error_now, Clock::time_point now) {
    error = std::move(error_now);
    delay = std::min(delay * 2, kMaxDelay);
    at = now + delay;
}

std::string DaemonState::error_text() const {
    std::string text = input_error ? input_error->message : std::string();
    if (retry)
        text += (text.empty() ? "" : "; ") + retry->error;
    return text;
}

std::string DaemonState::status_line() const {
    std::string line;
    if (!current)
        line = "no policy loaded";
    else if (removed)
        line = "NOT enforcing: the table was removed with smtpfencectl remove";
    else if (!current->loaded.policy.enabled)
        line = "NOT enforcing: SMTP_BLOCK is \"0\"";
    else
        line = "enforcing: " + describe(*current);
    if (input_error || retry) {
        line = "CONFIGURATION ERROR: " + error_text() + "; " +
               (retry                   ? "the table a previous run left is in force"
                : input_error->fallback ? "the built-in defaults are in force"
                                        : "the rules in force are unchanged") +
               "; " + line;
    }
    if (heal.count > 0)
        line += "; restored after foreign changes " + std::to_string(heal.count) + " time(s)";
    return line;
}

void journal_config_error(const DaemonState& state, const std::string& error, std::string_view when,
                          std::string line) {
    journal::Entry e{journal::Kind::ConfigError, log::Level::Error, std::move(line), {}};
    e.add_text("ERROR", error).add("WHEN", std::string(when));
    e.add("IN_FORCE", state.retry                                        ? "previous_table"
                      : state.input_error && state.input_error->fallback ? "defaults"
                                                                         : "unchanged");
    journal::write(e);
}

ctl::AccessPolicy control_access(const Desired& desired) {
    ctl::AccessPolicy access;
    access.read_all = desired.loaded.policy.control_read_all;
    const std::string& admin = desired.loaded.policy.control_admin_group;
    if (!admin.empty()) {
        if (const GroupEntry* g = find_group(desired.accounts, admin)) {
            access.admin_gid = g->gid;
        } else {
            log::warning("CONTROL_ADMIN_GROUP: unknown group \"" + text::printable(admin) +
                         "\"; only root may change the allowlist");
        }
    }
    return access;
}

void adopt(DaemonState& state, Desired desired, ctl::ControlServer& server) {
    state.current = std::move(desired);
    state.applied_at = std::time(nullptr);
    server.set_access(control_access(*state.current));
}

const Account* find_user(const AccountDb& db, const std::string& name) {
    if (const Account* a = db.user(name))
        return a;
    if (const auto uid = text::parse_unsigned(name, 4294967294U))
        return db.user_by_uid(static_cast<std::uint32_t>(*uid));
    return nullptr;
}

const GroupEntry* find_group(const AccountDb& db, const std::string& name) {
    if (const GroupEntry* g = db.group(name))
        return g;
    if (const auto gid = text::parse_unsigned(name, 4294967294U))
        return db.group_by_gid(static_cast<std::uint32_t>(*gid));
    return nullptr;
}

}  // namespace smtpfence
