#include "nfq/attempt_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "common/files.h"
#include "common/log.h"

namespace smtpfence::nfq {
namespace {

using nlohmann::json;

// Invalid UTF-8 (a command line is arbitrary bytes) becomes U+FFFD instead of an
// exception; control characters are escaped by the serializer.
std::string dump(const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string log_path(const std::string& dir) {
    return dir + "/attempts.jsonl";
}

// Parses one file's lines into recovery: the last checkpoint wins and resets the
// per-uid explained counts; explained attempts after it are added up.
void scan(const std::string& text, LogRecovery& out) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        const json j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            continue;  // a torn last line after a crash
        const std::string type = j.value("type", "");
        if (type == "checkpoint") {
            Checkpoint c;
            c.time = j.value("epoch", std::time_t{0});
            c.set_handle = j.value("set_handle", std::uint64_t{0});
            if (j.contains("kernel") && j["kernel"].is_object()) {
                for (const auto& [key, count] : j["kernel"].items()) {
                    // We write decimal uids and unsigned counts; anything else is not
                    // ours and is skipped (a uid beyond 32 bits too, not truncated).
                    std::uint32_t uid = 0;
                    const char* const end = key.data() + key.size();
                    const auto [stop, ec] = std::from_chars(key.data(), end, uid);
                    if (ec != std::errc{} || stop != end || !count.is_number_unsigned())
                        continue;
                    c.kernel[uid] = count.get<std::uint64_t>();
                }
            }
            out.checkpoint = std::move(c);
            out.explained_since.clear();
        } else if (type == "attempt" && j.contains("uid") && j["uid"].is_number_unsigned()) {
            ++out.explained_since[j["uid"].get<std::uint32_t>()];
        }
    }
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
    if (::mkdir(state_dir.c_str(), 0750) != 0 && errno != EEXIST) {
        return fail(errno, "create state directory " + state_dir);
    }
    const std::string path = log_path(state_dir);
    // O_NOFOLLOW: a symlink planted in the state directory is refused, not followed.
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640));
    if (!fd.valid())
        return fail(errno, "open attempt log " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return fail(errno, path);
    if (!S_ISREG(st.st_mode))
        return fail(EINVAL, path, "not a regular file");
    AttemptLog log(state_dir, path, std::move(fd), max_bytes,
                   static_cast<std::uint64_t>(st.st_size));
    log.last_checkpoint_ = recover(state_dir).checkpoint;
    return log;
}

LogRecovery AttemptLog::recover(const std::string& state_dir) {
    LogRecovery out;
    const std::string path = log_path(state_dir);
    auto current = read_text_file(path, 1ULL << 30U);
    // The rotated file matters only when the current one has no checkpoint yet.
    if (!current || current->find("\"type\":\"checkpoint\"") == std::string::npos) {
        if (auto previous = read_text_file(path + ".1", 1ULL << 30U))
            scan(*previous, out);
    }
    if (current)
        scan(*current, out);
    return out;
}

void AttemptLog::write_line(const std::string& line) {
    const ssize_t n = ::write(fd_.get(), line.data(), line.size());
    if (n != static_cast<ssize_t>(line.size())) {
        ++write_errors_;
        return;
    }
    size_ += line.size();
}

void AttemptLog::rotate() {
    const std::string old = path_ + ".1";
    if (::rename(path_.c_str(), old.c_str()) != 0) {
        ++write_errors_;
        return;
    }
    UniqueFd fd(::open(path_.c_str(),
                       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_EXCL, 0640));
    if (!fd.valid()) {
        ++write_errors_;
        return;
    }
    fd_ = std::move(fd);
    size_ = 0;
    // The new file starts from where the reconciler stands.
    if (last_checkpoint_)
        write_line(to_json_line(*last_checkpoint_));
}

void AttemptLog::explained(const Attempt& attempt) {
    write_line(to_json_line(attempt));
}

void AttemptLog::counted_only(const CountedOnly& record) {
    write_line(to_json_line(record));
}

void AttemptLog::checkpoint(const Checkpoint& checkpoint) {
    last_checkpoint_ = checkpoint;
    write_line(to_json_line(checkpoint));
    // Rotate only right after a checkpoint: then no attempt follows the old file's last
    // checkpoint, and recovery from the new file alone (which starts with it) is exact.
    if (size_ >= max_bytes_)
        rotate();
}

}  // namespace smtpfence::nfq
