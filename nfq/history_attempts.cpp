// `attempts` from history.db: the newest `limit` matches, oldest first, read so that
// neither the time nor the memory grows with the store.
//
// Time: every filter combination walks indexes in time order (attempts_branches()),
// so a query reads its matches from the newest on and stops; a sort of every match
// ("USE TEMP B-TREE FOR ORDER BY") would read them all, seconds at 10M records.
// Memory: the answer is handed on record by record (AttemptVisitor). To do that oldest
// first without holding the newest `limit`, two passes read one snapshot: newest first
// the keys (epoch, id) only, to the (limit + 1)th match, which says whether more matched
// and where the answer starts; then oldest first from that key, the records.
#include <algorithm>
#include <cerrno>
#include <functional>
#include <limits>
#include <set>
#include <utility>

#include "common/local_time.h"
#include "common/text.h"
#include "nfq/attempt_log.h"
#include "nfq/history_query.h"
#include "policy/destination.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
// The order of the answer; the id orders the records of one second as they were written.
using Key = std::pair<std::int64_t, std::int64_t>;

constexpr std::int64_t kForever = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kNoId = std::numeric_limits<std::int64_t>::min();

// Each branch is a statement with its own cursor (a few KiB). An executable with more
// processes than this (a script run from thousands of folders), or a user with more
// uids, is one walk of records_epoch instead: in time order as well, testing each record.
constexpr std::size_t kMaxBranches = 64;

// The columns of the records pass, in the order record_of() takes them; then r.id.
constexpr const char* kRecordColumns =
    "r.epoch, r.uid, r.gid, r.user, r.account, r.explained, r.count, r.identified, r.pid, "
    "p.exe, p.cwd, p.cmdline, r.family, r.src, r.sport, r.dst, r.dport, r.id";
constexpr int kRecordIdColumn = 17;
constexpr int kKeyIdColumn = 1;  // the keys pass: r.epoch, r.id

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

// The first column of every row of stmt, at most limit of them.
Result<std::vector<std::int64_t>> ints_of(sql::Statement& stmt, std::size_t limit) {
    std::vector<std::int64_t> out;
    while (out.size() < limit) {
        auto row = stmt.step();
        if (!row)
            return std::unexpected(row.error());
        if (!*row)
            break;
        out.push_back(stmt.int64(0));
    }
    return out;
}

// The branches of a user filter: the account of that name, the uid it spells, and the
// uids the name had in the days asked for (`daily` keeps each uid's name; a day either
// side, as the writer's zone may not have been this process's).
Result<std::vector<AttemptBranch>> user_branches(sql::Database& db, const AttemptQuery& q) {
    auto stmt = db.prepare(
        "SELECT DISTINCT uid FROM daily WHERE day >= ?1 AND day <= ?2 AND "
        "user = ?3 ORDER BY uid");
    if (!stmt)
        return std::unexpected(stmt.error());
    const std::int64_t until = q.until.value_or(kForever);
    stmt->bind(1, local_day(q.since.value_or(0)) - 1)
        .bind(2, until == kForever ? kForever : local_day(until) + 1)
        .bind(3, *q.user);
    auto named = ints_of(*stmt, kMaxBranches);
    if (!named)
        return std::unexpected(named.error());
    std::set<std::int64_t> uids(named->begin(), named->end());
    if (const auto uid = uid_of(*q.user))
        uids.insert(*uid);
    std::vector<AttemptBranch> out{{"records_account", "account", *q.user}};
    for (const std::int64_t uid : uids)
        out.push_back({"records_uid", "uid", uid});
    return out;
}

Result<std::vector<AttemptBranch>> exe_branches(sql::Database& db, const std::string& exe) {
    auto stmt = db.prepare("SELECT id FROM procs WHERE exe = ?1 ORDER BY id");
    if (!stmt)
        return std::unexpected(stmt.error());
    stmt->bind(1, exe);
    auto procs = ints_of(*stmt, kMaxBranches + 1);
    if (!procs)
        return std::unexpected(procs.error());
    std::vector<AttemptBranch> out;
    for (const std::int64_t proc : *procs)
        out.push_back({"records_proc", "proc", proc});
    return out;
}

// One branch's statement, stepped in its pass's order.
struct Cursor {
    sql::Statement stmt;
    int id_column = 0;
    std::optional<Key> key{};  // the row the statement is on; nullopt: done

    Result<void> next() {
        auto row = stmt.step();
        if (!row)
            return std::unexpected(row.error());
        key = *row ? std::optional<Key>(Key{stmt.int64(0), stmt.int64(id_column)}) : std::nullopt;
        return {};
    }
};

