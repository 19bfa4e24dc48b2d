// Every route out, tried by an ordinary uid (bob) against the remote's SMTP listener
// while smtpfenced enforces: each must be refused and the listener must accept
// nothing from bob. Every attack is also run as root, which must connect: that proves
// the attack code really reaches the remote, so a refusal is the fence's doing.
//
// Out of scope, on purpose (they are root's decisions, not a bypass by bob):
// - a socket root creates and hands to bob (SCM_RIGHTS, fork+setuid, a setuid-root
//   helper that opens the socket before dropping privileges). The kernel stamps a
//   socket with the uid that created it (sk_uid) and `meta skuid` reads that stamp,
//   so such a socket connects; whoever runs code as root can send mail anyway.
// What matters, and is tested: a socket bob creates is refused whoever connects it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <fstream>
#include <functional>
#include <tuple>

#include "tests/adversarial/attack.h"
#include "tests/integration/fence_test.h"

#ifndef TCP_FASTOPEN_CONNECT
#define TCP_FASTOPEN_CONNECT 30
#endif

namespace smtpfence::itest {
namespace {

enum class Method { Blocking, NonBlocking, FastOpenSendto, FastOpenConnect };

const char* name_of(Method m) {
    switch (m) {
        case Method::Blocking:
            return "blocking connect";
        case Method::NonBlocking:
            return "non-blocking connect";
        case Method::FastOpenSendto:
            return "TFO sendto(MSG_FASTOPEN)";
        case Method::FastOpenConnect:
            return "TFO TCP_FASTOPEN_CONNECT";
    }
    return "?";
}

struct Target {
    sockaddr_storage addr{};
    socklen_t len = 0;
    int family = AF_INET;
    bool mapped = false;  // ::ffff:a.b.c.d on a dual-stack AF_INET6 socket
};

Target target(const std::string& address, std::uint16_t port) {
    Target t;
    if (address.find(':') == std::string::npos) {
        auto* a = reinterpret_cast<sockaddr_in*>(&t.addr);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        ::inet_pton(AF_INET, address.c_str(), &a->sin_addr);
        t.len = sizeof *a;
    } else {
        auto* a = reinterpret_cast<sockaddr_in6*>(&t.addr);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        ::inet_pton(AF_INET6, address.c_str(), &a->sin6_addr);
        t.len = sizeof *a;
        t.family = AF_INET6;
        t.mapped = address.starts_with("::ffff:");
    }
    return t;
}

// After the handshake: the greeting proves the remote listener took the connection.
std::string connected(int fd) {
    timeval tv{3, 0};
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::array<char, 256> buf{};
    const ssize_t n = ::recv(fd, buf.data(), buf.size() - 1, 0);
    std::string line = n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : "";
    if (const auto cr = line.find('\r'); cr != std::string::npos)
        line.resize(cr);
    (void)::send(fd, "QUIT\r\n", 6, MSG_NOSIGNAL);
    return "CONNECTED " + line;
}

// A socket of the target's family; a mapped target gets IPV6_V6ONLY=0.
int open_socket(const Target& t, bool nonblocking) {
    const int fd =
        ::socket(t.family, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd >= 0 && t.mapped) {
        const int off = 0;
        (void)::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    }
    if (fd >= 0) {
        // Blocking connect() gives up after this (EINPROGRESS), never hangs the test.
        timeval tv{3, 0};
        (void)::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

// The connection attempt itself on an already created socket fd.
std::string attempt_on(int fd, const Target& t, Method m) {
    const auto* sa = reinterpret_cast<const sockaddr*>(&t.addr);
    static const char kData[] = "EHLO tfo.example\r\n";
    switch (m) {
        case Method::Blocking:
            if (::connect(fd, sa, t.len) != 0)
                return errno_name(errno);
            return connected(fd);
        case Method::NonBlocking: {
            const int flags = ::fcntl(fd, F_GETFL);
            (void)::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
            if (::connect(fd, sa, t.len) != 0 && errno != EINPROGRESS)
                return "connect: " + errno_name(errno);
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, 3000) != 1)
                return "poll: no result in 3 s";
            int err = 0;
            socklen_t len = sizeof err;
            if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                return "getsockopt: " + errno_name(errno);
            if (err != 0)
                return errno_name(err);
            (void)::fcntl(fd, F_SETFL, flags);
            return connected(fd);
        }
        case Method::FastOpenSendto:
            if (::sendto(fd, kData, sizeof kData - 1, MSG_FASTOPEN | MSG_NOSIGNAL, sa, t.len) < 0)
                return errno_name(errno);
            return connected(fd);
        case Method::FastOpenConnect: {
            const int on = 1;
            if (::setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &on, sizeof on) != 0)
                return "setsockopt TCP_FASTOPEN_CONNECT: " + errno_name(errno);
            // connect() returns at once without a SYN; the first write sends SYN + data.
            if (::connect(fd, sa, t.len) != 0 && errno != EINPROGRESS)
                return errno_name(errno);
            if (::send(fd, kData, sizeof kData - 1, MSG_NOSIGNAL) < 0)
                return errno_name(errno);
            return connected(fd);
        }
    }
    return "?";
}

std::string attempt(const std::string& address, std::uint16_t port, Method m) {
    const Target t = target(address, port);
    const int fd = open_socket(t, false);
    if (fd < 0)
        return "socket: " + errno_name(errno);
    std::string r = attempt_on(fd, t, m);
    ::close(fd);
    return r;
}

bool is_connected(const std::string& outcome) {
    return outcome.starts_with("CONNECTED");
}

const std::string kRemoteMapped = std::string("::ffff:") + Topology::kRemote4;

class RouteTest : public FenceTest {
  protected:
    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\n", {"--no-worker"}));
    }

