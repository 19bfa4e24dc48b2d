#include "tests/support/history_rows.h"

#include <unistd.h>

#include <string>

#include "common/local_time.h"
#include "nfq/history_schema.h"

namespace smtpfence::testing {

namespace history = nfq::history;

Result<HistoryFile> HistoryFile::create(const std::string& state_dir) {
    const std::string path = state_dir + "/" + history::kFileName;
    for (const char* suffix : {"", "-wal", "-shm"})
        ::unlink((path + suffix).c_str());
    auto db = sql::Database::open(path, sql::Database::Mode::Create);
    if (!db)
        return std::unexpected(db.error());
    for (const std::string& sql :
         // synchronous OFF: a test's file need not survive a power cut, and is faster.
         {std::string(history::kCreatePragmas) + "PRAGMA synchronous = OFF;",
          std::string(history::kCreateTables),
          "PRAGMA user_version = " + std::to_string(history::kSchemaVersion)}) {
        if (auto r = db->exec(sql); !r)
            return std::unexpected(r.error());
    }
    return HistoryFile(std::move(*db));
}

Result<std::optional<std::int64_t>> HistoryFile::proc_of(const HistoryRow& row) {
    if (row.exe.empty())
        return std::optional<std::int64_t>{};
    auto insert = db_.prepare(
        "INSERT INTO procs (exe, cwd, cmdline) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (exe, cwd, cmdline) DO UPDATE SET exe = exe RETURNING id");
    if (!insert)
        return std::unexpected(insert.error());
    insert->bind(1, row.exe).bind(2, row.cwd).bind(3, row.cmdline);
    auto got = insert->step();
    if (!got)
        return std::unexpected(got.error());
    const std::int64_t id = insert->int64(0);
    insert->reset();
    return id;
}

Result<void> HistoryFile::add(const HistoryRow& row, bool daily) {
    const bool explained = row.count == 0;
    auto proc = explained ? proc_of(row) : Result<std::optional<std::int64_t>>{};
    if (!proc)
        return std::unexpected(proc.error());
    auto insert = db_.prepare(
        "INSERT INTO records (epoch, uid, gid, user, account, explained, count, identified, pid, "
        "proc, family, src, sport, dst, dport) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)");
    if (!insert)
        return std::unexpected(insert.error());
    insert->bind(1, row.epoch)
        .bind(2, std::int64_t{row.uid})
        .bind(4, row.user)
        .bind(5, row.account);
    insert->bind(6, std::int64_t{explained ? 1 : 0})
        .bind(7, static_cast<std::int64_t>(explained ? 1 : row.count))
        .bind(8, std::int64_t{proc->has_value() ? 1 : 0})
        .bind(10, *proc);
    if (explained) {
        insert->bind(3, std::int64_t{row.gid}).bind(11, std::int64_t{row.family});
        insert->bind(12, row.src).bind(13, std::int64_t{row.sport});
        insert->bind(14, row.dst).bind(15, std::int64_t{row.dport});
        if (proc->has_value())
            insert->bind(9, row.pid);
    }
    if (auto r = insert->run(); !r)
        return r;
    return daily ? add_daily(row) : Result<void>{};
}

Result<void> HistoryFile::add_copies(const HistoryRow& row, std::uint32_t copies,
                                     std::int64_t step) {
    auto proc = proc_of(row);
    if (!proc)
        return std::unexpected(proc.error());
    auto insert = db_.prepare(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) "
        "INSERT INTO records (epoch, uid, gid, user, account, explained, count, identified, pid, "
        "proc, family, src, sport, dst, dport) "
        "SELECT ?2 + i * ?3, ?4, ?5, ?6, ?7, 1, 1, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 FROM n");
    if (!insert)
        return std::unexpected(insert.error());
    insert->bind(1, std::int64_t{copies}).bind(2, row.epoch).bind(3, step);
    insert->bind(4, std::int64_t{row.uid}).bind(5, std::int64_t{row.gid});
    insert->bind(6, row.user).bind(7, row.account);
    insert->bind(8, std::int64_t{proc->has_value() ? 1 : 0}).bind(9, row.pid).bind(10, *proc);
    insert->bind(11, std::int64_t{row.family}).bind(12, row.src);
    insert->bind(13, std::int64_t{row.sport}).bind(14, row.dst).bind(15, std::int64_t{row.dport});
    return insert->run();
}

Result<void> HistoryFile::add_daily(const HistoryRow& row) {
    const bool explained = row.count == 0;
    const bool identified = explained && !row.exe.empty();
    auto upsert = db_.prepare(
        "INSERT INTO daily (day, account, uid, user, explained, counted, last_epoch, "
        "last_identified_epoch, last_exe, last_cwd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
        "?10) "
        "ON CONFLICT (day, account, uid) DO UPDATE SET user = excluded.user, "
        "explained = explained + excluded.explained, counted = counted + excluded.counted, "
        "last_epoch = MAX(last_epoch, excluded.last_epoch), "
        "last_identified_epoch = COALESCE(excluded.last_identified_epoch, last_identified_epoch), "
        "last_exe = COALESCE(excluded.last_exe, last_exe), "
        "last_cwd = COALESCE(excluded.last_cwd, last_cwd)");
    if (!upsert)
        return std::unexpected(upsert.error());
    upsert->bind(1, local_day(row.epoch)).bind(2, row.account).bind(3, std::int64_t{row.uid});
    upsert->bind(4, row.user)
        .bind(5, std::int64_t{explained ? 1 : 0})
        .bind(6, static_cast<std::int64_t>(row.count))
        .bind(7, row.epoch);
    if (identified)
        upsert->bind(8, row.epoch).bind(9, row.exe).bind(10, row.cwd);
    return upsert->run();
}

}  // namespace smtpfence::testing
