#include "nfq/attempt_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <nlohmann/json.hpp>
#include <system_error>

#include "common/files.h"
#include "common/log.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;

// One record a line, written with one write() on an O_APPEND descriptor: a crash leaves
// whole lines. Invalid UTF-8 (a command line is arbitrary bytes) becomes U+FFFD instead
// of an exception; control characters and quotes are escaped by the serializer, so a
// newline or quote in a folder name cannot end a record or forge a field.
std::string dump(const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

constexpr const char* kLogName = AttemptLog::kFileName;
constexpr const char* kRotatedName = AttemptLog::kRotatedFileName;

std::string log_path(const std::string& dir) {
    return dir + "/" + kLogName;
}

// The stream is ours alone (common/files.h, check_own_file). Likewise nothing is
// opened through a symlink, and rotation renames over whatever sits at attempts.jsonl.1.
Result<void> check_own_stream(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return fail(errno, path);
    return smtpfence::check_own_file(st, path, "write to it");
}

}  // namespace

// Empty when t has no calendar date (gmtime_r fails for a year beyond int): the
// records carry the exact time in "epoch" as well.
std::string iso_time(std::time_t t) {
    std::tm tm{};
    if (gmtime_r(&t, &tm) == nullptr)
        return {};
    // 32 bytes hold any int year: "-2147481748-12-31T23:59:59Z" is 27 and a NUL.
    char buf[32];
    if (std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return {};
    return buf;
}

std::string to_json_line(const Attempt& a) {
    json j = {{"type", "attempt"},
              {"time", iso_time(a.time)},
              {"epoch", a.time},
              {"uid", a.uid},
              {"gid", a.gid},
              {"user", a.user},
              {"account", a.account},
              {"family", a.family},
              {"src", a.src},
              {"sport", a.sport},
              {"dst", a.dst},
              {"dport", a.dport},
              {"identified", a.identified}};
    if (a.identified) {
        j["pid"] = a.pid;
        j["exe"] = a.exe;
        j["cwd"] = a.cwd;
        j["cmdline"] = a.cmdline;
    }
    return dump(j);
}

std::string to_json_line(const CountedOnly& c) {
    return dump({{"type", "counted"},
                 {"time", iso_time(c.time)},
                 {"epoch", c.time},
                 {"uid", c.uid},
                 {"user", c.user},
                 {"account", c.account},
                 {"count", c.count}});
}

std::string to_json_line(const Checkpoint& c) {
    json kernel = json::object();
    for (const auto& [uid, count] : c.kernel)
        kernel[std::to_string(uid)] = count;
    return dump({{"type", "checkpoint"},
                 {"time", iso_time(c.time)},
                 {"epoch", c.time},
                 {"set_handle", c.set_handle},
                 {"kernel", kernel}});
}

Result<AttemptLog> AttemptLog::open(const std::string& state_dir, std::uint64_t max_bytes) {
    auto opened = open_state_dir(state_dir);
    if (!opened)
        return std::unexpected(opened.error());
    UniqueFd dir = std::move(*opened);
    const std::string path = log_path(state_dir);
    // O_NOFOLLOW: a symlink planted in the state directory is refused, not followed.
    UniqueFd fd(::openat(dir.get(), kLogName,
                         O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                         0640));
    if (!fd.valid()) {
        const int err = errno;
        return fail(err, "open attempt log " + path, err == ELOOP ? kSymlinkRefused : "");
    }
    if (auto ok = check_own_stream(fd.get(), path); !ok)
        return std::unexpected(std::move(ok.error()));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return fail(errno, path);
    return AttemptLog(state_dir, path, std::move(dir), std::move(fd), max_bytes,
                      static_cast<std::uint64_t>(st.st_size));
}

void AttemptLog::write_line(const std::string& line) {
    // Before the write: a record never starts a file past the limit.
    if (size_ >= rotate_at_)
        rotate();
    const ssize_t n = ::write(fd_.get(), line.data(), line.size());
    const int err = errno;
    if (n != static_cast<ssize_t>(line.size())) {
        ++write_errors_;
        // One warning when writes start failing, not one per record (a flood would
        // fill the journal); another when they work again.
        if (!write_failing_) {
            write_failing_ = true;
            log::warning("write " + path_ + ": " +
                         (n < 0 ? errno_text(err) : std::string("short write (disk full?)")) +
                         "; records are lost until it works again (the kernel still counts)");
        }
        return;
    }
    size_ += line.size();
    if (write_failing_) {
        write_failing_ = false;
        log::notice("attempt log " + path_ + " written again; " + std::to_string(write_errors_) +
                    " record(s) lost so far");
    }
}

void AttemptLog::rotate() {
    // renameat replaces whatever sits at attempts.jsonl.1 (a symlink or a hard link
    // planted there included) without writing through it.
    if (::renameat(dir_fd_.get(), kLogName, dir_fd_.get(), kRotatedName) != 0) {
        const int err = errno;
        rotation_failed("rotate " + path_ + " to " + kRotatedName + ": " + errno_text(err));
        return;
    }
    UniqueFd fd(::openat(dir_fd_.get(), kLogName,
                         O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_EXCL, 0640));
    if (!fd.valid()) {
        const int err = errno;
        // Something was planted in the instant between: keep writing to the rotated
        // file, which is ours, and try again a little later (rotation_failed).
        rotation_failed("create " + path_ + " after rotating it: " + errno_text(err) +
                        "; writing on in " + kRotatedName);
        return;
    }
    rotation_failing_ = false;
    fd_ = std::move(fd);
    size_ = 0;
    rotate_at_ = max_bytes_;
}

// Said once until a rotation works again; retried after another sixteenth of the limit
// is written, not at every record.
void AttemptLog::rotation_failed(const std::string& what) {
    rotate_at_ = size_ + std::max<std::uint64_t>(max_bytes_ / 16, 1);
    if (!rotation_failing_) {
        rotation_failing_ = true;
        log::warning(what + " (the log grows past its size limit until rotation works)");
    }
}

void AttemptLog::explained(const Attempt& attempt) {
    write_line(to_json_line(attempt));
}

void AttemptLog::counted_only(const CountedOnly& record) {
    write_line(to_json_line(record));
}

}  // namespace smtpfence::nfq
