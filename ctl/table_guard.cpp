#include "ctl/table_guard.h"

#include <chrono>
#include <ctime>

#include "common/journal.h"
#include "common/log.h"
#include "common/text.h"
#include "ctl/service_notify.h"

namespace smtpfence {

void TableGuard::watch_events() {
    if (auto m = nft::TableMonitor::open(table_, engine_.portid())) {
        monitor_ = std::move(*m);
    } else {
        log::warning(m.error().message() +
                     "; a deleted or changed table is found by the check each second only");
    }
}

int TableGuard::events_fd() const {
    return monitor_ ? monitor_->fd() : -1;
}

void TableGuard::on_events() {
    if (!monitor_)
        return;
    auto read = monitor_->read();
    if (!read) {
        log::error(read.error().message() + "; relying on the check each second");
        monitor_.reset();
        return;
    }
    if (const std::optional<nft::ForeignChange>& change = *read)
        on_change(*change);
}

// Only possible when the table is not owned, or while it was orphaned.
void TableGuard::on_change(const nft::ForeignChange& change) {
    std::string what = text::join(change.what, ", ");
    if (change.events_lost)
        what += std::string(what.empty() ? "" : ", ") + "events lost (socket overflow)";
    restore(change.who.empty() ? "unknown" : change.who, what);
}

void TableGuard::check() {
    if (!state_.enforcing() || !state_.current)
        return;
    auto header = engine_.table_header(table_);
    if (!header) {
        log::warning("check table inet " + table_ + ": " + header.error().message());
        return;
    }
    const std::optional<nft::Engine::TableHeader>& found = *header;
    if (!found) {
        // Also while the first apply is retried: the table a previous run left was in
        // force, and with it gone nothing is; waiting for the retry (up to a minute)
        // would leave SMTP open. A restore that succeeds is the retry done.
        const std::uint64_t healed = state_.heal.count;
        restore("unknown (found by the check each second)", "table missing");
        if (state_.heal.count != healed)
            state_.retry.reset();
    } else if (state_.retry) {
        // The table a previous run left is in force: changing it is the retry's job
        // (FirstApply), not a self-heal.
        return;
    } else if (state_.current->spec.owned && found->owner != engine_.portid()) {
        restore("unknown (found by the check each second)", "table not owned by us");
    }
}

void TableGuard::restore(const std::string& who, const std::string& what) {
    if (!state_.enforcing() || !state_.current) {
        log::info("table inet " + table_ + " changed by " + who + " (" + what +
                  "); nothing is enforced, left alone");
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto applied = engine_.apply(nft::build_ruleset(state_.current->spec));
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    HealStats& heal = state_.heal;
    heal.last_at = std::time(nullptr);
    heal.last_who = who;
    heal.last_what = what;
    heal.last_restore_us = us;
    heal.last_ok = applied.has_value();
    // Kind self_heal (docs/journal.md): who changed what, restored or not, how long.
    journal::Entry e{journal::Kind::SelfHeal, log::Level::Warning, {}, {}};
    e.add("TABLE", table_).add("CHANGED_BY", who).add("CHANGE", what);
    e.add("RESTORED", applied ? "yes" : "no").add("DURATION_US", static_cast<std::uint64_t>(us));
    e.message = "table inet " + table_ + " changed by " + who + ": " + what;
    if (!applied) {
        ++heal.failures;
        heal.last_error = applied.error().message();
        e.priority = log::Level::Error;
        e.message += "; restoring it failed: " + heal.last_error + " (tried again each second)";
        journal::write(e.add_text("ERROR", heal.last_error));
        return;
    }
    ++heal.count;
    heal.last_error.clear();
    service::status(state_.status_line());
    e.message += "; restored in " + std::to_string(us / 1000) + "." +
                 std::to_string((us % 1000) / 100) + " ms" +
                 (applied->table_existed && !applied->counters_kept ? " (" + applied->note + ")"
                                                                    : std::string());
    journal::write(e);
}

}  // namespace smtpfence
