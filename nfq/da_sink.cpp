#include "nfq/da_sink.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"

namespace smtpfence::nfq {
namespace {

constexpr mode_t kFileMode = 0660;         // DirectAdmin's files: mail:mail rw-rw----
constexpr mode_t kUsageDirMode = 0750;     // /etc/virtual/usage: mail:mail rwxr-x---
constexpr std::size_t kMaxLimitRead = 64;  // a limit file holds a number and a newline
// How much of mail_task.queue's end we read back to look for Exim's notice. DirectAdmin
// empties the queue every minute; a megabyte is thousands of lines.
constexpr std::size_t kMaxQueueScan = 1U << 20U;
constexpr std::size_t kMaxBlockedListRead = 4U << 20U;
// Exim's log_time is taken when check_limits starts, before its stat; a minute of slack
// covers a slow start and excludes an unconsumed notice of yesterday.
constexpr std::time_t kEximLineSlack = 60;
constexpr unsigned kErrorBurst = 10;  // error lines per minute, the rest counted
constexpr std::chrono::seconds kErrorWindow{60};
constexpr std::size_t kMaxAccountName = 32;

// Write flags for every file we append to: never through a symlink (ELOOP), never
// blocking on a FIFO planted in our place, never inherited by a child.
constexpr int kAppendFlags = O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
constexpr int kReadFlags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;

// An error for path with a hint for the errno values that mean "something was planted".
std::unexpected<Error> file_error(int code, const std::string& path) {
    std::string detail;
    if (code == ELOOP)
        detail = kSymlinkRefused;
    return fail(code, path, std::move(detail));
}

struct OpenedFile {
    UniqueFd fd;
    struct stat st {};
    std::optional<Error> warning;  // created, but chown/chmod failed: written anyway
};

// Opens name in dir for appending, creating it (mode 0660, owner) when missing. Refuses
// symlinks, anything but a regular file, and a file with more than one link (a hard link
// would make us write, as root, into whatever it points at). A file deleted between our
// open and fstat (the nightly reset) is opened again: it is a new day's file.
Result<OpenedFile> open_append(int dir, const std::string& name, const std::string& path,
                               const std::optional<FileOwner>& owner) {
    for (int round = 0; round < 3; ++round) {
        OpenedFile out;
        bool created = false;
        int raw = ::openat(dir, name.c_str(), kAppendFlags);
        int err = raw < 0 ? errno : 0;
        if (raw < 0 && err == ENOENT) {
            raw = ::openat(dir, name.c_str(), kAppendFlags | O_CREAT | O_EXCL, kFileMode);
            err = raw < 0 ? errno : 0;
            if (raw < 0 && err == EEXIST)
                continue;  // created by Exim just now (or a symlink planted): open it again
            created = raw >= 0;
        }
        if (raw < 0)
            return file_error(err, path);
        out.fd.reset(raw);
        if (::fstat(out.fd.get(), &out.st) != 0)
            return fail(errno, path);
        if (!S_ISREG(out.st.st_mode))
            return fail(0, path, "not a regular file: refusing to write to it");
        if (out.st.st_nlink == 0)
            continue;
        if (out.st.st_nlink > 1) {
            return fail(
                0, path,
                "has " + std::to_string(out.st.st_nlink) + " hard links: refusing to write to it");
        }
        if (created) {
            // The mode given to open() went through our umask.
            if (::fchmod(out.fd.get(), kFileMode) != 0)
                out.warning = Error{errno, "chmod 0660 " + path, {}};
            if (owner && ::fchown(out.fd.get(), owner->uid, owner->gid) != 0) {
                out.warning = Error{errno,
                                    "chown " + std::to_string(owner->uid) + ":" +
                                        std::to_string(owner->gid) + " " + path,
                                    "Exim may be unable to append to it"};
            }
        }
        return out;
    }
    return fail(0, path, "deleted again and again while being opened");
}

struct AppendRange {
    std::uint64_t start = 0;  // file size just before our bytes
    std::uint64_t end = 0;    // just after them
    bool complete = false;
};

// One write() on an O_APPEND descriptor. The kernel places and writes the bytes under
// the inode lock, and leaves the descriptor's offset at their end: since nobody else
// uses our descriptor, that offset tells exactly where our bytes landed, whatever Exim
// appended around them.
Result<AppendRange> append(int fd, std::string_view data, const std::string& path) {
    ssize_t n = 0;
    do {
        n = ::write(fd, data.data(), data.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return fail(errno, "append to " + path);
    const off_t end = ::lseek(fd, 0, SEEK_CUR);
    if (end < 0)
        return fail(errno, "append to " + path);
    AppendRange r;
    r.end = static_cast<std::uint64_t>(end);
    r.start = r.end - static_cast<std::uint64_t>(n);
    r.complete = static_cast<std::size_t>(n) == data.size();
    return r;
}

// Appends a whole line (or the bytes) to name in dir; a short write is an error.
Result<AppendRange> append_file(int dir, const std::string& name, const std::string& path,
                                std::string_view data, const std::optional<FileOwner>& owner,
                                std::optional<Error>& warning) {
    auto file = open_append(dir, name, path, owner);
    if (!file)
        return std::unexpected(std::move(file.error()));
    warning = std::move(file->warning);
    auto range = append(file->fd.get(), data, path);
    if (range && !range->complete) {
        return fail(0, "append to " + path,
                    "short write (" + std::to_string(range->end - range->start) + " of " +
                        std::to_string(data.size()) + " bytes): disk full?");
    }
    return range;
}

Result<UniqueFd> open_dir(const std::string& path) {
    // The root is the admin's (--virtual-dir): a symlink there is followed.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid())
        return fail(errno, path);
    return fd;
}

// Opens usage/ under root, creating it 0750 mail:mail when missing; never a symlink.
Result<UniqueFd> open_usage_dir(int root, const std::string& root_path,
                                const std::optional<FileOwner>& owner,
                                std::optional<Error>& warning) {
    const std::string path = root_path + "/usage";
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    UniqueFd fd(::openat(root, "usage", kFlags));
    if (fd.valid())
        return fd;
    if (errno == ENOTDIR) {
        // O_DIRECTORY|O_NOFOLLOW says ENOTDIR for a symlink, even to a directory.
        if (is_symlink_at(root, "usage"))
            return file_error(ELOOP, path);
        return fail(ENOTDIR, path);
    }
    if (errno != ENOENT)
        return file_error(errno, path);
    const bool created = ::mkdirat(root, "usage", kUsageDirMode) == 0;
    if (!created && errno != EEXIST)
        return fail(errno, "create " + path);
    fd.reset(::openat(root, "usage", kFlags));
    if (!fd.valid())
        return file_error(errno, path);
    if (created) {
        if (::fchmod(fd.get(), kUsageDirMode) != 0)
            warning = Error{errno, "chmod 0750 " + path, {}};
        if (owner && ::fchown(fd.get(), owner->uid, owner->gid) != 0)
            warning = Error{errno, "chown " + path, "Exim may be unable to count in it"};
    }
    return fd;
}

// Reads at most max bytes of a file opened with flags relative to dir; nullopt when it
// cannot be opened. Anything but a regular file reads as empty (a directory opened by
// Perl reads as nothing, too).
std::optional<std::string> read_small(int dir, const char* name, int flags, std::size_t max) {
    UniqueFd fd(::openat(dir, name, flags));
    if (!fd.valid())
        return std::nullopt;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        return std::string();
    std::string text(max, '\0');
    std::size_t done = 0;
    while (done < max) {
        const ssize_t n = ::read(fd.get(), text.data() + done, max - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    text.resize(done);
    return text;
}

// The last max bytes of a regular file (from the start of a line), "" when missing.
std::string read_tail(int dir, const char* name, std::size_t max) {
    UniqueFd fd(::openat(dir, name, kReadFlags));
    if (!fd.valid())
        return {};
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        return {};
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const std::uint64_t from = size > max ? size - max : 0;
    std::string text(static_cast<std::size_t>(size - from), '\0');
    std::size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::pread(fd.get(), text.data() + done, text.size() - done,
                                  static_cast<off_t>(from + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    text.resize(done);
    if (from > 0) {
        const auto nl = text.find('\n');
        text.erase(0, nl == std::string::npos ? text.size() : nl + 1);
    }
    return text;
}

std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
    if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
        return std::numeric_limits<std::uint64_t>::max();
    return a * b;
}

std::optional<std::uint64_t> parse_digits(std::string_view s) {
    if (s.empty())
        return std::nullopt;
    std::uint64_t v = 0;
    for (const char c : s) {
        if (c < '0' || c > '9')
            return std::nullopt;
        const auto d = static_cast<std::uint64_t>(c - '0');
        if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
            return std::nullopt;
        v = v * 10 + d;
    }
    return v;
}

// Did Exim write its own action=limit line for this crossing? Its line has count equal
// to limit and a log_time since the crossing; its email= may be empty (a local user's
// `sendmail -f '<>'`), so a line is told apart from ours only by being none of the lines
// we wrote (own: our last notice for this account, "" when none).
bool exim_notified(std::string_view queue, std::string_view account, std::uint64_t limit,
                   std::time_t since, std::string_view own) {
    const std::string prefix = "action=limit&username=" + std::string(account) +
                               "&count=" + std::to_string(limit) +
                               "&limit=" + std::to_string(limit) + "&";
    std::size_t pos = 0;
    while (pos < queue.size()) {
        std::size_t eol = queue.find('\n', pos);
        if (eol == std::string_view::npos)
            eol = queue.size();
        const std::string_view line = queue.substr(pos, eol - pos);
        pos = eol + 1;
        if (!line.starts_with(prefix) || (!own.empty() && line == own.substr(0, own.size() - 1)))
            continue;
        const auto at = line.rfind("&log_time=");
        if (at == std::string_view::npos)
            continue;
        const auto t = parse_digits(line.substr(at + 10));
        if (t && static_cast<std::time_t>(*t) + kEximLineSlack >= since)
            return true;
    }
    return false;
}

// A working directory that BlockCracking can hold: Exim looks it up as an lsearch key
// (which ends at a colon or white space) and writes it back unencoded in its notice.
// Anything that would need quoting or encoding is not blocked.
bool is_blockable_path(std::string_view cwd) {
    if (cwd.size() < 2 || cwd.front() != '/')
        return false;
    return std::all_of(cwd.begin(), cwd.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u < 0x7f && c != ':' && c != '"' && c != '\\' && c != '%' && c != '&' &&
               c != '=';
    });
}

bool is_inside(std::string_view path, std::string home) {
    while (home.size() > 1 && home.back() == '/')
        home.pop_back();
    if (home.empty() || home == "/")
        return false;
    return path == home || (path.starts_with(home) && path[home.size()] == '/');
}

std::string printable_name(std::string_view s) {
    return encode_da_value(s.substr(0, 64));
}

}  // namespace

// ---- formats --------------------------------------------------------------------------

std::string encode_da_value(std::string_view value) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(value.size());
    for (const char c : value) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f && c != '%' && c != '&' && c != '=') {
            out.push_back(c);
        } else {
            out.push_back('%');
            out.push_back(kHex[u >> 4U]);
            out.push_back(kHex[u & 0xfU]);
        }
    }
    return out;
}

std::string decode_da_value(std::string_view value) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9')
            return c - '0';
        if (c >= 'A' && c <= 'F')
            return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
            return c - 'a' + 10;
        return -1;
    };
    std::string out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '%' && i + 2 < value.size() && hex(value[i + 1]) >= 0 &&
            hex(value[i + 2]) >= 0) {
            out.push_back(static_cast<char>(hex(value[i + 1]) * 16 + hex(value[i + 2])));
            i += 2;
        } else {
            out.push_back(value[i]);
        }
    }
    return out;
}

