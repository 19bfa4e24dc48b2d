// A history.db built with plain SQL on the schema (nfq/history_schema.h), as the worker's
// writer keeps it: records (and their procs) with the daily totals that go with them.
// For the tests of the readers (nfq/history_query.h, `smtpfencectl attempts`/`top`),
// independent of the writer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/error.h"
#include "common/sqlite.h"

namespace smtpfence::testing {

// One record: an explained attempt (count 0), or a counted-only record of count attempts.
struct HistoryRow {
    std::int64_t epoch = 0;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::string user{};
    std::string account{};
    std::uint64_t count = 0;
    // An explained attempt's process (identified when exe is not empty) and connection.
    std::int64_t pid = 0;
    std::string exe{}, cwd{}, cmdline{};
    int family = 4;
    std::string src = "192.0.2.1", dst = "198.51.100.25";
    std::uint16_t sport = 40000, dport = 25;
};

class HistoryFile {
  public:
    // STATE_DIR/history.db, created (replaced) with the schema and its version.
    [[nodiscard]] static Result<HistoryFile> create(const std::string& state_dir);

    // Inserts the record and adds it to its local day's row in `daily`. daily = false:
    // the record alone (a test of which table a query reads).
    [[nodiscard]] Result<void> add(const HistoryRow& row, bool daily = true);
    // copies records like row (an explained attempt), one every step seconds from
    // row.epoch, in one statement: a big history in a moment. No daily totals.
    [[nodiscard]] Result<void> add_copies(const HistoryRow& row, std::uint32_t copies,
                                          std::int64_t step);
    // Only the daily totals of row (a day whose records retention has deleted).
    [[nodiscard]] Result<void> add_daily(const HistoryRow& row);

    [[nodiscard]] sql::Database& db() { return db_; }

  private:
    explicit HistoryFile(sql::Database db) : db_(std::move(db)) {}
    [[nodiscard]] Result<std::optional<std::int64_t>> proc_of(const HistoryRow& row);

    sql::Database db_;
};

}  // namespace smtpfence::testing
