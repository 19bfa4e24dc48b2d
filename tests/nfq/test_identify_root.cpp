// Root tests of the "who is behind this SYN" chain against the real kernel: a process
// of uid 4242 connects to port 25 in a network namespace whose nftables rule drops the
// SYN, so its socket sits in SYN_SENT as it does while its SYN waits in the NFQUEUE;
// find_socket must find that socket through sock_diag and find_process its process.
//
// The test process itself enters a new network namespace for each test (sock_diag
// only sees the sockets of the caller's namespace) and goes back with setns afterwards.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <utility>

#include "common/error.h"
#include "common/fd.h"
#include "nfq/process.h"
#include "tests/support/child.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

constexpr std::uint32_t kUid = 4242;
constexpr const char* kDevice = "sf0";

// The rule that keeps a connect() in SYN_SENT: the SYN never leaves the host.
constexpr const char* kRuleset = R"(table inet sf_nfq_test {
  chain out {
    type filter hook output priority filter; policy accept;
    tcp dport 25 tcp flags & (syn | ack) == syn counter drop
  }
}
)";

// /proc/self/cmdline as the process scan reports it: NULs as spaces, no trailing one.
std::string own_cmdline() {
    std::string text = testing::read_file("/proc/self/cmdline");
    while (!text.empty() && text.back() == '\0')
        text.pop_back();
    for (char& c : text) {
        if (c == '\0')
            c = ' ';
    }
    return text.size() > kMaxCmdline ? text.substr(0, kMaxCmdline) : text;
}