bool is_da_account_name(std::string_view account) {
    if (account.empty() || account.size() > kMaxAccountName)
        return false;
    auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_';
    };
    if (!alnum(account.front()))
        return false;
    return std::all_of(account.begin() + 1, account.end(),
                       [&](char c) { return alnum(c) || c == '.' || c == '-'; });
}

std::string da_limit_line(std::string_view account, std::uint64_t count, std::uint64_t limit,
                          std::time_t time) {
    return "action=limit&username=" + encode_da_value(account) + "&count=" + std::to_string(count) +
           "&limit=" + std::to_string(limit) +
           "&email=&authenticated_id=&sender_host_address=&log_time=" + std::to_string(time) + "\n";
}

std::uint64_t parse_da_limit(std::string_view text) {
    // Perl reads one line, then int() skips leading white space and takes an optional sign
    // and the digits that follow.
    text = text.substr(0, text.find('\n'));
    std::size_t i = 0;
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' ||
                               text[i] == '\f' || text[i] == '\v')) {
        ++i;
    }
    if (i < text.size() && text[i] == '+')
        ++i;
    std::uint64_t v = 0;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
        const auto d = static_cast<std::uint64_t>(text[i] - '0');
        if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
            return std::numeric_limits<std::uint64_t>::max();
        v = v * 10 + d;
    }
    return v;
}

