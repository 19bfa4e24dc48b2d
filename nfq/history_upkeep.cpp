// The history's upkeep: retention (HISTORY_DAYS, HISTORY_MAX_MB) in short steps, and
// the one-time import of the JSON-lines log that earlier versions kept.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>
#include <vector>

#include "common/fd.h"
#include "common/files.h"
#include "common/local_time.h"
#include "common/log.h"
#include "nfq/history_store.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;

// Pages given back to the file system per step (4 KiB each): a step stays short.
constexpr int kVacuumPages = 64;
// A line longer than this in an old log is not one we wrote: skipped.
constexpr std::size_t kMaxLineBytes = std::size_t{1} << 20U;

// Calls on_line for every complete line of fd, reading in bounded pieces so that a
// large file never sits in memory whole.
template <class OnLine>
Result<void> for_each_line(int fd, const std::string& path, OnLine on_line) {
    std::string pending;
    std::vector<char> buf(std::size_t{64} << 10U);
    bool skipping = false;  // inside an over-long line
    while (true) {
        const ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(errno, "read " + path);
        }
        if (n == 0)
            return {};  // a last line without its newline was torn: not read
        std::size_t start = 0;
        const std::string_view chunk(buf.data(), static_cast<std::size_t>(n));
        while (start < chunk.size()) {
            const std::size_t eol = chunk.find('\n', start);
            if (eol == std::string_view::npos) {
                if (!skipping)
                    pending.append(chunk.substr(start));
                if (pending.size() > kMaxLineBytes) {
                    pending.clear();
                    skipping = true;
                }
                break;
            }
            if (!skipping) {
                pending.append(chunk.substr(start, eol - start));
                on_line(pending);
            }
            pending.clear();
            skipping = false;
            start = eol + 1;
        }
    }
}

// A field of an old record, or nullopt when it is missing or of another type: a line
// edited by hand is skipped, not allowed to stop the import (and the worker with it).
std::optional<std::string> text_of(const json& j, const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_string())
        return std::nullopt;
    return it->get<std::string>();
}

template <class T>
std::optional<T> number_of(const json& j, const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer())
        return std::nullopt;
    if constexpr (std::is_unsigned_v<T>) {
        if (!it->is_number_unsigned() || it->get<std::uint64_t>() > std::numeric_limits<T>::max())
            return std::nullopt;
    } else if (it->get<std::int64_t>() < std::numeric_limits<T>::min() ||
               it->get<std::int64_t>() > std::numeric_limits<T>::max()) {
        return std::nullopt;
    }
    return it->get<T>();
}

std::optional<Attempt> attempt_of(const json& j) {
    const auto time = number_of<std::time_t>(j, "epoch");
    const auto uid = number_of<std::uint32_t>(j, "uid");
    if (!time || !uid)
        return std::nullopt;
    Attempt a;
    a.time = *time;
    a.uid = *uid;
    a.gid = number_of<std::uint32_t>(j, "gid").value_or(0);
    a.user = text_of(j, "user").value_or("");
    a.account = text_of(j, "account").value_or("unknown");
    const auto identified = j.find("identified");
    a.identified = identified != j.end() && identified->is_boolean() && identified->get<bool>();
    a.pid = number_of<pid_t>(j, "pid").value_or(0);
    a.exe = text_of(j, "exe").value_or("");
    a.cwd = text_of(j, "cwd").value_or("");
    a.cmdline = text_of(j, "cmdline").value_or("");
    a.family = text_of(j, "family").value_or("ipv4");
    a.src = text_of(j, "src").value_or("");
    a.dst = text_of(j, "dst").value_or("");
    a.sport = number_of<std::uint16_t>(j, "sport").value_or(0);
    a.dport = number_of<std::uint16_t>(j, "dport").value_or(0);
    return a;
}

std::optional<CountedOnly> counted_of(const json& j) {
    const auto time = number_of<std::time_t>(j, "epoch");
    const auto uid = number_of<std::uint32_t>(j, "uid");
    const auto count = number_of<std::uint64_t>(j, "count");
    if (!time || !uid || !count)
        return std::nullopt;
    CountedOnly c;
    c.time = *time;
    c.uid = *uid;
    c.user = text_of(j, "user").value_or("");
    c.account = text_of(j, "account").value_or("unknown");
    c.count = *count;
    return c;
}

