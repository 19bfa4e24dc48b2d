#include "nfq/history_query.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "common/local_time.h"
#include "common/text.h"
#include "nfq/attempt_log.h"
#include "nfq/history_schema.h"
#include "policy/destination.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::int64_t kForever = std::numeric_limits<std::int64_t>::max();

// The columns every attempts query reads, in the order record_of() takes them.
constexpr const char* kRecordColumns =
    "r.epoch, r.uid, r.gid, r.user, r.account, r.explained, r.count, r.identified, r.pid, "
    "p.exe, p.cwd, p.cmdline, r.family, r.src, r.sport, r.dst, r.dport";

// One row as the stream's JSON object. Built by the stream's own writer (to_json_line),
// so that `attempts --json` and a log shipper see one format.
json record_of(const sql::Statement& s) {
    const auto u32 = [&](int c) { return static_cast<std::uint32_t>(s.int64(c)); };
    if (s.int64(5) == 0) {
        return json::parse(
            to_json_line(CountedOnly{.time = s.int64(0),
                                     .uid = u32(1),
                                     .user = s.text(3),
                                     .account = s.text(4),
                                     .count = static_cast<std::uint64_t>(s.int64(6))}));
    }
    Attempt a;
    a.time = s.int64(0);
    a.uid = u32(1);
    a.gid = u32(2);
    a.user = s.text(3);
    a.account = s.text(4);
    a.identified = s.int64(7) != 0;
    if (a.identified) {
        a.pid = static_cast<pid_t>(s.int64(8));
        a.exe = s.text(9);
        a.cwd = s.text(10);
        a.cmdline = s.text(11);
    }
    a.family = s.int64(12) == 6 ? "ipv6" : "ipv4";
    a.src = s.text(13);
    a.sport = static_cast<std::uint16_t>(s.int64(14));
    a.dst = s.text(15);
    a.dport = static_cast<std::uint16_t>(s.int64(16));
    return json::parse(to_json_line(a));
}

// A uid given as the user filter ("1001"), as the old log's filter took it.
std::optional<std::int64_t> uid_of(const std::string& text) {
    const auto uid = text::parse_unsigned(text, std::numeric_limits<std::uint32_t>::max());
    if (!uid)
        return std::nullopt;
    return static_cast<std::int64_t>(*uid);
}

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

Result<std::string> canonical_address(std::string_view text) {
    auto n = parse_network(text);
    if (!n || text.find('/') != std::string_view::npos) {
        return fail(EINVAL, "dst \"" + text::printable(text) + "\"", "not an IPv4 or IPv6 address");
    }
    return n->text();
}

std::string attempts_sql(const AttemptQuery& q) {
    std::string sql = std::string("SELECT ") + kRecordColumns +
                      " FROM records r LEFT JOIN procs p ON p.id = r.proc"
                      " WHERE r.epoch >= ?1 AND r.epoch < ?2";
    if (q.only_uid)
        sql += " AND r.uid = ?3";
    if (q.account)
        sql += " AND r.account = ?4";
    if (q.exe)
        sql += " AND r.proc IN (SELECT id FROM procs WHERE exe = ?5)";
    if (q.dst)
        sql += " AND r.dst = ?6";
    if (q.user) {
        // Indexed candidates (the account, the uid, the uids the name had in the days
        // asked for: `daily` keeps each uid's name), then the old filter's exact test.
        sql +=
            " AND (r.account = ?7 OR r.uid = ?8 OR r.uid IN (SELECT uid FROM daily"
            " WHERE day >= ?9 AND day <= ?10 AND user = ?7))"
            " AND (r.user = ?7 OR r.account = ?7 OR r.uid = ?8)";
    }
    return sql + " ORDER BY r.epoch DESC, r.id DESC LIMIT ?11";
}

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

Result<AttemptPage> HistoryReader::attempts(const AttemptQuery& q) {
    if (q.limit < 1 || q.limit > kMaxLimit) {
        return fail(EINVAL, "limit " + std::to_string(q.limit),
                    "must be from 1 to " + std::to_string(kMaxLimit));
    }
    std::optional<std::string> dst;
    if (q.dst) {
        auto canonical = canonical_address(*q.dst);
        if (!canonical)
            return std::unexpected(canonical.error());
        dst = std::move(*canonical);
    }
    AttemptPage page;
    if (!db_)
        return page;
    auto stmt = db_->prepare(attempts_sql(q));
    if (!stmt)
        return std::unexpected(stmt.error());
    // The numbers of attempts_sql()'s parameters; those a query lacks are not bound.
    const std::int64_t since = q.since.value_or(0);
    const std::int64_t until = q.until.value_or(kForever);
    stmt->bind(1, since).bind(2, until).bind(11, static_cast<std::int64_t>(q.limit) + 1);
    if (q.only_uid)
        stmt->bind(3, static_cast<std::int64_t>(*q.only_uid));
    if (q.account)
        stmt->bind(4, *q.account);
    if (q.exe)
        stmt->bind(5, *q.exe);
    if (dst)
        stmt->bind(6, *dst);
    if (q.user) {
        stmt->bind(7, *q.user).bind(8, uid_of(*q.user));
        // A day either side: the writer's zone may not have been this process's.
        stmt->bind(9, local_day(since) - 1);
        stmt->bind(10, until == kForever ? kForever : local_day(until) + 1);
    }
    while (true) {
        auto row = stmt->step();
        if (!row)
            return std::unexpected(failed(row.error()));
        if (!*row)
            break;
        if (page.records.size() == q.limit) {
            page.more = true;
            break;
        }
        page.records.push_back(record_of(*stmt));
    }
    std::ranges::reverse(page.records);
    return page;
}

}  // namespace smtpfence::nfq