std::uint64_t da_user_limit(const std::string& virtual_dir, std::string_view account) {
    auto root = open_dir(virtual_dir);
    if (!root)
        return 0;
    // Exim's open() follows symlinks and falls through on any open error; so do we. The
    // text is only parsed as a number, and O_NONBLOCK keeps a FIFO from hanging us.
    constexpr int kFlags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    const std::string per_user = "limit_" + std::string(account);
    if (auto text = read_small(root->get(), per_user.c_str(), kFlags, kMaxLimitRead))
        return parse_da_limit(*text);
    if (auto text = read_small(root->get(), "limit", kFlags, kMaxLimitRead))
        return parse_da_limit(*text);
    return 0;
}

// ---- configuration ------------------------------------------------------------------

DaPipelineStatus resolve_da_pipeline(DaPipeline mode, const std::string& virtual_dir) {
    struct stat st {};
    const bool exists = ::stat(virtual_dir.c_str(), &st) == 0;
    const int err = exists ? 0 : errno;
    const bool is_dir = exists && S_ISDIR(st.st_mode);
    switch (mode) {
        case DaPipeline::Off:
            return {false, "DA_PIPELINE = 0"};
        case DaPipeline::On:
            if (!is_dir) {
                return {true, "DA_PIPELINE = 1 (but " + virtual_dir +
                                  (exists ? " is not a directory" : " does not exist") +
                                  ": every write will fail)"};
            }
            return {true, "DA_PIPELINE = 1"};
        case DaPipeline::Auto:
            break;
    }
    if (is_dir)
        return {true, "auto: " + virtual_dir + " exists"};
    if (exists)
        return {false, "auto: " + virtual_dir + " is not a directory"};
    if (err == ENOENT)
        return {false, "auto: " + virtual_dir + " does not exist"};
    return {false, "auto: cannot check " + virtual_dir + ": " + errno_text(err)};
}

