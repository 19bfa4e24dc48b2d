#include "ctl/local_alerts.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/journal.h"
#include "common/log.h"
#include "common/text.h"
#include "ctl/local_alert_child.h"
#include "nft/engine.h"

namespace smtpfence {

void AlertWindow::configure(std::uint64_t threshold, std::chrono::seconds interval) {
    threshold_ = threshold;
    interval_ = interval;
    if (threshold == 0) {
        accounts_.clear();
        last_feed_.reset();
    }
}

void AlertWindow::add(Account& a, std::uint64_t raw, Clock::time_point now) const {
    if (raw < a.last_raw)
        a.carried += a.last_raw;  // the counter started again: carry on from where it was
    a.last_raw = raw;
    const std::uint64_t total = raw + a.carried;
    if (!a.samples.empty() && a.samples.back().total == total)
        return;
    const auto step = interval_ / 64;
    if (a.samples.size() >= 2 && a.samples.back().at > now - step) {
        a.samples.back().total = total;  // see Account::samples
        return;
    }
    a.samples.push_back({now, total});
}

// The attempts since the cutoff: the total now less the total at now - interval (the
// last sample at or before it; the baseline when the account is younger). Samples no
// window will need again are dropped.
std::uint64_t AlertWindow::in_window(Account& a, Clock::time_point now) const {
    const auto cutoff = now - interval_;
    while (a.samples.size() >= 2 && a.samples[1].at <= cutoff)
        a.samples.pop_front();
    // (The next alert of an account comes an interval after its last at the earliest:
    // then the window starts after it, and attempts already reported are not counted.)
    return a.samples.back().total - a.samples.front().total;
}

std::vector<FiredAlert> AlertWindow::feed(const std::map<std::uint32_t, std::uint64_t>& totals,
                                          Clock::time_point now) {
    std::vector<FiredAlert> fired;
    if (threshold_ == 0)
        return fired;
    for (const auto& [uid, raw] : totals) {
        auto [it, fresh] = accounts_.try_emplace(uid);
        Account& a = it->second;
        if (fresh && last_feed_)
            a.samples.push_back({*last_feed_, 0});  // not in the last feed: it had none
        add(a, raw, now);
    }
    for (auto it = accounts_.begin(); it != accounts_.end();) {
        Account& a = it->second;
        const std::uint64_t count = in_window(a, now);
        const bool quiet = !a.fired || now - *a.fired >= interval_;
        if (count >= threshold_ && quiet) {
            a.fired = now;
            fired.push_back({it->first, count});
        }
        // Gone from the kernel's set and idle for an interval: nothing left to decide. (An
        // account still in the set keeps its state: its next total must not look new.)
        const bool idle = a.samples.size() == 1 && a.samples.front().at <= now - interval_;
        if (idle && quiet && !totals.contains(it->first))
            it = accounts_.erase(it);
        else
            ++it;
    }
    last_feed_ = now;
    return fired;
}

void LocalAlerts::configure(const AlertSettings& settings) {
    if (settings == settings_)
        return;
    settings_ = settings;
    window_.configure(settings.attempts, settings.interval);
    next_feed_.reset();  // at once: the first feed after a change is announced
    announce_ = settings.attempts > 0;
    if (settings.attempts == 0)
        log::info("local alerts: off");
}

void LocalAlerts::tick(nft::Engine& engine, const std::string& table, Clock::time_point now,
                       const AccountDb* accounts) {
    if (settings_.attempts == 0 || (next_feed_ && now < *next_feed_))
        return;
    next_feed_ = now + kFeedPeriod;
    auto blocked = engine.read_blocked(table);
    if (!blocked) {
        log::debug("local alerts: " + blocked.error().message());
        return;
    }
    std::map<std::uint32_t, std::uint64_t> totals;
    for (const auto& [uid, count] : *blocked)
        totals.emplace(uid, count.packets);
    feed(totals, now, accounts);
    if (announce_) {
        announce_ = false;
        log::info("local alerts on: at least " + std::to_string(settings_.attempts) +
                  " attempts of an account within " + std::to_string(settings_.interval.count()) +
                  " s; command: " + (settings_.command.empty() ? "none" : settings_.command) +
                  "; mail: " + (settings_.email.empty() ? "none" : settings_.email));
    }
}

void LocalAlerts::feed(const std::map<std::uint32_t, std::uint64_t>& totals, Clock::time_point now,
                       const AccountDb* accounts) {
    for (const FiredAlert& alert : window_.feed(totals, now)) {
        // Kind alert (docs/journal.md); the command and the mail carry the last process.
        const Account* a = accounts != nullptr ? accounts->user_by_uid(alert.uid) : nullptr;
        const std::string account = a != nullptr ? a->name : std::to_string(alert.uid);
        journal::Entry e{journal::Kind::Alert, log::Level::Warning, {}, {}};
        e.add("ACCOUNT", account)
            .add("UID", alert.uid)
            .add("COUNT", alert.count)
            .add("INTERVAL", static_cast<std::uint64_t>(settings_.interval.count()))
            .add("THRESHOLD", settings_.attempts);
        e.message = "alert: " + text::printable(account) + " (uid " + std::to_string(alert.uid) +
                    ") made " + std::to_string(alert.count) + " SMTP connection attempts within " +
                    std::to_string(settings_.interval.count()) + " s (ALERT_ATTEMPTS " +
                    std::to_string(settings_.attempts) + ")";
        journal::write(e);
        if (!settings_.command.empty() || !settings_.email.empty())
            start_child(alert);
    }
}

void LocalAlerts::start_child(const FiredAlert& alert) {
    if (children_.size() >= kMaxRunning) {
        log::warning("alert: uid " + std::to_string(alert.uid) + ": " +
                     std::to_string(children_.size()) +
                     " alert children still running; this alert's command and mail are skipped");
        return;
    }
    const AlertJob job{.settings = settings_,
                       .uid = alert.uid,
                       .count = alert.count,
                       .state_dir = state_dir_,
                       .passwd_path = passwd_path_,
                       .group_path = group_path_};
    const pid_t pid = fork();
    if (pid < 0) {
        log::error("alert: fork: " + errno_text(errno));
        return;
    }
    if (pid == 0)
        run_alert_child(job);
    children_.push_back(pid);
}

bool LocalAlerts::ended(pid_t pid) {
    return std::erase(children_, pid) > 0;
}

}  // namespace smtpfence
