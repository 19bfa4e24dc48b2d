#include "ctl/history_child.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>

#include "common/close_fds.h"
#include "common/files.h"
#include "common/local_time.h"
#include "common/log.h"
#include "common/privileges.h"
#include "ctl/control_server.h"
#include "nfq/history_query.h"

namespace smtpfence {
namespace {

using ctl::ErrorCode;
using nlohmann::json;

// A bad argument is the client's to fix; anything else (the file, SQLite, the time
// limit) is a failure.
std::unexpected<ctl::ProtocolError> refused(const Error& e) {
    if (e.code == EINVAL)
        return refuse(ErrorCode::InvalidArgument, e.what + ": " + e.detail);
    return refuse(ErrorCode::Failed, e.message());
}

// The line encode_ok() makes of an attempts answer, byte for byte, written on fd as the
// records come instead of built whole (up to 100,000 records: some 100 MB as JSON
// objects). nlohmann::json sorts the keys: "more" and "only_uid" come before
// "records", "shown" and "store" after, and all are known before the first record.
class AttemptsLine final : public nfq::AttemptVisitor {
  public:
    AttemptsLine(int fd, std::string store, std::optional<std::uint32_t> only_uid)
        : fd_(fd), store_(std::move(store)), only_uid_(only_uid) {}

    Result<void> begin(std::size_t shown, bool more) override {
        json result = {
            {"records", json::array()}, {"shown", shown}, {"more", more}, {"store", store_}};
        if (only_uid_)
            result["only_uid"] = *only_uid_;
        std::string line = ctl::encode_ok(result);
        const std::size_t at = line.find(kRecords) + kRecords.size();
        tail_ = line.substr(at);
        line.resize(at);
        out_ = std::move(line);
        return {};
    }
    Result<void> record(const json& record) override {
        if (records_++ > 0)
            out_ += ',';
        out_ += record.dump(-1, ' ', false, json::error_handler_t::replace);  // as encode_ok()
        return out_.size() < kChunk ? Result<void>{} : flush();
    }
    // Whether part of the line may have been written.
    [[nodiscard]] bool begun() const { return !tail_.empty(); }
    [[nodiscard]] Result<void> end() {
        out_ += tail_;
        return flush();
    }

  private:
    // An empty array's text in encode_ok()'s line: the records go in between.
    static constexpr std::string_view kRecords = "\"records\":[";
    // Written a few records at a time: fewer system calls, and still little memory.
    static constexpr std::size_t kChunk = 64 * 1024;

    Result<void> flush() {
        auto sent = send_all(fd_, out_);
        out_.clear();
        return sent;
    }