// The statements of every branch for one pass, parameters bound; from: the records
// pass starts after this key.
Result<std::vector<Cursor>> open_cursors(sql::Database& db, const AttemptQuery& q,
                                         const std::vector<AttemptBranch>& branches,
                                         AttemptPass pass, Key from) {
    std::vector<Cursor> cursors;
    for (const AttemptBranch& b : branches) {
        auto stmt = db.prepare(attempts_sql(q, b, pass));
        if (!stmt)
            return std::unexpected(stmt.error());
        // The numbers of attempts_sql()'s parameters; those a query lacks are not bound.
        stmt->bind(1, from.first).bind(2, q.until.value_or(kForever)).bind(12, from.second);
        std::visit([&](const auto& v) { stmt->bind(20, v); }, b.value);
        if (q.only_uid)
            stmt->bind(3, static_cast<std::int64_t>(*q.only_uid));
        if (q.account)
            stmt->bind(4, *q.account);
        if (q.exe)
            stmt->bind(5, *q.exe);
        if (q.dst)
            stmt->bind(6, *q.dst);
        if (q.user)
            stmt->bind(7, *q.user).bind(8, uid_of(*q.user));
        cursors.push_back(
            {std::move(*stmt), pass == AttemptPass::Keys ? kKeyIdColumn : kRecordIdColumn});
    }
    return cursors;
}

// The rows of every cursor in one order, a record that two branches hold (a user's
// account and uid) once: each(row) for each until it says to stop (false).
using EachRow = std::function<Result<bool>(const sql::Statement&)>;
Result<void> merge(std::vector<Cursor>& cursors, bool ascending, const EachRow& each) {
    for (Cursor& c : cursors) {
        if (auto r = c.next(); !r)
            return r;
    }
    const auto before = [&](const Key& a, const Key& b) { return ascending ? a < b : b < a; };
    while (true) {
        Cursor* first = nullptr;
        for (Cursor& c : cursors) {
            if (c.key && (first == nullptr || before(*c.key, *first->key)))
                first = &c;
        }
        if (first == nullptr)
            return {};
        const Key key = *first->key;
        auto go_on = each(first->stmt);
        if (!go_on)
            return std::unexpected(go_on.error());
        if (!*go_on)
            return {};
        for (Cursor& c : cursors) {
            if (c.key == key) {
                if (auto r = c.next(); !r)
                    return r;
            }
        }
    }
}

// Both passes in one read transaction, so that they see the same records whatever the
// worker commits meanwhile (WAL: the writer is not held up by it).
class ReadSnapshot {
  public:
    explicit ReadSnapshot(sql::Database& db) : db_(db) {}
    ReadSnapshot(const ReadSnapshot&) = delete;
    ReadSnapshot& operator=(const ReadSnapshot&) = delete;
    ~ReadSnapshot() {
        if (begun_)
            (void)db_.exec("COMMIT");  // read only: nothing to keep or lose
    }
    [[nodiscard]] Result<void> begin() {
        auto r = db_.exec("BEGIN");
        begun_ = r.has_value();
        return r;
    }

  private:
    sql::Database& db_;
    bool begun_ = false;
};

// A reader's deadline moved for one pass (from the reader's: pass(at)), and back after.
class PassDeadline {
  public:
    PassDeadline(Clock::time_point* at,
                 const std::function<Clock::time_point(Clock::time_point)>& pass)
        : at_(at), saved_(at != nullptr ? *at : Clock::time_point::max()) {
        if (at_ != nullptr)
            *at_ = pass(saved_);
    }
    PassDeadline(const PassDeadline&) = delete;
    PassDeadline& operator=(const PassDeadline&) = delete;
    ~PassDeadline() {
        if (at_ != nullptr)
            *at_ = saved_;
    }

  private:
    Clock::time_point* at_;
    Clock::time_point saved_;
};

}  // namespace

Result<std::string> canonical_address(std::string_view text) {
    auto n = parse_network(text);
    if (!n || text.find('/') != std::string_view::npos) {
        return fail(EINVAL, "dst \"" + text::printable(text) + "\"", "not an IPv4 or IPv6 address");
    }
    return n->text();
}

Result<std::vector<AttemptBranch>> attempts_branches(sql::Database& db, const AttemptQuery& q) {
    // One value of an indexed column: one branch, the other filters tested on its rows.
    if (q.only_uid)
        return std::vector<AttemptBranch>{{"records_uid", "uid", std::int64_t{*q.only_uid}}};
    if (q.account)
        return std::vector<AttemptBranch>{{"records_account", "account", *q.account}};
    if (q.dst)
        return std::vector<AttemptBranch>{{"records_dst", "dst", *q.dst}};
    if (q.user || q.exe) {
        auto branches = q.user ? user_branches(db, q) : exe_branches(db, *q.exe);
        if (!branches || branches->size() <= kMaxBranches)
            return branches;
    }
    return std::vector<AttemptBranch>{{"records_epoch", "", std::int64_t{0}}};
}

