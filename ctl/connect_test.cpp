#include "ctl/connect_test.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <vector>

#include "common/fd.h"
#include "common/log.h"
#include "common/text.h"
#include "ctl/handlers.h"

namespace smtpfence {
namespace {

using ctl::ErrorCode;

// The outcome of a real connection attempt, made in a child as another user.
[[noreturn]] void run_test_child(int client_fd, const Account& account, std::vector<gid_t> groups,
                                 const std::string& address, std::uint16_t port) {
    const auto reply = [&](const std::string& line) { ctl::answer_in_child(client_fd, line); };
    // Become the user entirely: groups, then gid, then uid (after setuid, setgid
    // would no longer be permitted). The kernel judges the socket by these.
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(account.gid) != 0 ||
        setuid(account.uid) != 0) {
        reply(ctl::encode_error(
            {ErrorCode::Failed, "cannot switch to " + account.name + ": " + errno_text(errno)}));
    }
    sockaddr_storage ss{};
    socklen_t len = 0;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
    }
    const auto started = std::chrono::steady_clock::now();
    UniqueFd s(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    int err = 0;
    if (!s.valid()) {
        err = errno;
    } else if (::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            pollfd p{s.get(), POLLOUT, 0};
            const int ready = ::poll(&p, 1, 5000);
            if (ready == 0) {
                err = ETIMEDOUT;
            } else {
                socklen_t el = sizeof err;
                if (getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &el) != 0)
                    err = errno;
            }
        }
    }
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
    std::string outcome = "error";
    if (err == 0)
        outcome = "connected";
    else if (err == ECONNREFUSED)
        outcome = "refused";
    else if (err == ETIMEDOUT)
        outcome = "timed_out";
    reply(ctl::encode_ok({{"user", account.name},
                          {"uid", account.uid},
                          {"address", address},
                          {"port", port},
                          {"outcome", outcome},
                          {"error", err == 0 ? std::string() : errno_text(err)},
                          {"elapsed_ms", ms}}));
    _exit(0);  // not reached: reply() exits
}

}  // namespace

std::expected<pid_t, ctl::ProtocolError> start_connect_test(const DaemonState& state,
                                                            const std::string& passwd_path,
                                                            const ctl::Request& r, int client_fd) {
    if (!state.current)
        return refuse(ErrorCode::Failed, "no policy loaded");
    const std::string user = r.user.value_or("");
    const std::string address = r.address.value_or("");
    const Account* found = find_user(state.current->accounts, user);
    if (found == nullptr) {
        return refuse(ErrorCode::NotFound,
                      "no user \"" + text::printable(user) + "\" in " + passwd_path);
    }
    const Account account = *found;
    std::vector<gid_t> groups;
    for (const std::uint32_t gid : state.current->accounts.supplementary_gids(account.name))
        groups.push_back(gid);
    const pid_t pid = fork();
    if (pid < 0)
        return refuse(ErrorCode::Failed, "fork: " + errno_text(errno));
    if (pid == 0)
        run_test_child(client_fd, account, std::move(groups), address, r.port);
    log::notice("control: test connection as " + account.name + " to " + address + " port " +
                std::to_string(r.port) + " (child pid " + std::to_string(pid) + ")");
    return pid;
}

}  // namespace smtpfence
