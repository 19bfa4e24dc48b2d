// SQLite (Debian's libsqlite3), the attempt history's store: one owning type per
// handle (the connection, a prepared statement) and errors as values naming the file.
// Why SQLite and how the history uses it: docs/history.md.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"
#include "common/handles.h"

namespace smtpfence::sql {

using DbPtr = std::unique_ptr<sqlite3, CDeleter<sqlite3_close_v2>>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, CDeleter<sqlite3_finalize>>;

// A prepared statement. Parameters are bound by their 1-based index; step() runs it
// one row at a time; reset() makes it ready to run again (bindings are kept until
// rebound).
class Statement {
  public:
    Statement() = default;

    Statement& bind(int index, std::int64_t value);
    Statement& bind(int index, std::string_view text);
    Statement& bind_null(int index);
    template <class T>
    Statement& bind(int index, const std::optional<T>& value) {
        return value ? bind(index, *value) : bind_null(index);
    }

    // true: a row is there to read; false: done.
    [[nodiscard]] Result<bool> step();
    // Calls on_row(*this) for every row, then resets the statement.
    template <class OnRow>
    [[nodiscard]] Result<void> each(OnRow on_row) {
        while (true) {
            auto row = step();
            if (!row)
                return std::unexpected(row.error());
            if (!*row)
                break;
            on_row(*this);
        }
        reset();
        return {};
    }
    // Runs a statement that returns no rows (or whose rows are not wanted) and resets it.
    [[nodiscard]] Result<void> run();
    void reset();

    [[nodiscard]] std::int64_t int64(int column) const;
    [[nodiscard]] std::string text(int column) const;
    // The same without a copy: valid until the next step() or reset().
    [[nodiscard]] std::string_view text_view(int column) const;
    [[nodiscard]] bool is_null(int column) const;

    [[nodiscard]] bool valid() const { return stmt_ != nullptr; }

  private:
    friend class Database;
    Statement(StmtPtr stmt, sqlite3* db, const std::string* path)
        : stmt_(std::move(stmt)), db_(db), path_(path) {}
    [[nodiscard]] Error error(int rc) const;

    StmtPtr stmt_;
    sqlite3* db_ = nullptr;
    const std::string* path_ = nullptr;  // the owning Database's, for messages
};

class Database {
  public:
    enum class Mode {
        Create,    // read and write, created when missing
        ReadOnly,  // read only: never creates or changes the file
    };

    // Opens path (never through a symlink: SQLITE_OPEN_NOFOLLOW), with extended
    // result codes and a busy timeout of busy_ms.
    [[nodiscard]] static Result<Database> open(const std::string& path, Mode mode,
                                               int busy_ms = 1000);

    Database(Database&&) noexcept = default;
    Database& operator=(Database&&) noexcept = default;
    Database(const Database&) = delete;
    Database& operator=(const Database&) = delete;
    ~Database() = default;

    // One or more statements without parameters ("PRAGMA ...; CREATE ...").
    [[nodiscard]] Result<void> exec(const std::string& sql);
    [[nodiscard]] Result<Statement> prepare(std::string_view sql);
    // The first column of the first row of sql, nullopt when there is no row.
    [[nodiscard]] Result<std::optional<std::int64_t>> query_int(const std::string& sql);

    [[nodiscard]] std::int64_t last_insert_rowid() const;
    [[nodiscard]] sqlite3* get() const { return db_.get(); }
    [[nodiscard]] const std::string& path() const { return *path_; }

    // "PATH: what: SQLite's message" for the last error on this connection.
    [[nodiscard]] Error error(int rc, const std::string& what) const;

  private:
    Database(DbPtr db, std::string path)
        : db_(std::move(db)), path_(std::make_unique<std::string>(std::move(path))) {}

    DbPtr db_;
    // On the heap: statements point at it, and a Database may move.
    std::unique_ptr<std::string> path_;
};

// BEGIN IMMEDIATE ... COMMIT, rolled back when it goes out of scope uncommitted.
class Transaction {
  public:
    [[nodiscard]] static Result<Transaction> begin(Database& db);
    Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
    Transaction& operator=(Transaction&&) = delete;
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    ~Transaction();

    [[nodiscard]] Result<void> commit();

  private:
    explicit Transaction(Database& db) : db_(&db) {}
    Database* db_;
};

}  // namespace smtpfence::sql