std::optional<FileOwner> mail_owner(const AccountDb& accounts) {
    const Account* user = accounts.user("mail");
    if (user == nullptr)
        return std::nullopt;
    FileOwner owner{user->uid, user->gid};
    if (const GroupEntry* group = accounts.group("mail"))
        owner.gid = group->gid;
    return owner;
}

DaSinkConfig da_sink_config(const Policy& policy, const std::string& virtual_dir,
                            const AccountDb& accounts) {
    DaSinkConfig config;
    config.virtual_dir = virtual_dir;
    config.attempt_weight = policy.da_attempt_weight;
    config.block_cracking = policy.da_block_cracking;
    config.owner = mail_owner(accounts);
    auto homes = std::make_shared<std::map<std::string, std::string, std::less<>>>();
    for (const Account& a : accounts.accounts())
        homes->emplace(a.name, a.home);  // the first entry wins, as glibc
    config.account_home = [homes](const std::string& account) -> std::optional<std::string> {
        const auto it = homes->find(account);
        if (it == homes->end())
            return std::nullopt;
        return it->second;
    };
    return config;
}

// ---- the sink -----------------------------------------------------------------------

Result<std::unique_ptr<DaSink>> DaSink::open(DaSinkConfig config) {
    if (config.attempt_weight > kMaxAttemptWeight) {
        return fail(EINVAL, "DirectAdmin sink",
                    "attempt weight " + std::to_string(config.attempt_weight) +
                        " is above the maximum " + std::to_string(kMaxAttemptWeight));
    }
    struct stat st {};
    if (::stat(config.virtual_dir.c_str(), &st) != 0)
        return fail(errno, config.virtual_dir);
    if (!S_ISDIR(st.st_mode))
        return fail(ENOTDIR, config.virtual_dir);
    return std::unique_ptr<DaSink>(new DaSink(std::move(config)));
}