    // as who in the server namespace.
    std::string as(const Credentials& who, const std::function<std::string()>& body) {
        return in_child(&topo_->server, who, body, 15s);
    }

    // bob's attempt must be refused, root's (the control) must connect.
    void expect_route_closed(const std::string& address, std::uint16_t port, Method m) {
        const std::string bob = as(kBob, [&] { return attempt(address, port, m); });
        EXPECT_EQ(bob, "ECONNREFUSED")
            << "bob -> " << address << " port " << port << " by " << name_of(m) << "\n"
            << diagnostics();
        const std::string root = as(kRoot, [&] { return attempt(address, port, m); });
        EXPECT_TRUE(is_connected(root)) << "control: root -> " << address << " port " << port
                                        << " by " << name_of(m) << ": " << root;
        ++root_connections_;
        ++bob_syns_;
    }

    void TearDown() override {
        // Nothing lost: the kernel counted every one of bob's refused SYNs.
        if (topo_ && daemon_ && !IsSkipped()) {
            auto blocked = server_engine().read_blocked(table_);
            ASSERT_TRUE(blocked) << blocked.error().message();
            const std::uint64_t counted =
                blocked->contains(kBob.uid) ? blocked->at(kBob.uid).packets : 0;
            EXPECT_EQ(counted, bob_syns_) << "bob's SYNs counted by the kernel\n" << diagnostics();
        }
        // Nothing but root's controls reached the remote.
        if (remote_smtp_) {
            EXPECT_TRUE(
                wait_until([&] { return remote_smtp_->accepted() == root_connections_; }, 2s))
                << "remote accepted " << remote_smtp_->accepted() << ", root made "
                << root_connections_;
        }
    }

    void enable_client_fast_open() {
        // net.ipv4.tcp_fastopen is per network namespace: 3 = client and server.
        const std::string r = in_child(&topo_->server, std::nullopt, [] {
            std::ofstream f("/proc/sys/net/ipv4/tcp_fastopen");
            f << "3\n";
            f.close();
            return f ? std::string("ok") : std::string("cannot write tcp_fastopen");
        });
        ASSERT_EQ(r, "ok");
    }

    std::uint64_t root_connections_ = 0;
    std::uint64_t bob_syns_ = 0;  // refused SYNs bob's attacks sent
};

TEST_F(RouteTest, Ipv4Ipv6AndMappedIpv6OnEveryGuardedPortAreRefused) {
    for (const std::string& address :
         {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped}) {
        for (const std::uint16_t port : kSmtpPorts)
            expect_route_closed(address, port, Method::Blocking);
    }
}

TEST_F(RouteTest, NonBlockingConnectReportsEconnrefusedThroughSoError) {
    for (const std::string& address :
         {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped})
        expect_route_closed(address, 25, Method::NonBlocking);
}

TEST_F(RouteTest, TcpFastOpenSendtoIsRefused) {
    ASSERT_NO_FATAL_FAILURE(enable_client_fast_open());
    for (const std::string& address :
         {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped})
        expect_route_closed(address, 25, Method::FastOpenSendto);
}

TEST_F(RouteTest, TcpFastOpenConnectOptionIsRefused) {
    ASSERT_NO_FATAL_FAILURE(enable_client_fast_open());
    for (const std::string& address :
         {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped})
        expect_route_closed(address, 587, Method::FastOpenConnect);
}

