#include "ctl/metrics_export.h"

#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>

#include "common/log.h"
#include "common/sqlite.h"
#include "ctl/dest_sync.h"
#include "ctl/metrics_textfile.h"
#include "nfq/history_schema.h"
#include "nfq/proc_queue.h"

#ifndef SMTPFENCE_VERSION
#define SMTPFENCE_VERSION "unknown"
#endif

namespace smtpfence {

Result<std::optional<std::uint64_t>> read_explained_total(const std::string& state_dir) {
    const std::string path = state_dir + "/" + nfq::history::kFileName;
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        return std::nullopt;
    // No wait: this runs in the daemon's loop. A WAL reader is blocked only while the
    // worker recovers or restarts the log; then the last value is written again and the
    // next tick reads.
    constexpr int kBusyMs = 0;
    auto db = sql::Database::open(path, sql::Database::Mode::ReadOnly, kBusyMs);
    if (!db)
        return std::unexpected(db.error());
    if (auto r = db->exec(nfq::history::kReaderPragmas); !r)
        return std::unexpected(r.error());
    auto has = db->query_int("SELECT count(*) FROM sqlite_schema WHERE name = 'totals'");
    if (!has)
        return std::unexpected(has.error());
    if (has->value_or(0) == 0)
        return std::nullopt;
    auto total = db->query_int(nfq::history::kReadExplainedTotal);
    if (!total)
        return std::unexpected(total.error());
    const std::optional<std::int64_t> value = *total;
    if (!value)
        return std::nullopt;
    return static_cast<std::uint64_t>(*value);
}

std::string MetricsExporter::path() const {
    if (state_.current && state_.current->loaded.policy.metrics_textfile)
        return *state_.current->loaded.policy.metrics_textfile;
    return options_.metrics_textfile;
}

MetricsExporter::Events MetricsExporter::events() const {
    return {state_.last_apply.count, state_.input_error.has_value(), state_.retry.has_value(),
            state_.removed, state_.heal.count + state_.heal.failures};
}

void MetricsExporter::tick(Clock::time_point now) {
    const Events seen = events();
    if (next_ && now < *next_ && seen == written_events_)
        return;
    next_ = now + kInterval;
    written_events_ = seen;
    write();
}

MetricsSnapshot MetricsExporter::snapshot() {
    MetricsSnapshot m;
    m.version = SMTPFENCE_VERSION;
    auto present = engine_.table_exists(options_.table);
    m.table_present = present && *present;
    // Enforcing means rules in the kernel: a table flushed by hand is not enforcing, even
    // while the daemon still wants it (until the guard restores it).
    m.enforcing = state_.enforcing() && m.table_present;
    m.config_error = state_.input_error || state_.retry;
    m.self_heals = state_.heal.count;
    m.self_heal_failures = state_.heal.failures;
    m.worker_up = worker_.pid() > 0 && worker_.ready();
    m.worker_restarts = worker_.restarts();
    if (m.table_present) {
        auto blocked = engine_.read_blocked(options_.table);
        if (blocked)
            totals_.update(*blocked);
        else
            log::debug("metrics: " + blocked.error().message());
    }
    const Desired* current = state_.current ? &*state_.current : nullptr;
    for (const auto& [uid, count] : totals_.by_uid()) {
        const Account* a = current != nullptr ? current->accounts.user_by_uid(uid) : nullptr;
        m.attempts.push_back({a != nullptr ? a->name : std::to_string(uid), uid, count});
    }
    if (current != nullptr) {
        m.table_owned = current->spec.owned && m.table_present;
        m.allowed_uids = current->allow.uids.size();
        m.allowed_gids = current->allow.gids.size();
        m.destination_exceptions = exceptions_of(*current).size();
        if (const auto q = nfq::read_queue_proc_stats(current->loaded.policy.queue_num))
            m.queue = MetricsSnapshot::Queue{q->waiting, q->queue_dropped, q->user_dropped};
    }
    // Busy or unreadable for a moment: the last value read stays (a series that
    // disappears would go stale in Prometheus).
    if (auto explained = read_explained_total(options_.state_dir))
        explained_ = *explained;
    else
        log::debug("metrics: attempt history: " + explained.error().message());
    m.explained = explained_;
    if (state_.last_apply.count > 0) {
        m.last_apply_seconds = std::chrono::duration<double>(state_.last_apply.took).count();
        m.last_apply_at = state_.last_apply.at;
    }
    return m;
}

void MetricsExporter::write() {
    const std::string target = path();
    if (target != written_path_ && !written_path_.empty()) {
        // A stale file left behind would be served as if it were current.
        (void)::unlink(written_path_.c_str());
        written_path_.clear();
    }
    state_.metrics.path = target;
    if (target.empty()) {
        state_.metrics.last_error.clear();
        return;
    }
    auto written = write_textfile(target, render_metrics(snapshot()));
    if (!written) {
        state_.metrics.last_error = written.error().message();
        ++state_.metrics.failures;
        report("metrics textfile not written: " + state_.metrics.last_error +
               " (docs/metrics.md; METRICS_TEXTFILE = \"\" turns it off)");
        return;
    }
    written_path_ = target;
    state_.metrics.last_written = std::time(nullptr);
    state_.metrics.last_error.clear();
    report("");
}

void MetricsExporter::report(const std::string& message) {
    if (message == logged_)
        return;
    if (message.empty())
        log::notice("metrics textfile written again: " + path());
    else
        log::warning(message);
    logged_ = message;
}

}  // namespace smtpfence
