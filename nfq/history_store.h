// The attempt history's one writer (the worker): every explained attempt, every
// counted-only record and the reconciler's checkpoint, in STATE_DIR/history.db
// (nfq/history_schema.h). Records are written into an open transaction that commit()
// ends, so a batch and the checkpoint that covers it land together or not at all:
// what a kill loses was not checkpointed either, and the next worker counts it as
// counted-only (docs/history.md, "Exactly once").
#pragma once

#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <tuple>

#include "common/error.h"
#include "common/sqlite.h"
#include "nfq/attempt.h"
#include "nfq/attempt_log.h"

namespace smtpfence::nfq {

struct HistoryLimits {
    int days = 90;                                         // HISTORY_DAYS
    std::uint64_t max_bytes = std::uint64_t{1024} << 20U;  // HISTORY_MAX_MB
};

struct HistoryCounters {
    std::uint64_t written = 0;  // records committed
    std::uint64_t commits = 0;
    std::uint64_t write_errors = 0;  // records lost to a failed write or commit
    std::uint64_t pruned = 0;        // records removed by retention
};

class HistoryStore final : public AttemptSink {
  public:
    // Opens (creating) STATE_DIR/history.db; a file that is not ours (a symlink, a
    // hard link, not a regular file, of a newer schema) is refused with a message.
    [[nodiscard]] static Result<HistoryStore> open(const std::string& state_dir,
                                                   HistoryLimits limits);

    // Moved only between transactions (an open one points at this object's database).
    HistoryStore(HistoryStore&&) noexcept;
    HistoryStore& operator=(HistoryStore&&) = delete;
    HistoryStore(const HistoryStore&) = delete;
    HistoryStore& operator=(const HistoryStore&) = delete;
    ~HistoryStore() override;

    void explained(const Attempt& attempt) override;
    void counted_only(const CountedOnly& record) override;
    void checkpoint(const Checkpoint& checkpoint) override;

    // Ends the open batch: committed whole, or, when any of its writes or the commit
    // failed, rolled back whole and the error returned. The reconciler then no longer
    // knows what is recorded: the worker exits, and the next one counts the batch's
    // attempts from the kernel's counters (docs/history.md, "Writes").
    [[nodiscard]] Result<void> commit();

    // Where the reconciler stands: the last checkpoint and the explained attempts
    // written after it, per uid.
    [[nodiscard]] Result<LogRecovery> recover();

    // Imports attempts.jsonl.1 and attempts.jsonl of an earlier version, once in the
    // life of the history (its first open; later these names are the stream's): their
    // records and last checkpoint go in in one transaction, then the files are renamed
    // to *.imported. Returns the number of records imported.
    [[nodiscard]] Result<std::uint64_t> import_jsonl();

    // One short step of retention (records older than HISTORY_DAYS or beyond
    // HISTORY_MAX_MB, oldest first, at most kPruneBatch of them, never one after the
    // last checkpoint): true when there is more to do. Called between packets, so that
    // no step holds the worker long.
    [[nodiscard]] Result<bool> prune_step(std::time_t now);

    // Over HISTORY_MAX_MB now (checked at every tick, not only when retention is due).
    [[nodiscard]] bool over_size();

    [[nodiscard]] const HistoryCounters& counters() const { return counters_; }
    [[nodiscard]] const std::string& path() const { return db_.path(); }
    // The file's size in bytes as SQLite counts it (pages in use, without the WAL).
    [[nodiscard]] Result<std::uint64_t> bytes_used();

    // Records per retention step: a few milliseconds (docs/history.md, "Retention").
    static constexpr int kPruneBatch = 64;
    static constexpr int kBusyMs = 100;

  private:
    struct Statements;
    HistoryStore(sql::Database db, std::string state_dir, HistoryLimits limits);
    [[nodiscard]] bool begin();
    [[nodiscard]] std::optional<std::int64_t> proc_id(const Attempt& a);
    void add_daily(std::time_t epoch, const std::string& account, std::uint32_t uid,
                   const std::string& user, std::uint64_t explained, std::uint64_t counted,
                   const Attempt* identified);
    void write_failed(const Error& e);
    enum class OldLine { Record, Checkpoint, Foreign };
    [[nodiscard]] OldLine import_line(const std::string& line);
    [[nodiscard]] Result<void> give_back_space();

    sql::Database db_;
    std::string state_dir_;
    HistoryLimits limits_;
    std::unique_ptr<Statements> stmt_;
    std::optional<sql::Transaction> tx_;
    std::uint64_t pending_ = 0;  // records in the open transaction
    // Interned processes: (exe, cwd, cmdline) -> procs.id, bounded; cleared by pruning.
    std::map<std::tuple<std::string, std::string, std::string>, std::int64_t> procs_;
    HistoryCounters counters_;
    std::optional<Error> batch_error_;  // the first failure in the open batch
    bool pruning_for_size_ = false;     // over HISTORY_MAX_MB, until 90 % of it
};

}  // namespace smtpfence::nfq
