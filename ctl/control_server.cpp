#include "ctl/control_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/files.h"
#include "common/log.h"

namespace smtpfence::ctl {
namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path)
        return fail(ENAMETOOLONG, "control socket " + path,
                    "the path must be 1-" + std::to_string(sizeof addr.sun_path - 1) + " bytes");
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
}

Result<Peer> peer_of(int fd) {
    Peer p;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return fail(errno, "SO_PEERCRED");
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
    // SO_PEERGROUPS (Linux 4.13): the peer's supplementary groups at connect() time.
    // Membership of the admin group is read from the kernel, not from /etc/group,
    // so a group edit takes effect at the user's next login, as for file access.
    std::vector<gid_t> groups(64);
    len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
        if (errno != ERANGE)
            return fail(errno, "SO_PEERGROUPS");
        groups.resize(len / sizeof(gid_t));
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0)
            return fail(errno, "SO_PEERGROUPS");
    }
    groups.resize(len / sizeof(gid_t));
    p.groups = std::move(groups);
    return p;
}

}  // namespace

bool is_admin(const AccessPolicy& access, const Peer& peer) {
    return peer.uid == 0 ||
           (access.admin_gid &&
            (peer.gid == *access.admin_gid ||
             std::ranges::find(peer.groups, *access.admin_gid) != peer.groups.end()));
}

std::string access_problem(const AccessPolicy& access, const Peer& peer, Command command) {
    if (is_admin(access, peer))
        return {};
    if (!is_change(command) && access.read_all)
        return {};
    std::string who = "uid " + std::to_string(peer.uid);
    std::string needed = access.admin_gid
                             ? "root or a member of gid " + std::to_string(*access.admin_gid) +
                                   " (CONTROL_ADMIN_GROUP)"
                             : "root (set CONTROL_ADMIN_GROUP to delegate)";
    if (!is_change(command))
        needed += ", or CONTROL_READ = \"all\"";
    return std::string(to_string(command)) + " is not allowed for " + who + ": it needs " + needed;
}

Result<ControlServer> ControlServer::listen(const std::string& path) {
    auto addr = unix_address(path);
    if (!addr)
        return std::unexpected(addr.error());
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (!dir.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec)
            return fail(ec.value(), "create " + dir.string());
    }
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid())
        return fail(errno, "control socket");
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return fail(EEXIST, "control socket " + path, "exists and is not a socket");
        // Is someone answering there? Then two daemons would fight over the table.
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (probe.valid() &&
            ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) == 0) {
            return fail(EADDRINUSE, "control socket " + path,
                        "another smtpfenced answers there; stop it first");
        }
        ::unlink(path.c_str());
    }
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0)
        return fail(errno, "bind control socket " + path);
    if (::chmod(path.c_str(), 0666) != 0)
        return fail(errno, "chmod control socket " + path);
    if (::listen(fd.get(), 64) != 0)
        return fail(errno, "listen on control socket " + path);
    return ControlServer(path, std::move(fd));
}

ControlServer::~ControlServer() {
    if (listen_fd_.valid())
        ::unlink(path_.c_str());
}

void ControlServer::add_pollfds(std::vector<pollfd>& fds) const {
    fds.push_back({listen_fd_.get(), POLLIN, 0});
    for (const Client& c : clients_)
        fds.push_back({c.fd.get(), static_cast<short>(c.answered ? POLLOUT : POLLIN), 0});
}

int ControlServer::next_deadline_ms() const {
    if (clients_.empty())
        return -1;
    auto first = clients_.front().deadline;
    for (const Client& c : clients_)
        first = std::min(first, c.deadline);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(first - Clock::now());
    return static_cast<int>(std::max<std::int64_t>(ms.count(), 0)) + 1;
}

void ControlServer::process(const std::vector<pollfd>& fds, const Handler& handler) {
    for (const pollfd& p : fds) {
        if (p.revents == 0)
            continue;
        if (p.fd == listen_fd_.get()) {
            accept_clients();
            continue;
        }
        const auto it =
            std::ranges::find_if(clients_, [&](const Client& c) { return c.fd.get() == p.fd; });
        if (it == clients_.end())
            continue;
        if (it->answered)
            flush(*it);
        else
            on_readable(*it, handler);
    }
    const auto now = Clock::now();
    std::erase_if(clients_, [&](const Client& c) {
        if (!c.fd.valid())
            return true;
        if (now >= c.deadline) {
            log::debug("control: dropping a client (pid " + std::to_string(c.peer.pid) +
                       ") at its deadline");
            return true;
        }
        return false;
    });
}

void ControlServer::accept_clients() {
    while (true) {
        UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd.valid()) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log::warning("control socket: accept: " + errno_text(errno));
            return;
        }
        auto peer = peer_of(fd.get());
        if (!peer) {
            log::warning("control socket: " + peer.error().message());
            continue;
        }
        Client c{std::move(fd), std::move(*peer), {}, {}, false, Clock::now() + kClientDeadline};
        // Every local user may connect, so no user may take the slots from root and the
        // admin group: a few per uid, and a privileged client takes the slot of the
        // oldest unprivileged one when all are in use.
        const bool privileged = is_admin(access_, c.peer);
        if (!privileged) {
            const auto mine = std::ranges::count_if(
                clients_, [&](const Client& o) { return o.peer.uid == c.peer.uid; });
            if (static_cast<std::size_t>(mine) >= kMaxClientsPerUser) {
                refuse_client(c, "too many connections from uid " + std::to_string(c.peer.uid) +
                                     " (at most " + std::to_string(kMaxClientsPerUser) +
                                     " at once)");
                continue;
            }
        }
        if (clients_.size() >= kMaxClients) {
            auto victim = clients_.end();
            if (privileged) {
                victim = std::ranges::find_if(
                    clients_, [&](const Client& o) { return !is_admin(access_, o.peer); });
            }
            if (victim == clients_.end()) {
                refuse_client(c, "the daemon is busy with " + std::to_string(kMaxClients) +
                                     " other clients; try again");
                continue;
            }
            refuse_client(*victim,
                          "the daemon needs this connection for root or an admin; "
                          "try again");
            clients_.erase(victim);
        }
        clients_.push_back(std::move(c));
    }
}