    int fd_;
    std::string store_;
    std::optional<std::uint32_t> only_uid_;
    std::string out_, tail_;
    std::size_t records_ = 0;
};

Result<void> attempts(int fd, nfq::HistoryReader& reader, const ctl::Request& r,
                      std::optional<std::uint32_t> only_uid) {
    const nfq::AttemptQuery q{.user = r.user,
                              .account = r.account,
                              .exe = r.exe,
                              .dst = r.dst,
                              .since = r.since,
                              .until = r.until,
                              .limit = r.limit,
                              .only_uid = only_uid};
    AttemptsLine line(fd, reader.path(), only_uid);
    if (auto read = reader.attempts(q, line); !read) {
        if (line.begun())
            return read;  // the line is cut: nothing can be said in it any more
        return send_all(fd, ctl::encode_error(refused(read.error()).error()));
    }
    return line.end();
}

Answer top(nfq::HistoryReader& reader, const ctl::Request& r,
           std::optional<std::uint32_t> only_uid) {
    const std::time_t now = std::time(nullptr);
    std::int64_t since = r.since.value_or(local_midnight(now));
    // A ranking over more than a day counts whole local days: from the midnight that
    // starts the first one, answered from the daily totals alone (docs/history.md,
    // "top"); the answer's since says where it starts.
    if (since < now - 86400)
        since = local_midnight(static_cast<std::time_t>(since));
    auto accounts = reader.top({.since = since, .until = r.until, .only_uid = only_uid});
    if (!accounts)
        return refused(accounts.error());
    json j = {{"since", since}, {"accounts", std::move(*accounts)}};
    if (r.until)
        j["until"] = *r.until;
    if (only_uid)
        j["only_uid"] = *only_uid;
    return j;
}

// The child: nothing of the daemon's but the client's socket, no capability, a time
// limit; then the answer, and _exit. The daemon runs no thread, so the fork copied
// one; its c-ares channel and netlink sockets are left alone (and closed here).
[[noreturn]] void run_query_child(const std::string& state_dir, const ctl::Request& r,
                                  std::optional<std::uint32_t> only_uid, int client_fd) {
    ::alarm(HistoryQueries::kAlarmSeconds);
    if (client_fd > STDERR_FILENO + 1)
        close_fds(STDERR_FILENO + 1, static_cast<unsigned>(client_fd) - 1);
    close_fds(static_cast<unsigned>(client_fd) + 1, ~0U);
    // Every capability, for good: as uid 0 without CAP_DAC_OVERRIDE the child still reads
    // root's history.db (owner bits), and nothing another uid owns.
    auto dropped = drop_to(CapabilitySet{}, kDaemonBoundingSet);
    if (dropped)
        dropped = forbid_new_privileges();
    if (!dropped)
        ctl::answer_in_child(
            client_fd,
            ctl::encode_error(refuse(ErrorCode::Failed, dropped.error().message()).error()));
    // The socket is the daemon's non-blocking one; the answer is written here, blocking
    // (the alarm ends a child whose client never reads).
    const int flags = fcntl(client_fd, F_GETFL);
    if (flags >= 0)
        (void)fcntl(client_fd, F_SETFL, flags & ~O_NONBLOCK);
    auto answered = answer_history(client_fd, state_dir, r, only_uid,
                                   std::chrono::steady_clock::now() + HistoryQueries::kTimeLimit);
    if (!answered)
        log::info("control: " + std::string(ctl::to_string(r.command)) +
                  " answer cut: " + answered.error().message());
    _exit(0);
}

}  // namespace

Result<void> answer_history(int fd, const std::string& state_dir, const ctl::Request& r,
                            std::optional<std::uint32_t> only_uid,
                            std::chrono::steady_clock::time_point deadline) {
    auto reader = nfq::HistoryReader::open(state_dir);
    if (!reader)
        return send_all(fd, ctl::encode_error(refused(reader.error()).error()));
    reader->set_deadline(deadline);
    if (r.command == ctl::Command::Attempts)
        return attempts(fd, *reader, r, only_uid);
    const Answer a = top(*reader, r, only_uid);
    return send_all(fd, a ? ctl::encode_ok(*a) : ctl::encode_error(a.error()));
}

std::optional<std::string> HistoryQueries::busy(HistoryPeer who) const {
    if (children_.size() >= kMaxRunning) {
        return "busy: " + std::to_string(children_.size()) +
               " history queries are running; try again";
    }
    if (who.admin)
        return std::nullopt;
    const auto mine = std::ranges::count_if(
        children_, [&](const Child& c) { return !c.who.admin && c.who.uid == who.uid; });
    if (static_cast<std::size_t>(mine) >= kMaxRunningPerUser) {
        return "busy: your " + std::to_string(mine) +
               " history queries are still running; read their answers first";
    }
    const auto others =
        std::ranges::count_if(children_, [](const Child& c) { return !c.who.admin; });
    if (static_cast<std::size_t>(others) >= kMaxRunning - kReservedForAdmins) {
        return "busy: " + std::to_string(others) +
               " history queries of other users are running; try again";
    }
    return std::nullopt;
}

std::expected<void, ctl::ProtocolError> HistoryQueries::start(const ctl::Request& r,
                                                              HistoryPeer who, int client_fd) {
    if (auto why = busy(who))
        return refuse(ErrorCode::Failed, *why);
    // The scope: an admin sees every uid, anyone else (CONTROL_READ = "all") only their
    // own, whatever they asked for.
    const std::optional<std::uint32_t> only_uid =
        who.admin ? std::nullopt : std::optional<std::uint32_t>(who.uid);
    const pid_t pid = fork();
    if (pid < 0)
        return refuse(ErrorCode::Failed, "fork: " + errno_text(errno));
    if (pid == 0)
        run_query_child(state_dir_, r, only_uid, client_fd);
    children_.push_back({pid, who});
    log::debug("control: " + std::string(ctl::to_string(r.command)) + " in child pid " +
               std::to_string(pid) +
               (only_uid ? " (only uid " + std::to_string(*only_uid) + ")" : ""));
    return {};
}

bool HistoryQueries::ended(pid_t pid) {
    return std::erase_if(children_, [&](const Child& c) { return c.pid == pid; }) > 0;
}

}  // namespace smtpfence
