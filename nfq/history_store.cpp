#include "nfq/history_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <nlohmann/json.hpp>
#include <set>

#include "common/fd.h"
#include "common/files.h"
#include "common/local_time.h"
#include "common/log.h"
#include "nfq/history_schema.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxCachedProcs = 4096;

// history.db and SQLite's files beside it are ours alone, as the attempt log was: a
// symlink or hard link planted at one of these names would make the worker, as root,
// write through it (and give a reader another file's contents).
Result<void> check_own_files(int dir_fd, const std::string& dir) {
    const std::string base = history::kFileName;
    for (const std::string& name : {base, base + "-wal", base + "-shm"}) {
        struct stat st {};
        if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue;
            return fail(errno, dir + "/" + name);
        }
        if (S_ISLNK(st.st_mode))
            return fail(ELOOP, dir + "/" + name, kSymlinkRefused);
        if (auto own = check_own_file(st, dir + "/" + name, "write to it"); !own)
            return own;
        // Other customers' command lines and folders: for root only (the query
        // children run as root; SQLite gives its -wal and -shm the same mode).
        if ((st.st_mode & 077) != 0 && name == base) {
            UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            if (!fd.valid() || ::fchmod(fd.get(), 0600) != 0)
                return fail(errno, dir + "/" + name, "cannot make it private (mode 0600)");
        }
    }
    return {};
}

// The file is created here, mode 0600 and never through a symlink, before SQLite
// opens it (SQLite would create it with the umask's mode).
Result<void> create_private(int dir_fd, const std::string& dir) {
    UniqueFd fd(::openat(dir_fd, history::kFileName,
                         O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid() && errno != EEXIST)
        return fail(errno, dir + "/" + history::kFileName);
    return {};
}

// The schema: created in a new file, checked in an existing one.
Result<void> prepare_schema(sql::Database& db) {
    auto version = db.query_int("PRAGMA user_version");
    if (!version)
        return std::unexpected(version.error());
    const std::int64_t v = version->value_or(0);
    if (v > history::kSchemaVersion) {
        return fail(EPROTO, db.path(),
                    "written by a newer smtpfence (schema " + std::to_string(v) + ", this one " +
                        std::to_string(history::kSchemaVersion) +
                        " ): refusing to write to it; move it away or upgrade");
    }
    if (v == 0) {
        if (auto r = db.exec(history::kCreatePragmas); !r)
            return r;
    }
    if (auto r = db.exec(history::kWriterPragmas); !r)
        return r;
    auto tx = sql::Transaction::begin(db);
    if (!tx)
        return std::unexpected(tx.error());
    if (v == 0) {
        if (auto r = db.exec(history::kCreateTables); !r)
            return r;
        if (auto r = db.exec("PRAGMA user_version = " + std::to_string(history::kSchemaVersion));
            !r)
            return r;
    }
    if (auto r = db.exec(history::kCreateTotals); !r)
        return r;
    return tx->commit();
}

std::int64_t family_number(const std::string& family) {
    return family == "ipv6" ? 6 : 4;
}

}  // namespace

// The statements the writer runs for every record, prepared once.
struct HistoryStore::Statements {
    sql::Statement insert_record;
    sql::Statement intern_proc;
    sql::Statement add_daily;
    sql::Statement add_totals;
    sql::Statement set_checkpoint;
};

HistoryStore::HistoryStore(sql::Database db, std::string state_dir, HistoryLimits limits)
    : db_(std::move(db)),
      state_dir_(std::move(state_dir)),
      limits_(limits),
      stmt_(std::make_unique<Statements>()) {}

HistoryStore::HistoryStore(HistoryStore&&) noexcept = default;
// What was not committed is rolled back (tx_'s destructor): a batch is whole or not
// there, and the worker commits what it means to keep.
HistoryStore::~HistoryStore() = default;