void ControlServer::refuse_client(Client& c, const std::string& why) {
    // Answer and forget: one short write into an (almost always) empty socket buffer.
    ++rejected_;
    const std::string busy = encode_error({ErrorCode::Failed, why});
    (void)::send(c.fd.get(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    c.fd.reset();
}

void ControlServer::on_readable(Client& c, const Handler& handler) {
    std::array<char, 4096> buf{};
    while (true) {
        const ssize_t n = ::recv(c.fd.get(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c.fd.reset();
            return;
        }
        if (n == 0) {  // the client shut down its side: what it sent is the request
            if (c.in.empty())
                c.fd.reset();
            else
                answer(c, c.in, handler);
            return;
        }
        c.in.append(buf.data(), static_cast<std::size_t>(n));
        if (const auto nl = c.in.find('\n'); nl != std::string::npos) {
            answer(c, c.in.substr(0, nl), handler);
            return;
        }
        if (c.in.size() > kMaxRequestBytes) {
            ++rejected_;
            c.out = encode_error({ErrorCode::BadRequest, "request longer than " +
                                                             std::to_string(kMaxRequestBytes) +
                                                             " bytes without a newline"});
            c.answered = true;
            flush(c);
            return;
        }
    }
}

void ControlServer::answer(Client& c, const std::string& line, const Handler& handler) {
    ++requests_;
    c.answered = true;
    auto request = parse_request(line);
    if (!request) {
        ++rejected_;
        log::info("control: bad request from uid " + std::to_string(c.peer.uid) + ": " +
                  request.error().message);
        c.out = encode_error(request.error());
    } else if (const std::string problem = access_problem(access_, c.peer, request->command);
               !problem.empty()) {
        ++rejected_;
        log::notice("control: refused " + std::string(to_string(request->command)) + " from uid " +
                    std::to_string(c.peer.uid) + " (pid " + std::to_string(c.peer.pid) + ")");
        c.out = encode_error({ErrorCode::PermissionDenied, problem});
    } else {
        auto reply = handler(*request, c.peer, c.fd.get());
        if (!reply) {  // answered elsewhere (a child holds its own copy of the socket)
            c.fd.reset();
            return;
        }
        c.out = std::move(*reply);
    }
    flush(c);
}

void ControlServer::flush(Client& c) {
    while (!c.out.empty()) {
        const ssize_t n =
            ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c.fd.reset();  // the client went away: nothing to tell it
            return;
        }
        c.out.erase(0, static_cast<std::size_t>(n));
    }
    c.fd.reset();  // whole answer written: one request per connection
}

void answer_in_child(int client_fd, const std::string& line) {
    const int flags = fcntl(client_fd, F_GETFL);
    if (flags >= 0)
        (void)fcntl(client_fd, F_SETFL, flags & ~O_NONBLOCK);
    (void)send_all(client_fd, line);  // a client gone away has nobody to tell
    _exit(0);
}

std::expected<std::string, ClientError> call(const std::string& socket_path, const Request& request,
                                             std::chrono::milliseconds timeout) {
    auto addr = unix_address(socket_path);
    if (!addr)
        return std::unexpected(ClientError{false, addr.error().message()});
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid())
        return std::unexpected(ClientError{false, "socket: " + errno_text(errno)});
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
        const int err = errno;
        const bool down = err == ENOENT || err == ECONNREFUSED;
        return std::unexpected(ClientError{
            down, "cannot reach smtpfenced at " + socket_path + ": " + errno_text(err) +
                      (down ? " (is the daemon running? systemctl status smtpfenced)" : "")});
    }
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int send_error = 0;
    if (auto sent = send_all(fd.get(), encode_request(request)); !sent) {
        send_error = sent.error().code;
        // The daemon answers some requests (busy, too long) before reading them whole
        // and closes: its answer is still there to read.
        if (send_error != EPIPE && send_error != ECONNRESET)
            return std::unexpected(
                ClientError{false, "send to " + socket_path + ": " + errno_text(send_error)});
    }
    const auto send_failed = [&] {
        return std::unexpected(
            ClientError{false, "send to " + socket_path + ": " + errno_text(send_error)});
    };
    // One response line: stop at its newline. When the daemon closed with part of our
    // request unread, the kernel reports ECONNRESET once the answer has been read, and
    // reading on would turn a good answer into an error.
    std::string reply;
    std::size_t newline = std::string::npos;
    std::array<char, 65536> buf{};
    while (newline == std::string::npos) {
        const ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            const int err = errno;
            if (send_error != 0)
                return send_failed();
            return std::unexpected(ClientError{
                false, "no answer from smtpfenced at " + socket_path + ": " +
                           (err == EAGAIN ? std::string("timed out") : errno_text(err))});
        }
        if (n == 0)
            break;
        const std::size_t scanned = reply.size();
        reply.append(buf.data(), static_cast<std::size_t>(n));
        newline = reply.find('\n', scanned);
    }
    if (newline == std::string::npos) {
        if (send_error != 0)
            return send_failed();
        return std::unexpected(
            ClientError{false, "smtpfenced closed the connection without a complete answer"});
    }
    reply.resize(newline);
    return reply;
}

}  // namespace smtpfence::ctl
