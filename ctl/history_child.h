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

#include "ctl/handlers.h"
#include "ctl/protocol.h"

namespace smtpfence {

// The answer to r (attempts or top) from the history in state_dir. only_uid: the scope
// the daemon decided for the peer (nullopt: every uid), whatever r asks. A query still
// running at deadline ends with an error. What the child runs; tests call it directly.
[[nodiscard]] Answer answer_history(const std::string& state_dir, const ctl::Request& r,
                                    std::optional<std::uint32_t> only_uid,
                                    std::chrono::steady_clock::time_point deadline);

class HistoryQueries {
  public:
    explicit HistoryQueries(std::string state_dir) : state_dir_(std::move(state_dir)) {}
    HistoryQueries(const HistoryQueries&) = delete;
    HistoryQueries& operator=(const HistoryQueries&) = delete;

    // Forks the child that answers r on client_fd. The error to send instead when
    // kMaxRunning children run already or the fork fails.
    [[nodiscard]] std::expected<void, ctl::ProtocolError> start(
        const ctl::Request& r, std::optional<std::uint32_t> only_uid, int client_fd);
    // The daemon's reaper (ctl/children.h) reaped pid: true when it was one of these.
    bool ended(pid_t pid);
    [[nodiscard]] std::size_t running() const { return children_.size(); }

    // Each child is a process with a SQLite cache of 2 MiB: a few at once, for 4
    // connections of one user and room for the admins.
    static constexpr std::size_t kMaxRunning = 8;
    // Below the client's 15 s wait: the query stops with a message before the client
    // gives up; SIGALRM ends a child that is stuck past it (a client that never reads).
    static constexpr std::chrono::seconds kTimeLimit{10};
    static constexpr unsigned kAlarmSeconds = 13;

  private:
    std::string state_dir_;
    std::vector<pid_t> children_;
};

}  // namespace smtpfence