Result<HistoryStore> HistoryStore::open(const std::string& state_dir, HistoryLimits limits) {
    auto dir = open_state_dir(state_dir);
    if (!dir)
        return std::unexpected(dir.error());
    if (auto r = check_own_files(dir->get(), state_dir); !r)
        return std::unexpected(r.error());
    if (auto r = create_private(dir->get(), state_dir); !r)
        return std::unexpected(r.error());
    auto db =
        sql::Database::open(state_dir + "/" + history::kFileName, sql::Database::Mode::Create);
    if (!db)
        return std::unexpected(db.error());
    if (auto r = prepare_schema(*db); !r)
        return std::unexpected(r.error());
    HistoryStore store(std::move(*db), state_dir, limits);
    Statements& s = *store.stmt_;
    struct Prep {
        sql::Statement* into;
        const char* text;
    };
    for (const auto& [into, text] : {
             Prep{&s.insert_record,
                  "INSERT INTO records (epoch, uid, gid, user, account, explained, count, "
                  "identified, pid, proc, family, src, sport, dst, dport) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"},
             Prep{&s.intern_proc,
                  "INSERT INTO procs (exe, cwd, cmdline) VALUES (?1, ?2, ?3) "
                  "ON CONFLICT (exe, cwd, cmdline) DO UPDATE SET exe = excluded.exe "
                  "RETURNING id"},
             Prep{&s.add_daily,
                  "INSERT INTO daily (day, account, uid, user, explained, counted, last_epoch, "
                  "last_identified_epoch, last_exe, last_cwd) "
                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
                  "ON CONFLICT (day, account, uid) DO UPDATE SET "
                  "user = excluded.user, "
                  "explained = daily.explained + excluded.explained, "
                  "counted = daily.counted + excluded.counted, "
                  "last_epoch = max(daily.last_epoch, excluded.last_epoch), "
                  "last_identified_epoch = iif(excluded.last_identified_epoch >= "
                  "  coalesce(daily.last_identified_epoch, excluded.last_identified_epoch), "
                  "  excluded.last_identified_epoch, daily.last_identified_epoch), "
                  "last_exe = iif(excluded.last_identified_epoch >= "
                  "  coalesce(daily.last_identified_epoch, excluded.last_identified_epoch), "
                  "  excluded.last_exe, daily.last_exe), "
                  "last_cwd = iif(excluded.last_identified_epoch >= "
                  "  coalesce(daily.last_identified_epoch, excluded.last_identified_epoch), "
                  "  excluded.last_cwd, daily.last_cwd)"},
             Prep{&s.add_totals,
                  "UPDATE totals SET value = value + iif(key = 'explained', ?1, ?2) "
                  "WHERE key IN ('explained', 'counted')"},
             Prep{&s.set_checkpoint,
                  "INSERT OR REPLACE INTO checkpoint (id, epoch, set_handle, after_record, "
                  "kernel) VALUES (1, ?1, ?2, (SELECT coalesce(max(id), 0) FROM records), ?3)"},
         }) {
        auto st = store.db_.prepare(text);
        if (!st)
            return std::unexpected(st.error());
        *into = std::move(*st);
    }
    return store;
}

// A batch is written whole or not at all: after the first failure nothing more goes
// into it (SQLite may have rolled the transaction back already, and a later statement
// would then commit alone), and commit() rolls it back and says so.
bool HistoryStore::begin() {
    if (batch_error_)
        return false;
    if (tx_)
        return true;
    auto tx = sql::Transaction::begin(db_);
    if (!tx) {
        write_failed(tx.error());
        return false;
    }
    tx_.emplace(std::move(*tx));
    return true;
}

void HistoryStore::write_failed(const Error& e) {
    if (!batch_error_)
        batch_error_ = e;
}

std::optional<std::int64_t> HistoryStore::proc_id(const Attempt& a) {
    auto key = std::make_tuple(a.exe, a.cwd, a.cmdline);
    if (const auto it = procs_.find(key); it != procs_.end())
        return it->second;
    sql::Statement& st = stmt_->intern_proc;
    st.bind(1, a.exe).bind(2, a.cwd).bind(3, a.cmdline);
    auto row = st.step();
    if (!row || !*row) {
        write_failed(row ? Error{EIO, path(), "no id for a process"} : row.error());
        st.reset();
        return std::nullopt;
    }
    const std::int64_t id = st.int64(0);
    st.reset();
    if (procs_.size() >= kMaxCachedProcs)
        procs_.clear();
    procs_.emplace(std::move(key), id);
    return id;
}

void HistoryStore::add_daily(std::time_t epoch, const std::string& account, std::uint32_t uid,
                             const std::string& user, std::uint64_t explained,
                             std::uint64_t counted, const Attempt* identified) {
    sql::Statement& st = stmt_->add_daily;
    st.bind(1, local_day(epoch))
        .bind(2, account)
        .bind(3, std::int64_t{uid})
        .bind(4, user)
        .bind(5, static_cast<std::int64_t>(explained))
        .bind(6, static_cast<std::int64_t>(counted))
        .bind(7, std::int64_t{epoch});
    if (identified != nullptr) {
        st.bind(8, std::int64_t{epoch}).bind(9, identified->exe).bind(10, identified->cwd);
    } else {
        st.bind_null(8).bind_null(9).bind_null(10);
    }
    if (auto r = st.run(); !r) {
        write_failed(r.error());
        return;
    }
    sql::Statement& totals = stmt_->add_totals;
    totals.bind(1, static_cast<std::int64_t>(explained))
        .bind(2, static_cast<std::int64_t>(counted));
    if (auto r = totals.run(); !r)
        write_failed(r.error());
}