DaSink::~DaSink() {
    try {
        settle(true);
    } catch (...) {
        // Nothing may escape a destructor (out of memory while settling): a lost notice
        // is the worst outcome here.
        ++stats_.errors;
    }
}

void DaSink::explained(const Attempt& attempt) {
    record(attempt.account, attempt.uid, 1, attempt.time, &attempt);
}

void DaSink::counted_only(const CountedOnly& record_in) {
    if (record_in.count > 0)
        record(record_in.account, record_in.uid, record_in.count, record_in.time, nullptr);
}

void DaSink::checkpoint(const Checkpoint&) {
    settle(false);
}

std::size_t DaSink::pending() const {
    return static_cast<std::size_t>(
        std::count_if(watches_.begin(), watches_.end(),
                      [](const auto& w) { return w.second.state == CrossingState::Pending; }));
}

void DaSink::record(const std::string& account, std::uint32_t uid, std::uint64_t attempts,
                    std::time_t time, const Attempt* explained) {
    // Exim's uid_exempt: the billed account's uid 0, root, diradmin.
    if (uid == 0 || std::find(config_.exempt_accounts.begin(), config_.exempt_accounts.end(),
                              account) != config_.exempt_accounts.end()) {
        stats_.exempt += attempts;
        return;
    }
    if (!is_da_account_name(account)) {
        report(Error{0, config_.virtual_dir + "/usage",
                     "account name \"" + printable_name(account) + "\" (uid " +
                         std::to_string(uid) +
                         ") is not usable as a file name: attempt not recorded for DirectAdmin"});
        return;
    }
    stats_.attempts += attempts;
    if (explained != nullptr)
        write_bytes_line(account, *explained);
    count(account, attempts, time);
    if (explained != nullptr && config_.block_cracking)
        block_script_path(account, *explained);
}

void DaSink::write_bytes_line(const std::string& account, const Attempt& a) {
    auto root = open_dir(config_.virtual_dir);
    if (!root)
        return report(root.error());
    std::optional<Error> warning;
    auto usage = open_usage_dir(root->get(), config_.virtual_dir, config_.owner, warning);
    if (warning)
        report(*warning);
    if (!usage)
        return report(usage.error());
    // Exim's log_bandwidth line: SIZE=type=email&...&path=CWD, in its key order, path last.
    const std::string line =
        "0=type=email&email=&method=" + std::string(kDirectOutMethod) +
        "&id=&authenticated_id=&sender_host_address=&log_time=" + std::to_string(a.time) +
        "&message_size=0&local_part=&domain=&path=" + encode_da_value(a.cwd) + "\n";
    const std::string name = account + ".bytes";
    std::optional<Error> file_warning;
    auto done = append_file(usage->get(), name, config_.virtual_dir + "/usage/" + name, line,
                            config_.owner, file_warning);
    if (file_warning)
        report(*file_warning);
    if (!done)
        report(done.error());
}