// Sends fd over a Unix socket.
bool send_fd(int sock, int fd) {
    char byte = 'x';
    iovec iov{&byte, 1};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> ctrl{};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.data();
    msg.msg_controllen = ctrl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return ::sendmsg(sock, &msg, 0) == 1;
}

int receive_fd(int sock) {
    char byte = 0;
    iovec iov{&byte, 1};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> ctrl{};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.data();
    msg.msg_controllen = ctrl.size();
    if (::recvmsg(sock, &msg, 0) != 1)
        return -1;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c == nullptr || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

// bob creates the socket and hands it (SCM_RIGHTS) to a root process that connects
// with it: the socket still carries bob's uid, so the SYN is refused.
TEST_F(RouteTest, ASocketBobCreatedIsRefusedWhenRootConnectsIt) {
    for (const std::string& address :
         {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped}) {
        const std::string outcome = in_child(&topo_->server, std::nullopt, [&]() -> std::string {
            std::array<int, 2> sp{};
            if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sp.data()) != 0)
                return "socketpair failed";
            const Target t = target(address, 25);
            const pid_t pid = ::fork();
            if (pid == 0) {
                ::close(sp[0]);
                if (!become(nullptr, kBob).empty())
                    ::_exit(3);
                const int fd = open_socket(t, false);
                ::_exit(fd >= 0 && send_fd(sp[1], fd) ? 0 : 4);
            }
            ::close(sp[1]);
            const int fd = receive_fd(sp[0]);
            int st = 0;
            (void)::waitpid(pid, &st, 0);
            if (fd < 0)
                return "did not receive bob's socket (child " + describe_status(st) + ")";
            if (::getuid() != 0)
                return "not root";
            return attempt_on(fd, t, Method::Blocking);
        });
        EXPECT_EQ(outcome, "ECONNREFUSED") << "root connecting bob's socket to " << address << "\n"
                                           << diagnostics();
        ++bob_syns_;
        // The same as bob's socket but root's own, so the fd passing itself is not
        // what fails.
        const std::string root = as(kRoot, [&] { return attempt(address, 25, Method::Blocking); });
        EXPECT_TRUE(is_connected(root)) << root;
        ++root_connections_;
    }
}

// The uid at socket() is what counts: a process that is bob when it creates its
// socket and root again (saved uid) when it connects is refused.
TEST_F(RouteTest, UidAtSocketCreationCountsNotTheUidAtConnect) {
    const std::string outcome = in_child(&topo_->server, std::nullopt, [&]() -> std::string {
        // Effective uid bob, saved uid root: we can come back.
        if (::setresuid(kBob.uid, kBob.uid, 0) != 0)
            return "setresuid: " + errno_name(errno);
        const Target t = target(Topology::kRemote4, 25);
        const int fd = open_socket(t, false);
        if (fd < 0)
            return "socket: " + errno_name(errno);
        if (::setresuid(0, 0, 0) != 0)
            return "back to root: " + errno_name(errno);
        return attempt_on(fd, t, Method::Blocking);
    });
    EXPECT_EQ(outcome, "ECONNREFUSED") << diagnostics();
    ++bob_syns_;
}

// Crafting a SYN by hand needs a raw or packet socket: bob has neither.
TEST_F(RouteTest, RawAndPacketSocketsAreNotOpenToBob) {
    const std::string outcome = as(kBob, []() -> std::string {
        std::string r;
        using Kind = std::tuple<int, int, int, const char*>;
        for (const auto& [family, type, proto, what] :
             {Kind{AF_INET, SOCK_RAW, IPPROTO_TCP, "raw IPv4"},
              Kind{AF_INET, SOCK_RAW, IPPROTO_RAW, "raw IPv4 (IP_HDRINCL)"},
              Kind{AF_INET6, SOCK_RAW, IPPROTO_TCP, "raw IPv6"},
              Kind{AF_PACKET, SOCK_RAW, static_cast<int>(htons(0x0003)), "packet"}}) {
            const int fd = ::socket(family, type, proto);
            if (fd >= 0) {
                r += std::string(what) + ": opened! ";
                ::close(fd);
            }
        }
        return r.empty() ? "all refused" : r;
    });
    EXPECT_EQ(outcome, "all refused");
}

// ---- user namespaces --------------------------------------------------------------

// Writes text to a /proc file of this process; "" or what failed.
std::string write_proc(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return path + ": " + errno_name(errno);
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    const int e = errno;
    ::close(fd);
    return ok ? "" : path + ": " + errno_name(e);
}

