#include "ctl/history_child.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>

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

Answer attempts(nfq::HistoryReader& reader, const ctl::Request& r,
                std::optional<std::uint32_t> only_uid) {
    const nfq::AttemptQuery q{.user = r.user,
                              .account = r.account,
                              .exe = r.exe,
                              .dst = r.dst,
                              .since = r.since,
                              .until = r.until,
                              .limit = r.limit,
                              .only_uid = only_uid};
    auto page = reader.attempts(q);
    if (!page)
        return refused(page.error());
    json j = {{"records", page->records},
              {"shown", page->records.size()},
              {"more", page->more},
              {"store", reader.path()}};
    if (only_uid)
        j["only_uid"] = *only_uid;
    return j;
}

Answer top(nfq::HistoryReader& reader, const ctl::Request& r,
           std::optional<std::uint32_t> only_uid) {
    const std::int64_t since = r.since.value_or(local_midnight(std::time(nullptr)));
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
    const auto reply = [&](const Answer& a) {
        ctl::answer_in_child(client_fd, a ? ctl::encode_ok(*a) : ctl::encode_error(a.error()));
    };
    if (client_fd > STDERR_FILENO + 1)
        ::close_range(STDERR_FILENO + 1, static_cast<unsigned>(client_fd) - 1, 0);
    ::close_range(static_cast<unsigned>(client_fd) + 1, ~0U, 0);
    // Every capability, for good: as uid 0 without CAP_DAC_OVERRIDE the child still reads
    // root's history.db (owner bits), and nothing another uid owns.
    auto dropped = drop_to(CapabilitySet{}, kDaemonBoundingSet);
    if (dropped)
        dropped = forbid_new_privileges();
    if (!dropped)
        reply(refuse(ErrorCode::Failed, dropped.error().message()));
    reply(answer_history(state_dir, r, only_uid,
                         std::chrono::steady_clock::now() + HistoryQueries::kTimeLimit));
    _exit(0);  // not reached: reply() exits
}

}  // namespace

Answer answer_history(const std::string& state_dir, const ctl::Request& r,
                      std::optional<std::uint32_t> only_uid,
                      std::chrono::steady_clock::time_point deadline) {
    auto reader = nfq::HistoryReader::open(state_dir);
    if (!reader)
        return refused(reader.error());
    reader->set_deadline(deadline);
    if (r.command == ctl::Command::Top)
        return top(*reader, r, only_uid);
    return attempts(*reader, r, only_uid);
}

std::expected<void, ctl::ProtocolError> HistoryQueries::start(const ctl::Request& r,
                                                              std::optional<std::uint32_t> only_uid,
                                                              int client_fd) {
    if (children_.size() >= kMaxRunning) {
        return refuse(ErrorCode::Failed, "busy: " + std::to_string(children_.size()) +
                                             " history queries are running; try again");
    }
    const pid_t pid = fork();
    if (pid < 0)
        return refuse(ErrorCode::Failed, "fork: " + errno_text(errno));
    if (pid == 0)
        run_query_child(state_dir_, r, only_uid, client_fd);
    children_.push_back(pid);
    log::debug("control: " + std::string(ctl::to_string(r.command)) + " in child pid " +
               std::to_string(pid) +
               (only_uid ? " (only uid " + std::to_string(*only_uid) + ")" : ""));
    return {};
}

bool HistoryQueries::ended(pid_t pid) {
    return std::erase(children_, pid) > 0;
}

}  // namespace smtpfence
