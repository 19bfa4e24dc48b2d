// The daemon's side of the control socket: accepts clients, reads one request each,
// checks the peer's kernel credentials against the access policy, hands the request
// to the daemon and writes the answer back, all without ever blocking the daemon's
// loop (every socket is non-blocking; a silent client is dropped at its deadline).
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "ctl/protocol.h"

namespace smtpfence::ctl {

// Who is on the other end, as the kernel says (SO_PEERCRED, SO_PEERGROUPS).
struct Peer {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups
};

struct AccessPolicy {
    std::optional<gid_t> admin_gid;  // CONTROL_ADMIN_GROUP: may change, besides root
    bool read_all = false;           // CONTROL_READ = "all": anyone may read
};

// Root, or a member of CONTROL_ADMIN_GROUP (primary or supplementary group): may run
// every command and sees every uid's history.
[[nodiscard]] bool is_admin(const AccessPolicy& access, const Peer& peer);

// "" when peer may run command, else why not (for the error message).
[[nodiscard]] std::string access_problem(const AccessPolicy& access, const Peer& peer,
                                         Command command);

class ControlServer {
  public:
    // Returns the response line, or nullopt when the handler answers on client_fd
    // itself (it keeps its own duplicate, e.g. in a child process).
    using Handler =
        std::function<std::optional<std::string>(const Request&, const Peer&, int client_fd)>;

    // Binds path (creating its directory 0755), mode 0666 so that every local user
    // reaches the daemon and gets a clear answer; who may do what is decided per
    // request from the peer's credentials. A stale socket file is replaced; a live
    // one (another daemon answers on it) is an error.
    [[nodiscard]] static Result<ControlServer> listen(const std::string& path);

    ControlServer(ControlServer&&) = default;
    ControlServer& operator=(ControlServer&&) = default;
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;
    ~ControlServer();

    void set_access(const AccessPolicy& access) { access_ = access; }
    [[nodiscard]] const AccessPolicy& access() const { return access_; }

    // The descriptors to poll; call process() with the same vector after poll().
    void add_pollfds(std::vector<pollfd>& fds) const;
    void process(const std::vector<pollfd>& fds, const Handler& handler);
    // ms until the next client deadline (-1: none), for poll().
    [[nodiscard]] int next_deadline_ms() const;

    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] std::uint64_t requests() const { return requests_; }
    [[nodiscard]] std::uint64_t rejected() const { return rejected_; }

    static constexpr std::size_t kMaxClients = 32;
    // Per uid, for every peer but root and the admin group (who never run out: they take
    // the slot of an ordinary user's connection when all are in use).
    static constexpr std::size_t kMaxClientsPerUser = 4;
    static constexpr std::chrono::seconds kClientDeadline{10};

  private:
    using Clock = std::chrono::steady_clock;
    struct Client {
        UniqueFd fd;
        Peer peer;
        std::string in;
        std::string out;
        bool answered = false;  // out holds the whole answer; close once it is written
        Clock::time_point deadline;
    };

    ControlServer(std::string path, UniqueFd fd)
        : path_(std::move(path)), listen_fd_(std::move(fd)) {}
    void accept_clients();
    void refuse_client(Client& c, const std::string& why);
    void on_readable(Client& c, const Handler& handler);
    void answer(Client& c, const std::string& line, const Handler& handler);
    void flush(Client& c);

    std::string path_;
    UniqueFd listen_fd_;
    std::vector<Client> clients_;
    AccessPolicy access_;
    std::uint64_t requests_ = 0;
    std::uint64_t rejected_ = 0;
};

// In a child forked by a handler that returned nullopt: writes line on client_fd
// (blocking, the whole of it) and ends the child without running the daemon's
// destructors.
[[noreturn]] void answer_in_child(int client_fd, const std::string& line);

// The client side: connects, sends request, returns the response line. Errors name
// the socket path ("cannot reach smtpfenced at /run/smtpfence/control.sock: ...").
struct ClientError {
    bool unreachable = false;  // the daemon is not running / socket missing
    std::string message;
};
[[nodiscard]] std::expected<std::string, ClientError> call(const std::string& socket_path,
                                                           const Request& request,
                                                           std::chrono::milliseconds timeout);

}  // namespace smtpfence::ctl