void HistoryStore::explained(const Attempt& a) {
    if (!begin())
        return;
    std::optional<std::int64_t> proc;
    if (a.identified) {
        proc = proc_id(a);
        if (!proc)
            return;
    }
    sql::Statement& st = stmt_->insert_record;
    st.bind(1, std::int64_t{a.time})
        .bind(2, std::int64_t{a.uid})
        .bind(3, std::int64_t{a.gid})
        .bind(4, a.user)
        .bind(5, a.account)
        .bind(6, 1)
        .bind(7, 1)
        .bind(8, a.identified ? 1 : 0)
        .bind(9, a.identified ? std::optional<std::int64_t>(a.pid) : std::nullopt)
        .bind(10, proc)
        .bind(11, family_number(a.family))
        .bind(12, a.src)
        .bind(13, std::int64_t{a.sport})
        .bind(14, a.dst)
        .bind(15, std::int64_t{a.dport});
    ++pending_;
    if (auto r = st.run(); !r) {
        write_failed(r.error());
        return;
    }
    add_daily(a.time, a.account, a.uid, a.user, 1, 0, a.identified ? &a : nullptr);
}

void HistoryStore::counted_only(const CountedOnly& c) {
    if (!begin())
        return;
    sql::Statement& st = stmt_->insert_record;
    st.bind(1, std::int64_t{c.time})
        .bind(2, std::int64_t{c.uid})
        .bind_null(3)
        .bind(4, c.user)
        .bind(5, c.account)
        .bind(6, 0)
        .bind(7, static_cast<std::int64_t>(c.count))
        .bind(8, 0);
    for (const int i : {9, 10, 11, 12, 13, 14, 15})
        st.bind_null(i);
    ++pending_;
    if (auto r = st.run(); !r) {
        write_failed(r.error());
        return;
    }
    add_daily(c.time, c.account, c.uid, c.user, 0, c.count, nullptr);
}

void HistoryStore::checkpoint(const Checkpoint& cp) {
    if (!begin())
        return;
    json kernel = json::object();
    for (const auto& [uid, count] : cp.kernel)
        kernel[std::to_string(uid)] = count;
    sql::Statement& st = stmt_->set_checkpoint;
    st.bind(1, std::int64_t{cp.time})
        .bind(2, static_cast<std::int64_t>(cp.set_handle))
        .bind(3, kernel.dump());
    if (auto r = st.run(); !r)
        write_failed(r.error());
}

Result<void> HistoryStore::commit() {
    std::optional<Error> failure = std::exchange(batch_error_, std::nullopt);
    if (tx_ && !failure) {
        if (auto r = tx_->commit(); !r)
            failure = r.error();
    }
    tx_.reset();  // rolls back what did not commit
    const std::uint64_t records = std::exchange(pending_, 0);
    if (failure) {
        counters_.write_errors += records;
        // The rolled-back procs may still sit in the cache under ids that are gone.
        procs_.clear();
        return std::unexpected(failure->wrap("attempt history: a batch of " +
                                             std::to_string(records) +
                                             " record(s) and its checkpoint was not written"));
    }
    counters_.written += records;
    if (records > 0)
        ++counters_.commits;
    return {};
}

Result<LogRecovery> HistoryStore::recover() {
    if (auto r = commit(); !r)
        return std::unexpected(r.error());
    LogRecovery out;
    auto cp = db_.prepare("SELECT epoch, set_handle, after_record, kernel FROM checkpoint");
    if (!cp)
        return std::unexpected(cp.error());
    auto row = cp->step();
    if (!row)
        return std::unexpected(row.error());
    std::int64_t after = 0;
    if (*row) {
        Checkpoint c;
        c.time = cp->int64(0);
        c.set_handle = static_cast<std::uint64_t>(cp->int64(1));
        after = cp->int64(2);
        const json kernel = json::parse(cp->text(3), nullptr, false);
        if (kernel.is_object()) {
            for (const auto& [key, count] : kernel.items()) {
                // We write decimal uids and unsigned counts; anything else is skipped.
                std::uint32_t uid = 0;
                const char* const end = key.data() + key.size();
                const auto [stop, ec] = std::from_chars(key.data(), end, uid);
                if (ec != std::errc{} || stop != end || !count.is_number_unsigned())
                    continue;
                c.kernel[uid] = count.get<std::uint64_t>();
            }
        }
        out.checkpoint = std::move(c);
    }
    auto since = db_.prepare(
        "SELECT uid, count(*) FROM records WHERE id > ?1 AND explained = 1 GROUP BY uid");
    if (!since)
        return std::unexpected(since.error());
    since->bind(1, after);
    if (auto r = since->each([&](const sql::Statement& uid_count) {
            out.explained_since[static_cast<std::uint32_t>(uid_count.int64(0))] =
                static_cast<std::uint64_t>(uid_count.int64(1));
        });
        !r)
        return std::unexpected(r.error());
    return out;
}

Result<std::uint64_t> HistoryStore::bytes_used() {
    auto pages = db_.query_int("PRAGMA page_count");
    auto free_pages = db_.query_int("PRAGMA freelist_count");
    auto page_size = db_.query_int("PRAGMA page_size");
    if (!pages || !free_pages || !page_size)
        return fail(EIO, path(), "cannot read its page counts");
    return static_cast<std::uint64_t>((pages->value_or(0) - free_pages->value_or(0)) *
                                      page_size->value_or(0));
}

}  // namespace smtpfence::nfq