int run(const std::string& command) {
    // system() changes the process's signal dispositions while it waits, which is
    // unsafe with other threads; this test binary runs one thread.
    // NOLINTNEXTLINE(concurrency-mt-unsafe)
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

struct ConnectOptions {
    int socket_family = AF_INET;
    std::string remote;  // numeric address, as for inet_pton(socket_family)
    std::string cwd;
    bool bind_to_device = false;
    bool non_dumpable = false;
};

ConnectOptions to(int socket_family, std::string remote) {
    ConnectOptions options;
    options.socket_family = socket_family;
    options.remote = std::move(remote);
    return options;
}

// What the connecting child reports once its SYN is on its way.
struct ChildReport {
    int failed_step = 0;  // 0: all went well
    int error = 0;
    int fd = -1;
    sockaddr_storage local{};
};

// A process of uid kUid holding a socket in SYN_SENT until release() or destruction.
class Connector {
  public:
    Connector() = default;
    Connector(const Connector&) = delete;
    Connector& operator=(const Connector&) = delete;
    ~Connector() { release(); }

    // Returns "" on success, else what went wrong.
    std::string start(const ConnectOptions& options) {
        int report_pipe[2];
        int release_pipe[2];
        if (pipe2(report_pipe, O_CLOEXEC) != 0 || pipe2(release_pipe, O_CLOEXEC) != 0)
            return "pipe: " + errno_text(errno);
        auto child = testing::spawn([&]() -> int {
            ::close(report_pipe[0]);
            ::close(release_pipe[1]);
            run_child(options, report_pipe[1], release_pipe[0]);
        });
        if (!child)
            return child.error().message();
        child_ = std::move(*child);
        ::close(report_pipe[1]);
        ::close(release_pipe[0]);
        release_.reset(release_pipe[1]);
        const UniqueFd report_fd(report_pipe[0]);
        ChildReport report;
        if (::read(report_fd.get(), &report, sizeof report) != static_cast<ssize_t>(sizeof report))
            return "the child died before reporting";
        if (report.failed_step != 0) {
            return "child step " + std::to_string(report.failed_step) + ": " +
                   errno_text(report.error);
        }
        fd_ = report.fd;
        local_ = report.local;
        return {};
    }

    // The flow of the SYN this socket sends, as parse_tcp_packet would give it. A
    // dual-stack socket connecting to ::ffff:a.b.c.d sends an IPv4 packet.
    [[nodiscard]] Flow flow(const ConnectOptions& options) const {
        Flow flow;
        flow.dport = 25;
        flow.syn = true;
        if (local_.ss_family == AF_INET) {
            const auto& local = reinterpret_cast<const sockaddr_in&>(local_);
            flow.family = AF_INET;
            std::memcpy(flow.src.data(), &local.sin_addr, 4);
            flow.sport = ntohs(local.sin_port);
            inet_pton(AF_INET, options.remote.c_str(), flow.dst.data());
            return flow;
        }
        const auto& local = reinterpret_cast<const sockaddr_in6&>(local_);
        flow.sport = ntohs(local.sin6_port);
        in6_addr remote{};
        inet_pton(AF_INET6, options.remote.c_str(), &remote);
        if (IN6_IS_ADDR_V4MAPPED(&local.sin6_addr)) {
            flow.family = AF_INET;
            std::memcpy(flow.src.data(), local.sin6_addr.s6_addr + 12, 4);
            std::memcpy(flow.dst.data(), remote.s6_addr + 12, 4);
        } else {
            flow.family = AF_INET6;
            std::memcpy(flow.src.data(), local.sin6_addr.s6_addr, 16);
            std::memcpy(flow.dst.data(), remote.s6_addr, 16);
        }
        return flow;
    }

    [[nodiscard]] pid_t pid() const { return child_.pid(); }
    [[nodiscard]] int fd() const { return fd_; }

    // Lets the child exit (closing its socket) and reaps it.
    void release() {
        release_.reset();
        if (child_.valid())
            (void)child_.wait();
    }

  private:
    [[noreturn]] static void run_child(const ConnectOptions& options, int report_fd,
                                       int release_fd) {
        ChildReport report;
        const auto step = [&](int number, bool ok) {
            if (ok)
                return;
            report.failed_step = number;
            report.error = errno;
            (void)!::write(report_fd, &report, sizeof report);
            _exit(1);
        };
        step(1, chdir(options.cwd.c_str()) == 0);
        step(2, testing::become({"", kUid, kUid, {kUid}}));
        if (options.non_dumpable)
            step(5, prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0);
        const int fd = socket(options.socket_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
        step(6, fd >= 0);
        if (options.bind_to_device) {
            step(7, setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, kDevice,
                               static_cast<socklen_t>(std::strlen(kDevice))) == 0);
        }
        sockaddr_storage remote{};
        socklen_t remote_length = 0;
        if (options.socket_family == AF_INET) {
            auto& sin = reinterpret_cast<sockaddr_in&>(remote);
            sin.sin_family = AF_INET;
            sin.sin_port = htons(25);
            step(8, inet_pton(AF_INET, options.remote.c_str(), &sin.sin_addr) == 1);
            remote_length = sizeof sin;
        } else {
            const int off = 0;
            step(9, setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0);
            auto& sin6 = reinterpret_cast<sockaddr_in6&>(remote);
            sin6.sin6_family = AF_INET6;
            sin6.sin6_port = htons(25);
            step(8, inet_pton(AF_INET6, options.remote.c_str(), &sin6.sin6_addr) == 1);
            remote_length = sizeof sin6;
        }
        const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&remote), remote_length);
        step(10, rc != 0 && errno == EINPROGRESS);
        socklen_t local_length = sizeof report.local;
        step(11, getsockname(fd, reinterpret_cast<sockaddr*>(&report.local), &local_length) == 0);
        report.fd = fd;
        step(12, ::write(report_fd, &report, sizeof report) == static_cast<ssize_t>(sizeof report));
        char byte = 0;
        while (::read(release_fd, &byte, 1) < 0 && errno == EINTR) {
        }
        _exit(0);
    }

    UniqueFd release_;
    testing::Child child_;
    int fd_ = -1;
    sockaddr_storage local_{};
};