std::string attempts_sql(const AttemptQuery& q, const AttemptBranch& branch, AttemptPass pass) {
    const bool records = pass == AttemptPass::Records;
    std::string sql = records ? std::string("SELECT ") + kRecordColumns + " FROM records r"
                              : std::string("SELECT r.epoch, r.id FROM records r");
    // INDEXED BY: the planner may not swap in another index that a sort would then follow.
    sql += " INDEXED BY " + branch.index;
    if (records)
        sql += " LEFT JOIN procs p ON p.id = r.proc";
    sql += " WHERE r.epoch >= ?1 AND r.epoch < ?2";
    if (records)
        sql += " AND (r.epoch > ?1 OR r.id > ?12)";  // after the key (?1, ?12)
    if (!branch.column.empty())
        sql += " AND r." + branch.column + " = ?20";
    if (q.only_uid)
        sql += " AND r.uid = ?3";
    if (q.account)
        sql += " AND r.account = ?4";
    if (q.exe && branch.column != "proc")
        sql += " AND r.proc IN (SELECT id FROM procs WHERE exe = ?5)";
    if (q.dst)
        sql += " AND r.dst = ?6";
    if (q.user)  // the old log's filter: the user name, the account or the uid
        sql += " AND (r.user = ?7 OR r.account = ?7 OR r.uid = ?8)";
    return sql + (records ? " ORDER BY r.epoch, r.id" : " ORDER BY r.epoch DESC, r.id DESC");
}

Result<void> HistoryReader::attempts(const AttemptQuery& query, AttemptVisitor& out) {
    if (query.limit < 1 || query.limit > kMaxLimit) {
        return fail(EINVAL, "limit " + std::to_string(query.limit),
                    "must be from 1 to " + std::to_string(kMaxLimit));
    }
    AttemptQuery q = query;
    if (q.dst) {
        auto canonical = canonical_address(*q.dst);
        if (!canonical)
            return std::unexpected(canonical.error());
        q.dst = std::move(*canonical);
    }
    if (!db_)
        return out.begin(0, false);
    ReadSnapshot snapshot(*db_);
    if (auto r = snapshot.begin(); !r)
        return std::unexpected(failed(r.error()));
    auto branches = attempts_branches(*db_, q);
    if (!branches)
        return std::unexpected(failed(branches.error()));

    std::size_t matches = 0;
    std::optional<Key> boundary;
    {
        // The keys within half the time left: the records pass reads as many rows again.
        const PassDeadline half(deadline_.get(), [](Clock::time_point at) {
            return Clock::now() + (at - Clock::now()) / 2;
        });
        auto cursors =
            open_cursors(*db_, q, *branches, AttemptPass::Keys, {q.since.value_or(0), kNoId});
        if (!cursors)
            return std::unexpected(failed(cursors.error()));
        auto keys = merge(*cursors, false, [&](const sql::Statement& s) -> Result<bool> {
            if (++matches <= q.limit)
                return true;
            boundary = Key{s.int64(0), s.int64(kKeyIdColumn)};
            return false;
        });
        if (!keys)
            return std::unexpected(failed(keys.error()));
    }
    const std::size_t shown = boundary ? q.limit : matches;
    if (auto r = out.begin(shown, boundary.has_value()); !r || shown == 0)
        return r;

    // Not stopped at the deadline: a line cut after its first records could not say why
    // (the child's alarm still ends one that is stuck).
    const PassDeadline none(deadline_.get(),
                            [](Clock::time_point) { return Clock::time_point::max(); });
    auto cursors = open_cursors(*db_, q, *branches, AttemptPass::Records,
                                boundary.value_or(Key{q.since.value_or(0), kNoId}));
    if (!cursors)
        return std::unexpected(cursors.error());
    std::size_t written = 0;
    Result<void> taken;  // out's error (a client gone away) is not the query's
    auto records = merge(*cursors, true, [&](const sql::Statement& s) -> Result<bool> {
        taken = out.record(record_of(s));
        return taken && ++written < shown;
    });
    if (!taken)
        return taken;
    return records;
}

Result<AttemptPage> HistoryReader::attempts(const AttemptQuery& q) {
    struct Collect final : AttemptVisitor {
        AttemptPage page;
        Result<void> begin(std::size_t shown, bool more) override {
            page.records.reserve(shown);
            page.more = more;
            return {};
        }
        Result<void> record(const json& record) override {
            page.records.push_back(record);
            return {};
        }
    } collect;
    if (auto r = attempts(q, collect); !r)
        return std::unexpected(r.error());
    return std::move(collect.page);
}

}  // namespace smtpfence::nfq
