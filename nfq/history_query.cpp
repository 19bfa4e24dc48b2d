#include "nfq/history_query.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>
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
    std::set<std::string, std::less<>> users;
    std::int64_t last = 0;
    // The last identified process: its time decides between parts; within records the
    // record id (the log's order), within daily the day and uid of the winning row.
    std::int64_t last_identified = -1;
    std::int64_t last_proc = 0;
    std::int64_t last_day = 0, last_uid = 0;
    std::string last_cwd, last_exe;
};

// Accounts by name, looked up without a copy of the name per row.
struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TopRows = std::unordered_map<std::string, TopRow, NameHash, std::equal_to<>>;

TopRow& row_of(TopRows& rows, std::string_view account) {
    const auto it = rows.find(account);
    return it != rows.end() ? it->second : rows[std::string(account)];
}

void add_user(TopRow& r, std::string_view user) {
    if (!r.users.contains(user))
        r.users.emplace(user);
}

// One pass over each part, added up here rather than by SQL's GROUP BY (which sorts
// every row of a month of `daily` through a temporary B-tree first: measured 100-150 ms
// for 120,000 rows, against 50 ms to read them); the winners' folders and executables
// are read once per account afterwards. " AND t.uid = ?3" is inserted at %s when the
// scope is one uid.
constexpr const char* kDailyRows =
    "SELECT t.account, t.user, t.explained, t.counted, t.last_epoch, t.last_identified_epoch, "
    "t.day, t.uid FROM daily t WHERE t.day >= ?1 AND t.day < ?2%s";
constexpr const char* kRecordRows =
    "SELECT t.account, t.user, t.explained, t.count, t.epoch, t.proc, t.id FROM records t "
    "WHERE t.epoch >= ?1 AND t.epoch < ?2%s";

std::string with_scope(std::string_view sql, std::optional<std::uint32_t> only_uid) {
    const std::size_t at = sql.find("%s");
    return std::string(sql.substr(0, at)) + (only_uid ? " AND t.uid = ?3" : "") +
           std::string(sql.substr(at + 2));
}

Result<sql::Statement> prepare_part(sql::Database& db, const char* sql, std::int64_t from,
                                    std::int64_t to, std::optional<std::uint32_t> only_uid) {
    auto stmt = db.prepare(with_scope(sql, only_uid));
    if (!stmt)
        return stmt;
    stmt->bind(1, from).bind(2, to);
    if (only_uid)
        stmt->bind(3, static_cast<std::int64_t>(*only_uid));
    return stmt;
}

// The executable and folder of an account's last identified process, from a bound
// statement that selects them (in `daily` or `procs`).
Result<void> read_last_process(sql::Statement& st, TopRow& t) {
    return st.each([&](const sql::Statement& row) {
        t.last_exe = row.text(0);
        t.last_cwd = row.text(1);
    });
}

// Whole days [from, to) (day numbers) from `daily`.
Result<void> add_daily_part(sql::Database& db, std::int64_t from, std::int64_t to,
                            std::optional<std::uint32_t> only_uid, TopRows& rows) {
    auto stmt = prepare_part(db, kDailyRows, from, to, only_uid);
    if (!stmt)
        return std::unexpected(stmt.error());
    std::set<std::string, std::less<>> won;  // accounts whose last process is a daily row's
    auto r = stmt->each([&](const sql::Statement& row) {
        const std::string_view account = row.text_view(0);
        TopRow& t = row_of(rows, account);
        add_user(t, row.text_view(1));
        t.explained += static_cast<std::uint64_t>(row.int64(2));
        t.counted += static_cast<std::uint64_t>(row.int64(3));
        t.last = std::max(t.last, row.int64(4));
        // Days come after the records of an earlier part: their times compare.
        if (!row.is_null(5) && row.int64(5) > t.last_identified) {
            t.last_identified = row.int64(5);
            t.last_day = row.int64(6);
            t.last_uid = row.int64(7);
            if (!won.contains(account))
                won.emplace(account);
        }
    });
    if (!r)
        return r;
    auto named = db.prepare(
        "SELECT last_exe, last_cwd FROM daily WHERE day = ?1 AND account = ?2 AND uid = ?3");
    if (!named)
        return std::unexpected(named.error());
    for (const std::string& account : won) {
        TopRow& t = rows.find(account)->second;
        named->bind(1, t.last_day).bind(2, account).bind(3, t.last_uid);
        if (auto found = read_last_process(*named, t); !found)
            return found;
    }
    return {};
}

// The seconds [from, to) of a partial day from `records`; the last identified process
// of an account is its record written last (the log's order), named from `procs` once.
Result<void> add_records_part(sql::Database& db, std::int64_t from, std::int64_t to,
                              std::optional<std::uint32_t> only_uid, TopRows& rows) {
    auto stmt = prepare_part(db, kRecordRows, from, to, only_uid);
    if (!stmt)
        return std::unexpected(stmt.error());
    std::map<std::string, std::int64_t, std::less<>> last_id;  // account -> its last identified
    auto r = stmt->each([&](const sql::Statement& row) {
        const std::string_view account = row.text_view(0);
        TopRow& t = row_of(rows, account);
        add_user(t, row.text_view(1));
        if (row.int64(2) != 0)
            ++t.explained;
        else
            t.counted += static_cast<std::uint64_t>(row.int64(3));
        t.last = std::max(t.last, row.int64(4));
        auto at = last_id.find(account);
        if (at == last_id.end())
            at = last_id.emplace(std::string(account), 0).first;
        if (!row.is_null(5) && row.int64(6) > at->second) {
            at->second = row.int64(6);
            t.last_proc = row.int64(5);
            t.last_identified = row.int64(4);
        }
    });
    if (!r)
        return r;
    auto proc = db.prepare("SELECT exe, cwd FROM procs WHERE id = ?1");
    if (!proc)
        return std::unexpected(proc.error());
    for (const auto& [account, id] : last_id) {
        if (id == 0)
            continue;
        TopRow& t = rows.find(account)->second;
        proc->bind(1, t.last_proc);
        if (auto found = read_last_process(*proc, t); !found)
            return found;
    }
    return {};
}

json top_json(const TopRows& rows) {
    std::vector<std::pair<std::string, TopRow>> sorted(rows.begin(), rows.end());
    std::ranges::sort(sorted, [](const auto& a, const auto& b) {
        const std::uint64_t x = a.second.explained + a.second.counted;
        const std::uint64_t y = b.second.explained + b.second.counted;
        return x != y ? x > y : a.first < b.first;
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
            ok = add_records_part(*db_, s, end, q.only_uid, rows);
        } else {
            if (s < first_day)
                ok = add_records_part(*db_, s, first_day, q.only_uid, rows);
            if (ok) {
                ok = add_daily_part(*db_, local_day(first_day),
                                    q.until ? local_day(last_day) : kForever, q.only_uid, rows);
            }
            if (ok && last_day < end)
                ok = add_records_part(*db_, last_day, end, q.only_uid, rows);
        }
        if (!ok)
            return std::unexpected(failed(ok.error()));
    }
    return top_json(rows);
}

}  // namespace smtpfence::nfq
