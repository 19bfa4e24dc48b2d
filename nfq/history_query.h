// The attempt history's read side: STATE_DIR/history.db opened read only (never
// created, never written), for `smtpfencectl attempts` and `top`. Run in the daemon's
// query children (ctl/history_child.h), never in its loop. A missing file is an empty
// history. The tables and why: nfq/history_schema.h, docs/history.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.h"
#include "common/sqlite.h"

namespace smtpfence::nfq {

// What `attempts` asks for; every field set narrows it. Times are epoch seconds,
// [since, until).
struct AttemptQuery {
    std::optional<std::string> user{};  // the user name, the account or the decimal uid
    std::optional<std::string> account{};
    std::optional<std::string> exe{};  // the executable's exact path
    std::optional<std::string> dst{};  // an IPv4 or IPv6 address, any spelling
    std::optional<std::int64_t> since{};
    std::optional<std::int64_t> until{};
    std::uint32_t limit = 100;  // 1..kMaxLimit
    // The scope the daemon forces on a peer that is not an admin: nothing of another
    // uid, whatever the other fields say.
    std::optional<std::uint32_t> only_uid{};
};

// The newest `limit` matching records, oldest first, each a JSON object as the
// attempts.jsonl stream has it (nfq/attempt_log.h to_json_line), and whether more
// matched than are shown.
struct AttemptPage {
    std::vector<nlohmann::json> records;
    bool more = false;
};

// Takes the answer to an attempts query while it is read, so that nobody holds a page
// of up to kMaxLimit records (docs/history.md, "Time and memory").
class AttemptVisitor {
  public:
    virtual ~AttemptVisitor() = default;
    // Once, before the records: how many follow, and whether more matched.
    [[nodiscard]] virtual Result<void> begin(std::size_t shown, bool more) = 0;
    // Each record, oldest first, as AttemptPage has them. An error stops the query.
    [[nodiscard]] virtual Result<void> record(const nlohmann::json& record) = 0;
};

struct TopQuery {
    std::int64_t since = 0;
    std::optional<std::int64_t> until{};
    std::optional<std::uint32_t> only_uid{};  // as AttemptQuery::only_uid
};

class HistoryReader {
  public:
    // STATE_DIR/history.db of another schema version is an error naming the file and
    // both versions; a missing one is an empty history.
    [[nodiscard]] static Result<HistoryReader> open(const std::string& state_dir);

    // From then on a query still running at deadline stops with an error (ETIME) that
    // says to narrow it, instead of running on.
    void set_deadline(std::chrono::steady_clock::time_point deadline);

    // Errors: EINVAL for a bad argument (a dst that is no address, a limit out of
    // range), naming it, before out.begin(). Each filter combination walks indexes in
    // time order and reads at most twice limit + 1 matches (attempts_plan()).
    [[nodiscard]] Result<void> attempts(const AttemptQuery& q, AttemptVisitor& out);
    // The same, collected: for small answers and the tests.
    [[nodiscard]] Result<AttemptPage> attempts(const AttemptQuery& q);
    // Accounts ranked by attempts (explained and counted) in [since, until): one object
    // each, {account, attempts, explained, counted_only, users, last_epoch, last_cwd,
    // last_exe}, most attempts first, ties in the order of the account names.
    [[nodiscard]] Result<nlohmann::json> top(const TopQuery& q);

    [[nodiscard]] const std::string& path() const { return path_; }
    // Whether there is a file (false: every answer is empty).
    [[nodiscard]] bool exists() const { return db_.has_value(); }

    static constexpr std::uint32_t kMaxLimit = 100000;

  private:
    HistoryReader(std::string path, std::optional<sql::Database> db)
        : path_(std::move(path)), db_(std::move(db)) {}
    [[nodiscard]] Error failed(const Error& e) const;

    std::string path_;
    std::optional<sql::Database> db_;
    // On the heap: SQLite's progress handler keeps its address, and a reader may move.
    std::unique_ptr<std::chrono::steady_clock::time_point> deadline_;
};

// The text the worker writes for an address (inet_ntop's), from any spelling of it:
// "2001:DB8:0::1" -> "2001:db8::1". EINVAL naming text when it is no single address.
[[nodiscard]] Result<std::string> canonical_address(std::string_view text);

// An index attempts() walks in time order (its column equal to value), or time alone
// (records_epoch, no column). Matches of q are read one statement per branch and
// merged by (epoch, id): the uid, the account, the destination, each process of an
// executable, each uid of a user. Never "USE TEMP B-TREE": no sort of every match.
struct AttemptBranch {
    std::string index;
    std::string column;
    std::variant<std::int64_t, std::string> value;
};

// The branches for q, from the filters it has: reads `procs` (the processes of an
// executable) and `daily` (the uids a user name had). Empty when nothing can match.
[[nodiscard]] Result<std::vector<AttemptBranch>> attempts_branches(sql::Database& db,
                                                                   const AttemptQuery& q);

// attempts() reads in two passes of the same snapshot (see history_attempts.cpp):
// newest first, the keys only, to the (limit + 1)th match; then oldest first from it,
// the records.
enum class AttemptPass { Keys, Records };

// The SQL of one branch in one pass, its parameters bound by number in attempts(); for
// the tests that check its plan.
[[nodiscard]] std::string attempts_sql(const AttemptQuery& q, const AttemptBranch& branch,
                                       AttemptPass pass);

}  // namespace smtpfence::nfq
