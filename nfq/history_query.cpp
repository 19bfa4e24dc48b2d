#include "nfq/history_query.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "common/local_time.h"
#include "nfq/history_schema.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::int64_t kForever = std::numeric_limits<std::int64_t>::max();

// One account's line of `top`, added up over the parts of the time range.
struct TopRow {
    std::uint64_t explained = 0, counted = 0;
    std::set<std::string> users;
    std::int64_t last = 0;
    std::string last_cwd, last_exe;
};
using TopRows = std::map<std::string, TopRow>;

// One part of top's range, from `records` (a partial day) or from `daily` (whole days):
// totals per account and user, then per account the last identified process (SQLite
// takes the bare columns from the row of the max()). ?1, ?2: the range; the table is t,
// and " AND t.uid = ?3" goes before the GROUP BY when the scope is one uid.
struct TopQueries {
    const char* totals;
    const char* last_identified;
};
constexpr TopQueries kRecordsPart{
    "SELECT t.account, t.user, SUM(t.explained), "
    "SUM(CASE WHEN t.explained = 0 THEN t.count ELSE 0 END), MAX(t.epoch) FROM records t "
    "WHERE t.epoch >= ?1 AND t.epoch < ?2%s GROUP BY t.account, t.user",
    // The last one written, as the log's order had it.
    "SELECT t.account, MAX(t.id), p.exe, p.cwd FROM records t JOIN procs p ON p.id = t.proc "
    "WHERE t.epoch >= ?1 AND t.epoch < ?2 AND t.identified = 1%s GROUP BY t.account"};
constexpr TopQueries kDailyPart{
    "SELECT t.account, t.user, SUM(t.explained), SUM(t.counted), MAX(t.last_epoch) FROM daily t "
    "WHERE t.day >= ?1 AND t.day < ?2%s GROUP BY t.account, t.user",
    "SELECT t.account, MAX(t.last_identified_epoch), t.last_exe, t.last_cwd FROM daily t "
    "WHERE t.day >= ?1 AND t.day < ?2 AND t.last_identified_epoch IS NOT NULL%s "
    "GROUP BY t.account"};

std::string with_scope(std::string_view sql, std::optional<std::uint32_t> only_uid) {
    const std::size_t at = sql.find("%s");
    return std::string(sql.substr(0, at)) + (only_uid ? " AND t.uid = ?3" : "") +
           std::string(sql.substr(at + 2));
}

// Adds one part of top's range ([from, to): seconds or day numbers) to rows.
Result<void> add_top_part(sql::Database& db, const TopQueries& part, std::int64_t from,
                          std::int64_t to, std::optional<std::uint32_t> only_uid, TopRows& rows) {
    for (const bool totals : {true, false}) {
        auto stmt = db.prepare(with_scope(totals ? part.totals : part.last_identified, only_uid));
        if (!stmt)
            return std::unexpected(stmt.error());
        stmt->bind(1, from).bind(2, to);
        if (only_uid)
            stmt->bind(3, static_cast<std::int64_t>(*only_uid));
        while (true) {
            auto row = stmt->step();
            if (!row)
                return std::unexpected(row.error());
            if (!*row)
                break;
            TopRow& r = rows[stmt->text(0)];
            if (totals) {
                r.users.insert(stmt->text(1));
                r.explained += static_cast<std::uint64_t>(stmt->int64(2));
                r.counted += static_cast<std::uint64_t>(stmt->int64(3));
                r.last = std::max(r.last, stmt->int64(4));
            } else {  // the parts come in time order: a later one's last is the last
                r.last_exe = stmt->text(2);
                r.last_cwd = stmt->text(3);
            }
        }
    }
    return {};
}

json top_json(const TopRows& rows) {
    std::vector<std::pair<std::string, TopRow>> sorted(rows.begin(), rows.end());
    std::ranges::stable_sort(sorted, [](const auto& a, const auto& b) {
        return a.second.explained + a.second.counted > b.second.explained + b.second.counted;
    });
    json out = json::array();
    for (const auto& [account, row] : sorted) {
        out.push_back({{"account", account},
                       {"attempts", row.explained + row.counted},
                       {"explained", row.explained},
                       {"counted_only", row.counted},
                       {"users", row.users},
                       {"last_epoch", row.last},
                       {"last_cwd", row.last_cwd},
                       {"last_exe", row.last_exe}});
    }
    return out;
}

}  // namespace

Result<HistoryReader> HistoryReader::open(const std::string& state_dir) {
    std::string path = state_dir + "/" + history::kFileName;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT)
            return HistoryReader(std::move(path), std::nullopt);  // nothing recorded yet
        return fail(errno, path);
    }
    auto db = sql::Database::open(path, sql::Database::Mode::ReadOnly);
    if (!db)
        return std::unexpected(db.error());
    if (auto r = db->exec(history::kReaderPragmas); !r)
        return std::unexpected(r.error());
    auto version = db->query_int("PRAGMA user_version");
    if (!version)
        return std::unexpected(version.error());
    const std::int64_t v = version->value_or(0);
    if (v != history::kSchemaVersion) {
        // Version 0 without tables: the writer is creating the file.
        auto tables = db->query_int("SELECT count(*) FROM sqlite_schema");
        if (v == 0 && tables && tables->value_or(0) == 0)
            return HistoryReader(std::move(path), std::nullopt);
        return fail(0, path,
                    "schema version " + std::to_string(v) + ", this smtpfenced reads version " +
                        std::to_string(history::kSchemaVersion) +
                        " (a newer or older smtpfence wrote it)");
    }
    return HistoryReader(std::move(path), std::move(*db));
}

void HistoryReader::set_deadline(Clock::time_point deadline) {
    deadline_ = std::make_unique<Clock::time_point>(deadline);
    if (!db_)
        return;
    // Every 1000 virtual machine steps: a few microseconds apart.
    sqlite3_progress_handler(
        db_->get(), 1000,
        [](void* at) { return Clock::now() >= *static_cast<Clock::time_point*>(at) ? 1 : 0; },
        deadline_.get());
}

// A query stopped at the deadline says so; any other error is SQLite's.
Error HistoryReader::failed(const Error& e) const {
    if (deadline_ && Clock::now() >= *deadline_) {
        return Error{ETIME, path_ + ": the query ran past its time limit",
                     "narrow it (--since, --until, --limit, a filter)"};
    }
    return e;
}

// Whole local days from `daily`; the part of a day before the first whole one and
// after the last, from `records`.
Result<json> HistoryReader::top(const TopQuery& q) {
    TopRows rows;
    if (db_) {
        const std::int64_t s = q.since;
        const std::int64_t first_day = local_midnight(s) == s ? s : local_midnight(s, 1);
        const std::int64_t end = q.until.value_or(kForever);
        const std::int64_t last_day = q.until ? local_midnight(*q.until) : kForever;
        Result<void> ok;
        if (first_day >= last_day) {
            ok = add_top_part(*db_, kRecordsPart, s, end, q.only_uid, rows);
        } else {
            if (s < first_day)
                ok = add_top_part(*db_, kRecordsPart, s, first_day, q.only_uid, rows);
            if (ok) {
                ok = add_top_part(*db_, kDailyPart, local_day(first_day),
                                  q.until ? local_day(last_day) : kForever, q.only_uid, rows);
            }
            if (ok && last_day < end)
                ok = add_top_part(*db_, kRecordsPart, last_day, end, q.only_uid, rows);
        }
        if (!ok)
            return std::unexpected(failed(ok.error()));
    }
    return top_json(rows);
}

}  // namespace smtpfence::nfq
