// The attempt history's tables, shared by its one writer (the worker,
// nfq/history_store.h) and its readers (the daemon's query children,
// nfq/history_query.h). What each table is for and why: docs/history.md.
#pragma once

namespace smtpfence::nfq::history {

// STATE_DIR/history.db, with SQLite's -wal and -shm files beside it.
inline constexpr const char* kFileName = "history.db";

// PRAGMA user_version of the tables below; a reader refuses a file of another version
// with a message, a writer upgrades older ones (there are none yet).
inline constexpr int kSchemaVersion = 1;

// Set once, when the file is created (auto_vacuum cannot change after the first table).
inline constexpr const char* kCreatePragmas = "PRAGMA auto_vacuum = INCREMENTAL;";

// On every connection that writes. WAL: readers never block the writer nor it them;
// synchronous NORMAL: a commit survives the death of the process (kill -9), not a
// power cut, which the kernel's counters then make good (counted, not explained).
inline constexpr const char* kWriterPragmas =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;"
    "PRAGMA cache_size = -4096; PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;";

// On every connection that reads: a small cache and no mmap, so that a query's memory
// does not grow with the file.
inline constexpr const char* kReaderPragmas =
    "PRAGMA cache_size = -2048; PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;"
    "PRAGMA query_only = ON;";

// records.id is AUTOINCREMENT: an id is never given out twice, not even after retention
// has removed the newest rows, since recovery counts the records after the checkpoint's.
inline constexpr const char* kCreateTables = R"sql(
CREATE TABLE IF NOT EXISTS procs (
  id      INTEGER PRIMARY KEY,
  exe     TEXT NOT NULL,
  cwd     TEXT NOT NULL,
  cmdline TEXT NOT NULL,
  UNIQUE (exe, cwd, cmdline)
);
CREATE TABLE IF NOT EXISTS records (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  epoch      INTEGER NOT NULL,
  uid        INTEGER NOT NULL,
  gid        INTEGER,
  user       TEXT NOT NULL,
  account    TEXT NOT NULL,
  explained  INTEGER NOT NULL,
  count      INTEGER NOT NULL,
  identified INTEGER NOT NULL,
  pid        INTEGER,
  proc       INTEGER,
  family     INTEGER,
  src        TEXT,
  sport      INTEGER,
  dst        TEXT,
  dport      INTEGER
);
CREATE INDEX IF NOT EXISTS records_epoch ON records (epoch);
CREATE INDEX IF NOT EXISTS records_uid ON records (uid, epoch);
CREATE INDEX IF NOT EXISTS records_account ON records (account, epoch);
CREATE INDEX IF NOT EXISTS records_dst ON records (dst, epoch) WHERE dst IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_proc ON records (proc, epoch) WHERE proc IS NOT NULL;
CREATE TABLE IF NOT EXISTS daily (
  day        INTEGER NOT NULL,
  account    TEXT NOT NULL,
  uid        INTEGER NOT NULL,
  user       TEXT NOT NULL,
  explained  INTEGER NOT NULL,
  counted    INTEGER NOT NULL,
  last_epoch INTEGER NOT NULL,
  last_identified_epoch INTEGER,
  last_exe   TEXT,
  last_cwd   TEXT,
  PRIMARY KEY (day, account, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint (
  id           INTEGER PRIMARY KEY CHECK (id = 1),
  epoch        INTEGER NOT NULL,
  set_handle   INTEGER NOT NULL,
  after_record INTEGER NOT NULL,
  kernel       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
)sql";

// Totals that only grow while the file lives (retention leaves them alone), added to in
// the transaction of each record, for smtpfence_attempts_explained_total
// (docs/metrics.md). Created in any file that lacks it (no new schema version: readers
// that do not know it ignore it), seeded from what daily still holds.
inline constexpr const char* kCreateTotals = R"sql(
CREATE TABLE IF NOT EXISTS totals (
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO totals (key, value)
  SELECT 'explained', coalesce(sum(explained), 0) FROM daily;
INSERT OR IGNORE INTO totals (key, value)
  SELECT 'counted', coalesce(sum(counted), 0) FROM daily;
)sql";

inline constexpr const char* kReadExplainedTotal =
    "SELECT value FROM totals WHERE key = 'explained'";

}  // namespace smtpfence::nfq::history