class IdentifyRoot : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::geteuid() != 0)
            GTEST_SKIP() << "needs root (network namespaces, nftables, setuid)";
        if (run("command -v ip >/dev/null && command -v nft >/dev/null") != 0)
            GTEST_SKIP() << "needs ip(8) and nft(8)";
        auto ns = testing::Netns::create_anonymous();
        if (!ns)
            GTEST_SKIP() << "no network namespaces: " << ns.error().message();
        auto entry = testing::NetnsEntry::enter(*ns);
        ASSERT_TRUE(entry) << entry.error().message();
        in_netns_.emplace(std::move(*entry));

        // sf0 <-> sf1; the addresses are on sf0. 192.0.2.25 and 2001:db8::25 never
        // answer: the SYN is dropped in the output hook before it is sent.
        const std::string setup =
            "set -e; exec >/dev/null 2>&1;"
            "ip link set lo up;"
            "ip link add sf0 type veth peer name sf1;"
            "ip addr add 192.0.2.1/24 dev sf0;"
            "ip -6 addr add 2001:db8::1/64 dev sf0 nodad;"
            "ip link set sf0 up; ip link set sf1 up;"
            "ip route add default via 192.0.2.254 dev sf0;"
            "ip -6 route add default via 2001:db8::fe dev sf0";
        ASSERT_EQ(run("sh -c '" + setup + "'"), 0) << "network setup failed";

        auto tmp = testing::TempDir::create(
            {"sf-nfq-root", std::filesystem::temp_directory_path().string(), 0700});
        ASSERT_TRUE(tmp) << tmp.error().message();
        tmp_.emplace(std::move(*tmp));
        dir_ = std::filesystem::canonical(tmp_->path());
        ASSERT_EQ(::chown(dir_.c_str(), kUid, kUid), 0);
        std::ofstream(dir_ / "ruleset.nft") << kRuleset;
        ASSERT_EQ(run("nft -f " + (dir_ / "ruleset.nft").string()), 0) << "nft -f failed";
    }

    // The whole chain for one connecting process: socket found with its uid and inode,
    // process found with its exe, cwd and cmdline; both gone once the process exits.
    void check_identified(ConnectOptions options) {
        options.cwd = dir_.string();
        Connector connector;
        const std::string started = connector.start(options);
        ASSERT_EQ(started, "");
        const Flow flow = connector.flow(options);
        SCOPED_TRACE(flow.src_text() + ":" + std::to_string(flow.sport) + " -> " + flow.dst_text() +
                     ":" + std::to_string(flow.dport));

        const auto socket = find_socket(flow);
        ASSERT_TRUE(socket) << socket.error().message();
        ASSERT_TRUE(socket->has_value()) << "sock_diag did not find the SYN_SENT socket";
        const SocketId id = **socket;
        EXPECT_EQ(id.uid, kUid);
        // The inode is the one the child's descriptor names.
        const std::string link = std::filesystem::read_symlink(
            "/proc/" + std::to_string(connector.pid()) + "/fd/" + std::to_string(connector.fd()));
        EXPECT_EQ(link, "socket:[" + std::to_string(id.inode) + "]");

        // Each way on its own: the exact lookup cannot see a device-bound socket.
        const auto exact = find_socket_by(flow, SocketLookup::exact);
        ASSERT_TRUE(exact) << exact.error().message();
        if (options.bind_to_device) {
            EXPECT_FALSE(exact->has_value()) << "the exact lookup sees device-bound sockets now";
        } else {
            ASSERT_TRUE(exact->has_value()) << "the exact lookup did not find the socket";
            EXPECT_EQ((*exact)->inode, id.inode);
        }
        const auto dumped = find_socket_by(flow, SocketLookup::dump);
        ASSERT_TRUE(dumped) << dumped.error().message();
        ASSERT_TRUE(dumped->has_value()) << "the SYN_SENT dump did not list the socket";
        EXPECT_EQ((*dumped)->inode, id.inode);
        EXPECT_EQ((*dumped)->uid, kUid);

        const auto process = find_process(id.inode, id.uid);
        ASSERT_TRUE(process) << "no process holds socket:[" << id.inode << "]";
        EXPECT_EQ(process->pid, connector.pid());
        EXPECT_EQ(process->exe, std::filesystem::read_symlink("/proc/self/exe").string());
        EXPECT_EQ(process->cwd, dir_.string());
        EXPECT_EQ(process->cmdline, own_cmdline());
        EXPECT_EQ(process->truncated_cmdline, own_cmdline().size() == kMaxCmdline);

        // Someone else's uid: the process is not searched for among its processes.
        EXPECT_FALSE(find_process(id.inode, kUid + 1)) << "found under the wrong uid";

        connector.release();
        const auto after = find_socket(flow);
        ASSERT_TRUE(after) << after.error().message();
        EXPECT_FALSE(after->has_value()) << "socket still found after its process exited";
        const auto dumped_after = find_socket_by(flow, SocketLookup::dump);
        ASSERT_TRUE(dumped_after) << dumped_after.error().message();
        EXPECT_FALSE(dumped_after->has_value());
        EXPECT_FALSE(find_process(id.inode, kUid));
    }

    // Destroyed in reverse: the directory first, then the test process leaves the
    // namespace, which drops its last reference: veth and ruleset go with it.
    std::optional<testing::NetnsEntry> in_netns_;
    std::optional<testing::TempDir> tmp_;
    std::filesystem::path dir_;
};

