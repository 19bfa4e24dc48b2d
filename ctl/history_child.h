// `attempts` and `top`: answered from the attempt history (nfq/history_query.h) by a
// child the daemon forks per request, never in the daemon's loop, which meanwhile
// answers `status` and keeps the table. The child drops every capability, reads
// history.db read only within a time limit, writes the answer on the client's socket
// and exits; the daemon's reaper reaps it. Why a child: docs/history.md.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "ctl/handlers.h"
#include "ctl/protocol.h"

namespace smtpfence {

// Writes the answer to r (attempts or top) from the history in state_dir on fd (blocking):
// the line encode_ok() or encode_error() makes, an attempts answer record by record as
// it is read, never whole in memory (docs/history.md, "Time and memory"). only_uid: the scope
// decided for the peer (nullopt: every uid), whatever r asks. A query still running at
// deadline ends with an error line; one that fails once records were written leaves the
// line cut (the client says the answer was incomplete). Errors: writing, or that cut.
// What the child runs; tests call it directly.
[[nodiscard]] Result<void> answer_history(int fd, const std::string& state_dir,
                                          const ctl::Request& r,
                                          std::optional<std::uint32_t> only_uid,
                                          std::chrono::steady_clock::time_point deadline);

// Who asks for a history query, from the peer's kernel credentials: root and the admin
// group (ctl::is_admin) see every uid, anyone else only their own.
struct HistoryPeer {
    std::uint32_t uid = 0;
    bool admin = false;
};

class HistoryQueries {
  public:
    explicit HistoryQueries(std::string state_dir) : state_dir_(std::move(state_dir)) {}
    HistoryQueries(const HistoryQueries&) = delete;
    HistoryQueries& operator=(const HistoryQueries&) = delete;

    // Forks the child that answers r for who on client_fd. The error to send instead
    // when the limits below are reached or the fork fails.
    [[nodiscard]] std::expected<void, ctl::ProtocolError> start(const ctl::Request& r,
                                                                HistoryPeer who, int client_fd);
    // The daemon's reaper (ctl/children.h) reaped pid: true when it was one of these.
    bool ended(pid_t pid);
    [[nodiscard]] std::size_t running() const { return children_.size(); }

    // Each child is a process with a SQLite cache of 2 MiB: a few at once. The
    // connection limit per uid does not bound them (a child takes its connection over
    // and the daemon frees the slot), so: at most kMaxRunningPerUser per uid that is not
    // an admin, and kReservedForAdmins of kMaxRunning that only root and admins get.
    static constexpr std::size_t kMaxRunning = 8;
    static constexpr std::size_t kMaxRunningPerUser = 2;
    static constexpr std::size_t kReservedForAdmins = 2;
    // Below the client's 15 s wait: the query stops with a message before the client
    // gives up; SIGALRM ends a child that is stuck past it (a client that never reads).
    static constexpr std::chrono::seconds kTimeLimit{10};
    static constexpr unsigned kAlarmSeconds = 13;

  private:
    struct Child {
        pid_t pid;
        HistoryPeer who;
    };
    [[nodiscard]] std::optional<std::string> busy(HistoryPeer who) const;

    std::string state_dir_;
    std::vector<Child> children_;
};

}  // namespace smtpfence