void DaSink::count(const std::string& account, std::uint64_t attempts, std::time_t time) {
    if (config_.attempt_weight == 0)
        return;
    auto root = open_dir(config_.virtual_dir);
    if (!root)
        return report(root.error());
    std::optional<Error> warning;
    auto usage = open_usage_dir(root->get(), config_.virtual_dir, config_.owner, warning);
    if (warning)
        report(*warning);
    if (!usage)
        return report(usage.error());
    const std::string path = config_.virtual_dir + "/usage/" + account;
    auto file = open_append(usage->get(), account, path, config_.owner);
    if (!file)
        return report(file.error());
    if (const std::optional<Error>& warning_of_file = file->warning)
        report(*warning_of_file);

    // The count as Exim reads it: the file's size (fstat of the descriptor we write to).
    const std::uint64_t limit = da_user_limit(config_.virtual_dir, account);
    const auto size = static_cast<std::uint64_t>(file->st.st_size);
    const std::uint64_t ceiling =
        std::max(config_.max_usage_bytes, std::min(limit, kMaxUsageCeiling));
    const std::uint64_t wanted = saturating_mul(attempts, config_.attempt_weight);
    const std::uint64_t room = size >= ceiling ? 0 : ceiling - size;
    const std::uint64_t n = std::min(wanted, room);
    stats_.capped += wanted - n;
    if (n == 0)
        return;
    auto range = append(file->fd.get(), std::string(static_cast<std::size_t>(n), '1'), path);
    if (!range)
        return report(range.error());
    stats_.bytes_appended += range->end - range->start;
    if (!range->complete) {
        report(Error{0, "append to " + path,
                     "short write (" + std::to_string(range->end - range->start) + " of " +
                         std::to_string(n) + " bytes): disk full?"});
    }
    if (limit == 0)
        return;

    Watch& w = watches_[account];
    // A new file (the nightly reset) or a new limit: a new crossing to watch. The inode
    // number alone does not tell: ext4 hands a deleted file's number to the next new
    // file. But within one file our bytes only ever land after the previous ones, so a
    // write that starts before our last one ended is in another file.
    if (w.dev != file->st.st_dev || w.ino != file->st.st_ino || w.limit != limit ||
        range->start < w.last_end) {
        w = Watch{};
        w.dev = file->st.st_dev;
        w.ino = file->st.st_ino;
        w.limit = limit;
    }
    w.last_end = range->end;
    if (w.state == CrossingState::Done)
        return;
    const std::uint64_t brink = limit - 1;  // the size at which Exim's count == limit
    if (range->start < brink && range->end >= limit) {
        // We jumped over size limit-1: no Exim can have seen it, the notice is ours.
        if (notify_limit(account, range->end, limit, time)) {
            w.state = CrossingState::Done;
            return;
        }
    } else if (!(range->start <= brink && brink <= range->end)) {
        return;  // below the brink, or past a crossing that was not ours to watch
    }
    // Ambiguous (or our notice failed): settle once concurrent Exims are done.
    if (w.state == CrossingState::Idle) {
        w.state = CrossingState::Pending;
        w.since = std::chrono::steady_clock::now();
        w.since_epoch = std::time(nullptr);
        w.count = std::max(range->end, limit);
        w.time = time;
    }
}

bool DaSink::notify_limit(const std::string& account, std::uint64_t count, std::uint64_t limit,
                          std::time_t time) {
    auto root = open_dir(config_.virtual_dir);
    if (!root) {
        report(root.error());
        return false;
    }
    std::optional<Error> warning;
    std::string line = da_limit_line(account, count, limit, time);
    auto done = append_file(root->get(), "mail_task.queue",
                            config_.virtual_dir + "/mail_task.queue", line, config_.owner, warning);
    if (warning)
        report(*warning);
    if (!done) {
        report(done.error());
        return false;
    }
    ++stats_.notifications;
    own_notices_[account] = std::move(line);
    log::notice("DirectAdmin: " + account + " reached the daily limit of " + std::to_string(limit) +
                " (direct-out attempts counted as sends)");
    return true;
}

void DaSink::settle(bool force) {
    const auto now = std::chrono::steady_clock::now();
    for (auto& [account, watch] : watches_) {
        if (watch.state == CrossingState::Pending &&
            (force || now - watch.since >= config_.settle_delay)) {
            settle_one(account, watch);
        }
    }
}

