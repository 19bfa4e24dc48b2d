#include "common/sqlite.h"

#include <cerrno>
#include <utility>

namespace smtpfence::sql {
namespace {

// SQLite's result codes are not errno values: the message carries them. A few map to
// the errno a caller (and a test) would look for.
int errno_of(int rc) {
    switch (rc & 0xff) {
        case SQLITE_CANTOPEN:
            return ENOENT;
        case SQLITE_PERM:
        case SQLITE_AUTH:
        case SQLITE_READONLY:
            return EACCES;
        case SQLITE_FULL:
            return ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
            return EBUSY;
        case SQLITE_NOMEM:
            return ENOMEM;
        case SQLITE_IOERR:
            return EIO;
        default:
            return 0;
    }
}

}  // namespace

Error Database::error(int rc, const std::string& what) const {
    std::string detail = db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(rc);
    return Error{errno_of(rc), *path_ + ": " + what, std::move(detail)};
}

Result<Database> Database::open(const std::string& path, Mode mode, int busy_ms) {
    const int flags =
        (mode == Mode::Create ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY) |
        SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
    Database db(DbPtr(raw), path);
    if (rc != SQLITE_OK)
        return std::unexpected(db.error(rc, "open"));
    sqlite3_busy_timeout(raw, busy_ms);
    return db;
}

Result<void> Database::exec(const std::string& sql) {
    const int rc = sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK)
        return std::unexpected(error(rc, sql.substr(0, sql.find_first_of("(;\n"))));
    return {};
}

Result<Statement> Database::prepare(std::string_view sql) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    if (rc != SQLITE_OK)
        return std::unexpected(error(rc, "prepare " + std::string(sql.substr(0, 60))));
    return Statement(StmtPtr(raw), db_.get(), path_.get());
}

Result<std::optional<std::int64_t>> Database::query_int(const std::string& sql) {
    auto stmt = prepare(sql);
    if (!stmt)
        return std::unexpected(stmt.error());
    auto row = stmt->step();
    if (!row)
        return std::unexpected(row.error());
    if (!*row || stmt->is_null(0))
        return std::optional<std::int64_t>{};
    return stmt->int64(0);
}

std::int64_t Database::last_insert_rowid() const {
    return sqlite3_last_insert_rowid(db_.get());
}

Statement& Statement::bind(int index, std::int64_t value) {
    sqlite3_bind_int64(stmt_.get(), index, value);
    return *this;
}

Statement& Statement::bind(int index, std::string_view text) {
    sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_TRANSIENT,
                        SQLITE_UTF8);
    return *this;
}

Statement& Statement::bind_null(int index) {
    sqlite3_bind_null(stmt_.get(), index);
    return *this;
}

Error Statement::error(int rc) const {
    const char* sql = sqlite3_sql(stmt_.get());
    return Error{errno_of(rc), *path_ + ": " + std::string(sql ? sql : "").substr(0, 60),
                 sqlite3_errmsg(db_)};
}

Result<bool> Statement::step() {
    const int rc = sqlite3_step(stmt_.get());
    if (rc == SQLITE_ROW)
        return true;
    if (rc == SQLITE_DONE)
        return false;
    Error e = error(rc);
    sqlite3_reset(stmt_.get());
    return std::unexpected(std::move(e));
}

Result<void> Statement::run() {
    return each([](const Statement&) {});
}

void Statement::reset() {
    sqlite3_reset(stmt_.get());
}

std::int64_t Statement::int64(int column) const {
    return sqlite3_column_int64(stmt_.get(), column);
}

std::string Statement::text(int column) const {
    return std::string(text_view(column));
}

std::string_view Statement::text_view(int column) const {
    const auto* p = sqlite3_column_text(stmt_.get(), column);
    if (p == nullptr)
        return {};
    return {reinterpret_cast<const char*>(p),
            static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), column))};
}

bool Statement::is_null(int column) const {
    return sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL;
}

Result<Transaction> Transaction::begin(Database& db) {
    if (auto r = db.exec("BEGIN IMMEDIATE"); !r)
        return std::unexpected(r.error());
    return Transaction(db);
}

Result<void> Transaction::commit() {
    Database* db = std::exchange(db_, nullptr);
    if (db == nullptr)
        return {};  // moved from
    if (auto r = db->exec("COMMIT"); !r) {
        (void)db->exec("ROLLBACK");
        return r;
    }
    return {};
}

Transaction::~Transaction() {
    if (db_ != nullptr)
        (void)db_->exec("ROLLBACK");
}

}  // namespace smtpfence::sql