TEST_F(IdentifyRoot, Ipv4) {
    check_identified(to(AF_INET, "192.0.2.25"));
}

TEST_F(IdentifyRoot, Ipv6) {
    check_identified(to(AF_INET6, "2001:db8::25"));
}

// A dual-stack AF_INET6 socket connecting to ::ffff:192.0.2.25 sends IPv4 packets; the
// SYN's flow is IPv4 while the socket is listed in the AF_INET6 table.
TEST_F(IdentifyRoot, Ipv4MappedOnDualStackSocket) {
    check_identified(to(AF_INET6, "::ffff:192.0.2.25"));
}

// The exact lookup does not see a socket bound to a device (SO_BINDTODEVICE needs no
// privilege on an unbound socket); the dump fallback does.
TEST_F(IdentifyRoot, SocketBoundToDevice) {
    for (ConnectOptions options : {to(AF_INET, "192.0.2.25"), to(AF_INET6, "2001:db8::25")}) {
        options.bind_to_device = true;
        check_identified(options);
    }
}

// prctl(PR_SET_DUMPABLE, 0) makes the files in /proc/PID root's (fd/ included), but
// not /proc/PID itself: the process is still found among its uid's.
TEST_F(IdentifyRoot, NonDumpableProcess) {
    ConnectOptions options = to(AF_INET, "192.0.2.25");
    options.non_dumpable = true;
    options.cwd = dir_.string();
    {
        Connector probe;
        ASSERT_EQ(probe.start(options), "");
        const std::string dir = "/proc/" + std::to_string(probe.pid());
        struct stat st {};
        ASSERT_EQ(::stat(dir.c_str(), &st), 0);
        EXPECT_EQ(st.st_uid, kUid);
        ASSERT_EQ(::stat((dir + "/fd").c_str(), &st), 0);
        EXPECT_EQ(st.st_uid, 0U) << "a non-dumpable process's /proc/PID/fd should be root's";
    }
    check_identified(options);
}

TEST_F(IdentifyRoot, NoSocketForAnUnusedFlow) {
    Flow flow;
    flow.family = AF_INET;
    flow.src = {192, 0, 2, 1};
    flow.dst = {192, 0, 2, 25};
    flow.sport = 1;
    flow.dport = 25;
    const auto found = find_socket(flow);
    ASSERT_TRUE(found) << found.error().message();
    EXPECT_FALSE(found->has_value());
    flow.family = AF_INET6;
    inet_pton(AF_INET6, "2001:db8::1", flow.src.data());
    inet_pton(AF_INET6, "2001:db8::25", flow.dst.data());
    const auto found6 = find_socket(flow);
    ASSERT_TRUE(found6) << found6.error().message();
    EXPECT_FALSE(found6->has_value());
}

// A listener on the SYN's local port must not be taken for the connecting socket (the
// kernel's exact lookup falls back to listeners, as it would for an incoming packet).
TEST_F(IdentifyRoot, ListenerOnTheLocalPortIsNotTheSocket) {
    const UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listener.valid());
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(40025);
    ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address),
              0);
    ASSERT_EQ(::listen(listener.get(), 1), 0);
    Flow flow;
    flow.family = AF_INET;
    flow.src = {192, 0, 2, 1};
    flow.dst = {192, 0, 2, 25};
    flow.sport = 40025;
    flow.dport = 25;
    const auto found = find_socket(flow);
    ASSERT_TRUE(found) << found.error().message();
    EXPECT_FALSE(found->has_value());
}

}  // namespace
}  // namespace smtpfence::nfq