Checkpoint checkpoint_of(const json& j) {
    Checkpoint c;
    c.time = number_of<std::time_t>(j, "epoch").value_or(0);
    c.set_handle = number_of<std::uint64_t>(j, "set_handle").value_or(0);
    const auto kernel = j.find("kernel");
    if (kernel != j.end() && kernel->is_object()) {
        for (const auto& [key, count] : kernel->items()) {
            std::uint32_t uid = 0;
            const char* const end = key.data() + key.size();
            const auto [stop, ec] = std::from_chars(key.data(), end, uid);
            if (ec == std::errc{} && stop == end && count.is_number_unsigned())
                c.kernel[uid] = count.get<std::uint64_t>();
        }
    }
    return c;
}

// An old log file, opened without following a symlink; nullopt when absent.
struct OldLog {
    std::string name;
    UniqueFd fd;
    std::string identity;  // "name dev:inode:size", what meta remembers as imported
};

Result<std::optional<OldLog>> open_old_log(int dir_fd, const std::string& dir,
                                           const std::string& name) {
    UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (!fd.valid()) {
        if (errno == ENOENT)
            return std::optional<OldLog>{};
        const int err = errno;
        return fail(err, dir + "/" + name, err == ELOOP ? kSymlinkRefused : "");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return fail(errno, dir + "/" + name);
    // The name is the stream's next: refused now rather than appended to later.
    if (auto own = check_own_file(st, dir + "/" + name, "read or write it"); !own)
        return std::unexpected(own.error());
    return OldLog{name, std::move(fd),
                  name + " " + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
                      std::to_string(st.st_size)};
}

}  // namespace

// One line of an old log into the open import.
HistoryStore::OldLine HistoryStore::import_line(const std::string& line) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return OldLine::Foreign;
    const std::string type = text_of(j, "type").value_or("");
    if (type == "attempt") {
        const auto a = attempt_of(j);
        if (a)
            explained(*a);
        return a ? OldLine::Record : OldLine::Foreign;
    }
    if (type == "counted") {
        const auto c = counted_of(j);
        if (c)
            counted_only(*c);
        return c ? OldLine::Record : OldLine::Foreign;
    }
    if (type == "checkpoint") {
        checkpoint(checkpoint_of(j));
        return OldLine::Checkpoint;
    }
    return OldLine::Foreign;
}