// As `unshare -U` (map_root false) or `unshare -Ur` (root inside, mapped to bob).
std::string enter_user_namespace(bool map_root, int extra_flags = 0) {
    const uid_t uid = ::getuid();
    const gid_t gid = ::getgid();
    if (::unshare(CLONE_NEWUSER | extra_flags) != 0)
        return "unshare: " + errno_name(errno);
    if (map_root) {
        // After setresuid() the process is not dumpable and its /proc/self files belong
        // to root; unshare(1) runs as bob from exec and never meets this.
        (void)::prctl(PR_SET_DUMPABLE, 1);
        for (const auto& [path, text] :
             {std::pair<std::string, std::string>{"/proc/self/setgroups", "deny"},
              {"/proc/self/uid_map", "0 " + std::to_string(uid) + " 1\n"},
              {"/proc/self/gid_map", "0 " + std::to_string(gid) + " 1\n"}}) {
            if (auto e = write_proc(path, text); !e.empty())
                return e;
        }
        if (::getuid() != 0)
            return "not root inside the user namespace";
    }
    return {};
}

// Why unprivileged user namespaces cannot be made here, or "".
std::string userns_unavailable(const Netns& ns) {
    return in_child(&ns, kBob, [] {
        const std::string e = enter_user_namespace(false);
        return e.empty() ? std::string()
                         : "bob cannot create a user namespace (" + e +
                               "; see user.max_user_namespaces, "
                               "kernel.unprivileged_userns_clone)";
    });
}

class UserNamespaceTest : public RouteTest {};

TEST_F(UserNamespaceTest, RootInsideAUserNamespaceIsStillBobToTheFence) {
    if (auto why = userns_unavailable(topo_->server); !why.empty())
        GTEST_SKIP() << why;
    for (const bool map_root : {true, false}) {
        for (const std::string& address :
             {std::string(Topology::kRemote4), std::string(Topology::kRemote6), kRemoteMapped}) {
            const std::string outcome = as(kBob, [&]() -> std::string {
                if (auto e = enter_user_namespace(map_root); !e.empty())
                    return "harness: " + e;
                return attempt(address, 25, Method::Blocking);
            });
            EXPECT_EQ(outcome, "ECONNREFUSED")
                << (map_root ? "unshare -Ur" : "unshare -U") << " as bob -> " << address << "\n"
                << diagnostics();
            ++bob_syns_;
        }
    }
    // Root inside the user namespace has CAP_NET_RAW there, but the network namespace
    // belongs to the initial user namespace: still no raw socket.
    const std::string raw = as(kBob, []() -> std::string {
        if (auto e = enter_user_namespace(true); !e.empty())
            return "harness: " + e;
        const int fd = ::socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
        if (fd >= 0) {
            ::close(fd);
            return "raw socket opened";
        }
        return errno_name(errno);
    });
    EXPECT_EQ(raw, "EPERM");
}

// The same with the unshare(1) tool and bash's /dev/tcp, as an attacker would type it.
TEST_F(UserNamespaceTest, UnshareToolAndBashDevTcpAreRefused) {
    if (auto why = userns_unavailable(topo_->server); !why.empty())
        GTEST_SKIP() << why;
    for (const char* flag : {"-Ur", "-U"}) {
        const RunResult r = run(topo_->server,
                                {"unshare", flag, "bash", "-c",
                                 std::string("id -u; exec 3<>/dev/tcp/") + Topology::kRemote4 +
                                     "/25 && echo CONNECTED"},
                                kBob);
        EXPECT_NE(r.exit_code, 0) << r.describe();
        EXPECT_NE(r.out.find(flag == std::string("-Ur") ? "0\n" : "65534\n"), std::string::npos)
            << r.describe();
        EXPECT_NE(r.err.find("Connection refused"), std::string::npos) << r.describe();
        EXPECT_EQ(r.out.find("CONNECTED"), std::string::npos) << r.describe();
        ++bob_syns_;
    }
}

// A user namespace with its own network namespace has no way out at all.
TEST_F(UserNamespaceTest, AnOwnNetworkNamespaceHasNoRouteOut) {
    if (auto why = userns_unavailable(topo_->server); !why.empty())
        GTEST_SKIP() << why;
    const std::string outcome = as(kBob, []() -> std::string {
        if (auto e = enter_user_namespace(true, CLONE_NEWNET); !e.empty())
            return "harness: " + e;
        return attempt(Topology::kRemote4, 25, Method::Blocking);
    });
    EXPECT_EQ(outcome, "ENETUNREACH");
}

}  // namespace
}  // namespace smtpfence::itest