void DaSink::settle_one(const std::string& account, Watch& w) {
    auto root = open_dir(config_.virtual_dir);
    if (!root)
        return report(root.error());
    UniqueFd usage(::openat(root->get(), "usage", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    UniqueFd file;
    if (usage.valid())
        file.reset(::openat(usage.get(), account.c_str(), kReadFlags));
    struct stat st {};
    const bool same_file = file.valid() && ::fstat(file.get(), &st) == 0 && st.st_dev == w.dev &&
                           st.st_ino == w.ino &&
                           static_cast<std::uint64_t>(st.st_size) >= w.last_end;
    if (!same_file) {
        // Deleted (the nightly reset) since. If our own bytes reached the limit, the
        // crossing happened and is settled below; if we only stood at the brink, the day
        // ended without one.
        if (w.last_end < w.limit) {
            w.state = CrossingState::Idle;
            return;
        }
    } else if (static_cast<std::uint64_t>(st.st_size) < w.limit) {
        return;  // still at the brink: whoever crosses next settles it
    }
    const std::string queue = read_tail(root->get(), "mail_task.queue", kMaxQueueScan);
    const auto own = own_notices_.find(account);
    if (exim_notified(queue, account, w.limit, w.since_epoch,
                      own == own_notices_.end() ? std::string_view() : own->second)) {
        ++stats_.exim_notified;
        w.state = CrossingState::Done;
        return;
    }
    if (notify_limit(account, w.count, w.limit, w.time))
        w.state = CrossingState::Done;
}

void DaSink::block_script_path(const std::string& account, const Attempt& a) {
    if (!a.identified || !config_.account_home)
        return;
    const std::optional<std::string> home = config_.account_home(account);
    if (!home || !is_inside(a.cwd, *home)) {
        log::debug("DirectAdmin BlockCracking: " + encode_da_value(a.cwd) +
                   " is not inside the home of " + account + ": not blocked");
        return;
    }
    if (!is_blockable_path(a.cwd)) {
        log::debug("DirectAdmin BlockCracking: " + encode_da_value(a.cwd) +
                   " cannot be an lsearch key: not blocked");
        return;
    }
    const std::string& list_path = config_.blocked_script_paths;
    const auto slash = list_path.rfind('/');
    const std::string dir_path = slash == std::string::npos ? std::string(".")
                                 : slash == 0               ? std::string("/")
                                                            : list_path.substr(0, slash);
    const std::string name = list_path.substr(slash == std::string::npos ? 0 : slash + 1);
    auto dir = open_dir(dir_path);
    if (!dir)
        return report(dir.error());
    // Already listed (users unblock it in DirectAdmin, which removes the line): done.
    const std::string listed =
        read_small(dir->get(), name.c_str(), kReadFlags, kMaxBlockedListRead).value_or("");
    const std::string key = a.cwd + ":";
    std::size_t pos = 0;
    while (pos < listed.size()) {
        if (std::string_view(listed).substr(pos).starts_with(key))
            return;
        const auto nl = listed.find('\n', pos);
        if (nl == std::string::npos)
            break;
        pos = nl + 1;
    }
    std::optional<Error> warning;
    auto done = append_file(dir->get(), name, list_path,
                            a.cwd + ":" + std::to_string(a.time) + "\n", config_.owner, warning);
    if (warning)
        report(*warning);
    if (!done)
        return report(done.error());
    ++stats_.blocked_paths;
    auto root = open_dir(config_.virtual_dir);
    if (!root)
        return report(root.error());
    const std::string notice = "action=block_cracking&type=script&authenticated_id=&script_path=" +
                               encode_da_value(a.cwd) +
                               "&sender_host_address=&log_time=" + std::to_string(a.time) + "\n";
    auto queued =
        append_file(root->get(), "mail_task.queue", config_.virtual_dir + "/mail_task.queue",
                    notice, config_.owner, warning);
    if (warning)
        report(*warning);
    if (!queued)
        report(queued.error());
}

void DaSink::report(const Error& error) {
    ++stats_.errors;
    const auto now = std::chrono::steady_clock::now();
    if (now - error_window_ >= kErrorWindow) {
        if (errors_suppressed_ > 0) {
            log::warning("DirectAdmin: " + std::to_string(errors_suppressed_) +
                         " more error(s) not shown");
        }
        error_window_ = now;
        errors_in_window_ = 0;
        errors_suppressed_ = 0;
    }
    if (errors_in_window_ < kErrorBurst) {
        ++errors_in_window_;
        log::warning("DirectAdmin: " + error.message());
    } else {
        ++errors_suppressed_;
    }
}

}  // namespace smtpfence::nfq