Result<std::uint64_t> HistoryStore::import_jsonl() {
    if (auto r = commit(); !r)
        return std::unexpected(r.error());
    auto opened = open_state_dir(state_dir_);
    if (!opened)
        return std::unexpected(opened.error());
    const UniqueFd dir = std::move(*opened);
    // The import happens once in the life of a history: the first time the worker opens
    // it, with or without files to import. Later, these names are our own stream's.
    auto seen = db_.prepare("SELECT value FROM meta WHERE key = 'imported_jsonl'");
    if (!seen)
        return std::unexpected(seen.error());
    auto row = seen->step();
    if (!row)
        return std::unexpected(row.error());
    const std::optional<std::string> imported_before =
        *row ? std::optional<std::string>(seen->text(0)) : std::nullopt;
    seen->reset();
    if (imported_before && imported_before->empty())
        return std::uint64_t{0};  // there was nothing to import

    std::vector<OldLog> logs;
    std::string identity;
    for (const char* name : {AttemptLog::kRotatedFileName, AttemptLog::kFileName}) {
        auto log = open_old_log(dir.get(), state_dir_, name);
        if (!log) {
            if (imported_before)
                return std::uint64_t{0};  // not the files imported: the stream's business
            return std::unexpected(log.error());
        }
        if (*log) {
            identity += (*log)->identity + "\n";
            logs.push_back(std::move(**log));
        }
    }
    // Imported, but the renames after the commit did not happen: rename only.
    const bool done = imported_before && *imported_before == identity;
    if (imported_before && !done)
        return std::uint64_t{0};

    std::uint64_t imported = 0;
    if (!done) {
        std::uint64_t skipped = 0;
        for (const OldLog& log : logs) {
            auto r = for_each_line(log.fd.get(), state_dir_ + "/" + log.name,
                                   [&](const std::string& line) {
                                       const OldLine kind = import_line(line);
                                       imported += kind == OldLine::Record ? 1 : 0;
                                       skipped += kind == OldLine::Foreign ? 1 : 0;
                                   });
            if (!r) {
                tx_.reset();  // rolls back: nothing half imported
                batch_error_.reset();
                pending_ = 0;
                return std::unexpected(r.error());
            }
        }
        if (begin()) {
            auto mark = db_.prepare(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('imported_jsonl', ?1)");
            if (!mark)
                write_failed(mark.error());
            else if (auto r = mark->bind(1, identity).run(); !r)
                write_failed(r.error());
        }
        // All or nothing: a failed record rolls the whole import back, files in place.
        if (auto r = commit(); !r)
            return std::unexpected(r.error().wrap("import " + state_dir_ + "/attempts.jsonl"));
        if (skipped > 0) {
            log::warning("attempt history: " + std::to_string(skipped) + " line(s) of " +
                         state_dir_ + "/attempts.jsonl* skipped: not records of smtpfence");
        }
    }
    for (const OldLog& log : logs) {
        const std::string to = log.name + ".imported";
        if (::renameat(dir.get(), log.name.c_str(), dir.get(), to.c_str()) != 0) {
            log::warning("rename " + state_dir_ + "/" + log.name + " to " + to + ": " +
                         errno_text(errno) + " (it is not imported twice)");
        }
    }
    return imported;
}

Result<bool> HistoryStore::prune_step(std::time_t now) {
    if (auto r = commit(); !r)
        return std::unexpected(r.error());
    const std::int64_t cutoff = static_cast<std::int64_t>(now) - std::int64_t{limits_.days} * 86400;
    auto used = bytes_used();
    if (!used)
        return std::unexpected(used.error());
    // Over the size limit: the oldest records go whatever their age, down to 90 % of it
    // so that it is not pruned again at the next record.
    const std::uint64_t low_water = limits_.max_bytes / 10 * 9;
    pruning_for_size_ = *used > limits_.max_bytes || (pruning_for_size_ && *used > low_water);
    const std::int64_t older_than =
        pruning_for_size_ ? std::numeric_limits<std::int64_t>::max() : cutoff;

    auto tx = sql::Transaction::begin(db_);
    if (!tx)
        return std::unexpected(tx.error());
    // Only records the last checkpoint covers: the ones after it are what recovery
    // counts (and with AUTOINCREMENT no id is ever given out twice).
    auto batch = db_.prepare(
        "SELECT id, proc FROM records WHERE epoch < ?1 AND id <= "
        "(SELECT coalesce(max(after_record), 0) FROM checkpoint) ORDER BY epoch LIMIT ?2");
    auto drop = db_.prepare("DELETE FROM records WHERE id = ?1");
    auto drop_proc = db_.prepare(
        "DELETE FROM procs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM records WHERE proc = ?1)");
    auto drop_days = db_.prepare("DELETE FROM daily WHERE day < ?1");
    for (const auto* st : {&batch, &drop, &drop_proc, &drop_days}) {
        if (!*st)
            return std::unexpected(st->error());
    }
    batch->bind(1, older_than).bind(2, kPruneBatch);
    std::vector<std::int64_t> ids;
    std::set<std::int64_t> procs;
    if (auto r = batch->each([&](const sql::Statement& row) {
            ids.push_back(row.int64(0));
            if (!row.is_null(1))
                procs.insert(row.int64(1));
        });
        !r)
        return std::unexpected(r.error());
    for (const std::int64_t id : ids) {
        if (auto r = drop->bind(1, id).run(); !r)
            return std::unexpected(r.error());
    }
    for (const std::int64_t proc : procs) {
        if (auto r = drop_proc->bind(1, proc).run(); !r)
            return std::unexpected(r.error());
    }
    if (auto r = drop_days->bind(1, local_day(static_cast<std::time_t>(cutoff))).run(); !r)
        return std::unexpected(r.error());
    if (auto r = tx->commit(); !r)
        return std::unexpected(r.error());
    if (!procs.empty())
        procs_.clear();  // an id in the cache may be gone
    counters_.pruned += ids.size();
    if (auto r = give_back_space(); !r)
        return std::unexpected(r.error());
    return ids.size() == static_cast<std::size_t>(kPruneBatch);
}

bool HistoryStore::over_size() {
    const auto used = bytes_used();
    return used && *used > limits_.max_bytes;
}

// Freed pages are reused by new records; they are given back to the file system only
// when many are free (after pruning for size, or a smaller HISTORY_MAX_MB), a few at a
// time: moving pages is the costly part of a step.
Result<void> HistoryStore::give_back_space() {
    auto pages = db_.query_int("PRAGMA page_count");
    auto free_pages = db_.query_int("PRAGMA freelist_count");
    if (!pages || !free_pages)
        return fail(EIO, path(), "cannot read its page counts");
    if (free_pages->value_or(0) * 8 <= pages->value_or(0))
        return {};
    return db_.exec("PRAGMA incremental_vacuum(" + std::to_string(kVacuumPages) + ")");
}

}  // namespace smtpfence::nfq
