// The control socket without root: a ControlServer on a socket in a temporary directory,
// its loop on a thread of its own as the daemon runs it, and clients that behave (ctl::call)
// or do not (raw sockets that send garbage, too much, or nothing at all).
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "ctl/control_server.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::ctl {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::TempDir;

constexpr auto kCallTimeout = 5s;

// Runs the server's loop as smtpfenced's main loop does (add_pollfds, poll, process),
// on its own thread, until destroyed. The handler runs on that thread.
class ServerLoop {
  public:
    ServerLoop(ControlServer& server, ControlServer::Handler handler)
        : server_(server),
          handler_(std::move(handler)),
          wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
          thread_([this] { run(); }) {}
    ServerLoop(const ServerLoop&) = delete;
    ServerLoop& operator=(const ServerLoop&) = delete;
    ~ServerLoop() { stop(); }

    // Joins the loop: afterwards the server's counters may be read.
    void stop() {
        if (!thread_.joinable())
            return;
        stop_ = true;
        const std::uint64_t one = 1;
        EXPECT_EQ(::write(wake_.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
        thread_.join();
    }

  private:
    void run() {
        while (!stop_) {
            std::vector<pollfd> fds;
            server_.add_pollfds(fds);
            fds.push_back({wake_.get(), POLLIN, 0});
            if (::poll(fds.data(), fds.size(), server_.next_deadline_ms()) < 0) {
                if (errno == EINTR)
                    continue;
                ADD_FAILURE() << "poll: " << errno_text(errno);
                return;
            }
            server_.process(fds, handler_);
        }
    }

    ControlServer& server_;
    ControlServer::Handler handler_;
    UniqueFd wake_;
    std::atomic<bool> stop_{false};
    std::thread thread_;  // last: it starts once everything it uses exists
};

// A client that does what the test says, byte for byte.
UniqueFd connect_raw(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        ADD_FAILURE() << "connect " << path << ": " << errno_text(errno);
        return {};
    }
    const timeval tv{5, 0};  // a test that goes wrong fails instead of hanging
    EXPECT_EQ(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    EXPECT_EQ(::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    return fd;
}

void send_all(int fd, const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
        const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            ADD_FAILURE() << "send: " << errno_text(errno);
            return;
        }
        off += static_cast<std::size_t>(n);
    }
}

struct Received {
    std::string data;
    int error = 0;  // errno of the recv that ended the stream, 0 for an orderly close
};

Received read_until_closed(int fd) {
    Received r;
    std::vector<char> buf(65536);
    while (true) {
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r.error = errno;
            return r;
        }
        if (n == 0)
            return r;
        r.data.append(buf.data(), static_cast<std::size_t>(n));
    }
}

using CodeAndMessage = std::pair<std::string, std::string>;

// {"code", "message"} of an error response line (with or without its '\n').
CodeAndMessage error_of(const std::string& line) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("error")) {
        ADD_FAILURE() << "not an error response: " << line;
        return {};
    }
    EXPECT_EQ(j["v"], 1) << line;
    EXPECT_EQ(j["ok"], false) << line;
    return {j["error"]["code"].get<std::string>(), j["error"]["message"].get<std::string>()};
}

Request request(Command command, std::optional<std::string> user = std::nullopt) {
    Request r;
    r.command = command;
    r.user = std::move(user);
    return r;
}

mode_t mode_of(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0)
        return 0;
    return st.st_mode;
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

// A socket file that nobody listens on, as a daemon killed with SIGKILL leaves behind.
void make_stale_socket(const std::string& path) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(fd.valid()) << errno_text(errno);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0)
        << errno_text(errno);
}

// Peers that the access policy lets through whatever uid the test runs as.
AccessPolicy open_to_me() {
    return AccessPolicy{.admin_gid = ::getgid(), .read_all = false};
}

class ControlServerTest : public ::testing::Test {
  protected:
    TempDir dir_;
    // A directory that does not exist yet: listen() creates it.
    const std::string path_ = dir_.path() + "/run/smtpfence/control.sock";
};

TEST_F(ControlServerTest, GoodRequestGetsTheHandlersAnswer) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request& r, const Peer&, int) -> std::optional<std::string> {
        ++calls;
        return encode_ok({{"cmd", std::string(to_string(r.command))}, {"user", r.user.value()}});
    });

    auto reply = call(path_, request(Command::Check, "alice"), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"cmd":"check","user":"alice"},"v":1})");

    reply = call(path_, request(Command::Check, "bob"), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"cmd":"check","user":"bob"},"v":1})");

    loop.stop();
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(server->requests(), 2U);
    EXPECT_EQ(server->rejected(), 0U);
}

TEST_F(ControlServerTest, HandlerSeesThePeersKernelCredentials) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::mutex mutex;
    std::optional<Peer> seen;
    ServerLoop loop(*server, [&](const Request&, const Peer& peer, int) {
        const std::lock_guard lock(mutex);
        seen = peer;
        return std::optional<std::string>(encode_ok(json::object()));
    });
    auto reply = call(path_, request(Command::Status), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    loop.stop();

    ASSERT_TRUE(seen.has_value());
    EXPECT_EQ(seen->pid, ::getpid());
    EXPECT_EQ(seen->uid, ::getuid());
    EXPECT_EQ(seen->gid, ::getgid());
    std::vector<gid_t> groups(static_cast<std::size_t>(::getgroups(0, nullptr)));
    ASSERT_EQ(::getgroups(static_cast<int>(groups.size()), groups.data()),
              static_cast<int>(groups.size()));
    std::vector<gid_t> peer_groups = seen->groups;
    std::ranges::sort(groups);
    std::ranges::sort(peer_groups);
    EXPECT_EQ(peer_groups, groups);
}

TEST_F(ControlServerTest, MalformedRequestsNeverReachTheHandler) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok(json::object()));
    });

    const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
        {"not json\n", "bad_request", "request is not valid JSON"},
        {"{\"v\":2,\"cmd\":\"status\"}\n", "unsupported_version",
         "protocol version 2 is not supported; this daemon speaks 1"},
        {"{\"v\":1,\"cmd\":\"shutdown\"}\n", "unknown_command", "unknown command \"shutdown\""},
        {"{\"v\":1,\"cmd\":\"allow\",\"user\":\"-x\"}\n", "invalid_argument",
         "user name \"-x\": starts with '-'"},
    };
    for (const auto& [line, code, message] : cases) {
        UniqueFd client = connect_raw(path_);
        send_all(client.get(), line);
        const Received r = read_until_closed(client.get());
        EXPECT_EQ(r.error, 0) << errno_text(r.error);
        ASSERT_FALSE(r.data.empty()) << line;
        EXPECT_EQ(r.data.back(), '\n');
        EXPECT_EQ(std::ranges::count(r.data, '\n'), 1) << r.data;
        EXPECT_EQ(error_of(r.data), CodeAndMessage(code, message)) << line;
    }
    loop.stop();
    EXPECT_EQ(calls, 0);
    EXPECT_EQ(server->requests(), cases.size());
    EXPECT_EQ(server->rejected(), cases.size());
}

TEST_F(ControlServerTest, ARequestMayEndWithShutdownInsteadOfANewline) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    ServerLoop loop(*server, [&](const Request& r, const Peer&, int) {
        return std::optional<std::string>(encode_ok({{"cmd", std::string(to_string(r.command))}}));
    });
    UniqueFd client = connect_raw(path_);
    send_all(client.get(), R"({"v":1,"cmd":"list"})");
    ASSERT_EQ(::shutdown(client.get(), SHUT_WR), 0);
    const Received r = read_until_closed(client.get());
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.data, "{\"ok\":true,\"result\":{\"cmd\":\"list\"},\"v\":1}\n");
}

TEST_F(ControlServerTest, OverlongRequestWithoutNewlineGetsAnError) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok(json::object()));
    });
    UniqueFd client = connect_raw(path_);
    // More than 64 KiB and never a newline: the server answers without waiting for one.
    send_all(client.get(), std::string(kMaxRequestBytes + 4096, 'x'));
    const Received r = read_until_closed(client.get());
    // The server closes with bytes of ours unread, so the end may be a reset: the
    // answer before it is what counts.
    ASSERT_FALSE(r.data.empty()) << errno_text(r.error);
    EXPECT_EQ(r.data,
              "{\"error\":{\"code\":\"bad_request\",\"message\":\"request longer than 65536 bytes "
              "without a newline\"},\"ok\":false,\"v\":1}\n");
    loop.stop();
    EXPECT_EQ(calls, 0);
    EXPECT_EQ(server->rejected(), 1U);
}

TEST_F(ControlServerTest, CallReturnsTheErrorForAnOverlongRequest) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok(json::object()));
    });
    // The client does not validate: a 70 KB name makes a line the server cuts short.
    auto reply = call(path_, request(Command::Check, std::string(70000, 'n')), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(error_of(*reply), CodeAndMessage("bad_request",
                                               "request longer than 65536 bytes without a "
                                               "newline"));
    loop.stop();
    EXPECT_EQ(calls, 0);
}

TEST_F(ControlServerTest, SilentClientsDoNotBlockOthers) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        return std::optional<std::string>(encode_ok({{"answer", 42}}));
    });
    UniqueFd silent = connect_raw(path_);
    UniqueFd half = connect_raw(path_);
    send_all(half.get(), R"({"v":1,"cmd":)");  // and then nothing more

    const auto start = std::chrono::steady_clock::now();
    auto reply = call(path_, request(Command::Version), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"answer":42},"v":1})");
    // Far below the 10 s a silent client may hold its slot.
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST_F(ControlServerTest, HandlerReturningNulloptClosesTheConnection) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) -> std::optional<std::string> {
        ++calls;
        return std::nullopt;
    });
    auto reply = call(path_, request(Command::Reload), kCallTimeout);
    ASSERT_FALSE(reply) << *reply;
    EXPECT_FALSE(reply.error().unreachable);
    EXPECT_EQ(reply.error().message, "smtpfenced closed the connection without a complete answer");
    loop.stop();
    EXPECT_EQ(calls, 1);
}

TEST_F(ControlServerTest, HandlerMayAnswerLaterOnItsOwnCopyOfTheSocket) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    std::optional<std::thread> elsewhere;  // stands in for the child process of `test`
    ServerLoop loop(
        *server, [&](const Request&, const Peer&, int fd) -> std::optional<std::string> {
            const int copy = ::dup(fd);
            elsewhere.emplace([copy] {
                std::this_thread::sleep_for(100ms);  // the server has closed its copy by now
                send_all(copy, encode_ok({{"connected", false}}));
                ::close(copy);
            });
            return std::nullopt;
        });
    auto reply = call(path_, request(Command::Status), kCallTimeout);
    loop.stop();
    ASSERT_TRUE(elsewhere.has_value());
    elsewhere->join();
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"connected":false},"v":1})");
}

TEST_F(ControlServerTest, BusyWhenEveryClientSlotIsTaken) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        return std::optional<std::string>(encode_ok(json::object()));
    });
    std::vector<UniqueFd> silent;
    silent.reserve(ControlServer::kMaxClients);
    for (std::size_t i = 0; i < ControlServer::kMaxClients; ++i)
        silent.push_back(connect_raw(path_));
    // Accepted after the others (the backlog is a queue), so it finds every slot taken.
    UniqueFd extra = connect_raw(path_);
    const Received r = read_until_closed(extra.get());
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.data,
              "{\"error\":{\"code\":\"failed\",\"message\":\"the daemon is busy with 32 other "
              "clients; try again\"},\"ok\":false,\"v\":1}\n");

    // One silent client leaves: its slot is free again once the server saw it go.
    silent.pop_back();
    std::string last;
    for (int attempt = 0; attempt < 100; ++attempt) {
        auto reply = call(path_, request(Command::Status), kCallTimeout);
        last = reply ? *reply : reply.error().message;
        if (last == R"({"ok":true,"result":{},"v":1})")
            break;
        std::this_thread::sleep_for(20ms);
    }
    EXPECT_EQ(last, R"({"ok":true,"result":{},"v":1})");
}

// A well-behaved client sends its request at once; when the daemon is busy it may read
// the busy answer before or after the request arrived, or answer before call() sent it:
// call() must return that answer all the same, not a reset or a broken pipe.
TEST_F(ControlServerTest, CallGetsTheBusyAnswer) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        return std::optional<std::string>(encode_ok(json::object()));
    });
    std::vector<UniqueFd> silent;
    silent.reserve(ControlServer::kMaxClients);
    for (std::size_t i = 0; i < ControlServer::kMaxClients; ++i)
        silent.push_back(connect_raw(path_));
    for (int i = 0; i < 20; ++i) {
        auto reply = call(path_, request(Command::Status), kCallTimeout);
        ASSERT_TRUE(reply) << "call " << i << ": " << reply.error().message;
        EXPECT_EQ(error_of(*reply),
                  CodeAndMessage("failed", "the daemon is busy with 32 other clients; try again"));
    }
}

// The loop driven by hand, on this thread: accept, deadline, request, answer.
TEST_F(ControlServerTest, SingleThreadedLoopAndClientDeadline) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    int calls = 0;
    const ControlServer::Handler handler = [&](const Request& r, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok({{"user", r.user.value_or("")}}));
    };
    auto pump = [&] {
        std::vector<pollfd> fds;
        server->add_pollfds(fds);
        ASSERT_GE(::poll(fds.data(), fds.size(), 1000), 1);
        server->process(fds, handler);
    };
    EXPECT_EQ(server->next_deadline_ms(), -1);

    UniqueFd client = connect_raw(path_);
    pump();  // accepts
    const int deadline = server->next_deadline_ms();
    EXPECT_GT(deadline, 9000);
    EXPECT_LE(deadline, 10001);

    send_all(client.get(), "{\"v\":1,\"cmd\":\"check\",\"user\":\"dave\"}\n");
    pump();  // reads, answers, closes
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(server->next_deadline_ms(), -1);
    const Received r = read_until_closed(client.get());
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.data, "{\"ok\":true,\"result\":{\"user\":\"dave\"},\"v\":1}\n");
}

TEST_F(ControlServerTest, ListenCreatesTheDirectoryAndAWorldWritableSocket) {
    {
        auto server = ControlServer::listen(path_);
        ASSERT_TRUE(server) << server.error().message();
        EXPECT_EQ(server->path(), path_);
        const mode_t mode = mode_of(path_);
        EXPECT_TRUE(S_ISSOCK(mode));
        EXPECT_EQ(mode & 07777, 0666U);
        EXPECT_TRUE(std::filesystem::is_directory(dir_.path() + "/run/smtpfence"));

        // Moving the server keeps the socket; only the last owner removes it.
        ControlServer moved = std::move(*server);
        server = fail(0, "moved");
        EXPECT_TRUE(exists(path_));
    }
    EXPECT_FALSE(exists(path_));
}

TEST_F(ControlServerTest, ListenFailsWhereALiveServerAnswers) {
    auto first = ControlServer::listen(path_);
    ASSERT_TRUE(first) << first.error().message();
    first->set_access(open_to_me());

    auto second = ControlServer::listen(path_);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().code, EADDRINUSE);
    EXPECT_EQ(second.error().message(),
              "control socket " + path_ +
                  ": Address already in use (another smtpfenced answers there; stop it first)");

    // The refused one left the live one's socket alone.
    ServerLoop loop(*first, [&](const Request&, const Peer&, int) {
        return std::optional<std::string>(encode_ok({{"still", "here"}}));
    });
    auto reply = call(path_, request(Command::Version), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"still":"here"},"v":1})");
}

TEST_F(ControlServerTest, ListenReplacesAStaleSocket) {
    std::filesystem::create_directories(dir_.path() + "/run/smtpfence");
    make_stale_socket(path_);
    ASSERT_TRUE(S_ISSOCK(mode_of(path_)));
    auto stale = call(path_, request(Command::Version), kCallTimeout);
    ASSERT_FALSE(stale);
    EXPECT_TRUE(stale.error().unreachable) << stale.error().message;

    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(open_to_me());
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        return std::optional<std::string>(encode_ok({{"fresh", true}}));
    });
    auto reply = call(path_, request(Command::Version), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"fresh":true},"v":1})");
}

TEST_F(ControlServerTest, ListenRefusesARegularFile) {
    const std::string path = dir_.write("control.sock", "not a socket\n");
    auto server = ControlServer::listen(path);
    ASSERT_FALSE(server);
    EXPECT_EQ(server.error().code, EEXIST);
    EXPECT_EQ(server.error().message(),
              "control socket " + path + ": File exists (exists and is not a socket)");
    std::ifstream in(path);
    std::stringstream content;
    content << in.rdbuf();
    EXPECT_EQ(content.str(), "not a socket\n");
}

TEST_F(ControlServerTest, ListenRefusesAPathTooLongForSockaddrUn) {
    const std::string path = dir_.path() + "/" + std::string(120, 'p');
    auto server = ControlServer::listen(path);
    ASSERT_FALSE(server);
    EXPECT_EQ(server.error().code, ENAMETOOLONG);
    EXPECT_EQ(server.error().message(),
              "control socket " + path + ": File name too long (the path must be 1-107 bytes)");
    EXPECT_FALSE(exists(path));
}

TEST_F(ControlServerTest, CallWithoutADaemonIsUnreachable) {
    auto reply = call(path_, request(Command::Status), kCallTimeout);
    ASSERT_FALSE(reply);
    EXPECT_TRUE(reply.error().unreachable);
    EXPECT_EQ(reply.error().message,
              "cannot reach smtpfenced at " + path_ +
                  ": No such file or directory (is the daemon running? systemctl status "
                  "smtpfenced)");
}

TEST_F(ControlServerTest, CallTimesOutWhenNobodyAnswers) {
    // Listening, never accepting: connect and send succeed, the answer never comes.
    const std::string path = dir_.path() + "/mute.sock";
    UniqueFd mute(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(mute.valid()) << errno_text(errno);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(mute.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(mute.get(), 4), 0);

    const auto start = std::chrono::steady_clock::now();
    auto reply = call(path, request(Command::Status), 200ms);
    const auto took = std::chrono::steady_clock::now() - start;
    ASSERT_FALSE(reply);
    EXPECT_FALSE(reply.error().unreachable);
    EXPECT_EQ(reply.error().message, "no answer from smtpfenced at " + path + ": timed out");
    EXPECT_GE(took, 150ms);
    EXPECT_LT(took, 3s);
}

// Access decided from the kernel's word about the peer. Root is always allowed, so the
// peer of these tests is never root: this process when it is not root; as root (as
// scripts/test runs the unit tests) a child that becomes uid and gid 65534 first (nobody
// and nogroup on Debian; only the kernel's word counts, not an account).
class NonRootClient {
  public:
    using Reply = std::expected<std::string, ClientError>;

    // Forks the child, when root, now: before the server's loop thread starts, so that
    // the child is a copy of a process with one thread. Its connects wait in the
    // listen backlog until the loop runs. The directories from top down to the socket
    // are opened to the child (search only).
    NonRootClient(const std::string& top, std::string path, std::vector<Request> requests)
        : path_(std::move(path)), requests_(std::move(requests)) {
        if (::getuid() != 0)
            return;
        uid_ = kNobody;
        gid_ = kNobody;
        for (std::filesystem::path d = std::filesystem::path(path_).parent_path();
             d.string().size() >= top.size(); d = d.parent_path())
            EXPECT_EQ(::chmod(d.c_str(), 0711), 0) << d << ": " << errno_text(errno);
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
            ADD_FAILURE() << "socketpair: " << errno_text(errno);
            return;
        }
        UniqueFd ours(fds[0]);
        UniqueFd theirs(fds[1]);
        child_ = ::fork();
        if (child_ < 0) {
            ADD_FAILURE() << "fork: " << errno_text(errno);
            return;
        }
        if (child_ == 0) {
            ours.reset();
            run_child(theirs.get());
        }
        from_child_ = std::move(ours);
    }
    NonRootClient(const NonRootClient&) = delete;
    NonRootClient& operator=(const NonRootClient&) = delete;
    ~NonRootClient() {
        if (child_ > 0) {
            from_child_.reset();
            ::waitpid(child_, nullptr, 0);
        }
    }

    [[nodiscard]] uid_t uid() const { return uid_; }
    [[nodiscard]] gid_t gid() const { return gid_; }

    // The replies to the requests, in order: called once the server's loop runs.
    std::vector<Reply> replies() {
        std::vector<Reply> out;
        if (::getuid() != 0) {
            for (const Request& r : requests_)
                out.push_back(call(path_, r, kCallTimeout));
            return out;
        }
        const Received got = read_until_closed(from_child_.get());
        int status = 0;
        EXPECT_EQ(::waitpid(child_, &status, 0), child_);
        child_ = 0;
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << "the client child (uid " << uid_ << ") ended with status " << status
            << (WIFEXITED(status) && WEXITSTATUS(status) == kCannotDrop
                    ? ": it could not become that uid"
                    : "");
        const json all = json::parse(got.data, nullptr, false);
        if (all.is_discarded() || !all.is_array()) {
            ADD_FAILURE() << "not the child's replies: " << got.data;
            return out;
        }
        for (const json& r : all) {
            if (r.contains("reply"))
                out.emplace_back(r["reply"].get<std::string>());
            else
                out.emplace_back(
                    std::unexpected(ClientError{.unreachable = r.value("unreachable", false),
                                                .message = r.value("error", "")}));
        }
        return out;
    }

  private:
    static constexpr uid_t kNobody = 65534;  // and gid: nobody and nogroup on Debian
    static constexpr int kCannotDrop = 3;    // the child's exit code when setuid fails

    // In the child: becomes uid_ and gid_ with no supplementary groups, makes the calls
    // and sends their outcomes to the parent as one JSON array.
    [[noreturn]] void run_child(int to_parent) const {
        if (::setgroups(0, nullptr) != 0 || ::setgid(gid_) != 0 || ::setuid(uid_) != 0)
            std::_Exit(kCannotDrop);
        json all = json::array();
        for (const Request& r : requests_) {
            const Reply reply = call(path_, r, kCallTimeout);
            if (reply)
                all.push_back({{"reply", *reply}});
            else
                all.push_back(
                    {{"error", reply.error().message}, {"unreachable", reply.error().unreachable}});
        }
        send_all(to_parent, all.dump());
        std::_Exit(0);
    }

    std::string path_;
    std::vector<Request> requests_;
    uid_t uid_ = ::getuid();
    gid_t gid_ = ::getgid();
    pid_t child_ = 0;
    UniqueFd from_child_;
};

TEST_F(ControlServerTest, NonAdminPeerIsRefusedAndTheHandlerNotCalled) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    NonRootClient client(dir_.path(), path_,
                         {request(Command::Status), request(Command::Allow, "mallory")});
    // An admin group the client is not in.
    server->set_access(AccessPolicy{.admin_gid = client.gid() + 1, .read_all = false});
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok(json::object()));
    });
    const std::string uid = std::to_string(client.uid());
    const std::string gid = std::to_string(client.gid() + 1);

    const auto replies = client.replies();
    ASSERT_EQ(replies.size(), 2U);
    ASSERT_TRUE(replies[0]) << replies[0].error().message;
    EXPECT_EQ(error_of(*replies[0]),
              CodeAndMessage("permission_denied",
                             "status is not allowed for uid " + uid +
                                 ": it needs root or a member of gid " + gid +
                                 " (CONTROL_ADMIN_GROUP), or CONTROL_READ = \"all\""));
    ASSERT_TRUE(replies[1]) << replies[1].error().message;
    EXPECT_EQ(error_of(*replies[1]),
              CodeAndMessage("permission_denied", "allow is not allowed for uid " + uid +
                                                      ": it needs root or a member of gid " + gid +
                                                      " (CONTROL_ADMIN_GROUP)"));
    loop.stop();
    EXPECT_EQ(calls, 0);
    EXPECT_EQ(server->rejected(), 2U);
}

TEST_F(ControlServerTest, ReadAllLetsANonAdminPeerReadButNotChange) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(AccessPolicy{.admin_gid = std::nullopt, .read_all = true});
    NonRootClient client(dir_.path(), path_,
                         {request(Command::List), request(Command::Deny, "alice")});
    std::atomic<int> calls{0};
    ServerLoop loop(*server, [&](const Request&, const Peer&, int) {
        ++calls;
        return std::optional<std::string>(encode_ok(json::object()));
    });
    const auto replies = client.replies();
    ASSERT_EQ(replies.size(), 2U);
    ASSERT_TRUE(replies[0]) << replies[0].error().message;
    EXPECT_EQ(*replies[0], R"({"ok":true,"result":{},"v":1})");

    ASSERT_TRUE(replies[1]) << replies[1].error().message;
    EXPECT_EQ(error_of(*replies[1]),
              CodeAndMessage("permission_denied",
                             "deny is not allowed for uid " + std::to_string(client.uid()) +
                                 ": it needs root (set CONTROL_ADMIN_GROUP to delegate)"));
    loop.stop();
    EXPECT_EQ(calls, 1);
}

TEST_F(ControlServerTest, PrimaryGroupAsAdminGroupGrantsChanges) {
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    NonRootClient client(dir_.path(), path_, {request(Command::Allow, "alice")});
    server->set_access(AccessPolicy{.admin_gid = client.gid(), .read_all = false});
    ServerLoop loop(*server, [&](const Request& r, const Peer&, int) {
        return std::optional<std::string>(encode_ok({{"allowed", r.user.value()}}));
    });
    const auto replies = client.replies();
    ASSERT_EQ(replies.size(), 1U);
    ASSERT_TRUE(replies[0]) << replies[0].error().message;
    EXPECT_EQ(*replies[0], R"({"ok":true,"result":{"allowed":"alice"},"v":1})");
}

TEST_F(ControlServerTest, RootIsAllowedWithoutAnyAccessSettings) {
    if (::getuid() != 0)
        GTEST_SKIP() << "needs uid 0 as the peer; this run is uid " << ::getuid();
    auto server = ControlServer::listen(path_);
    ASSERT_TRUE(server) << server.error().message();
    server->set_access(AccessPolicy{});
    ServerLoop loop(*server, [&](const Request&, const Peer& peer, int) {
        return std::optional<std::string>(encode_ok({{"uid", peer.uid}}));
    });
    auto reply = call(path_, request(Command::Remove), kCallTimeout);
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(*reply, R"({"ok":true,"result":{"uid":0},"v":1})");
}

// access_problem with made-up peers: every case, whoever runs the test.
Peer peer(uid_t uid, gid_t gid, std::vector<gid_t> groups = {}) {
    return Peer{.pid = 4242, .uid = uid, .gid = gid, .groups = std::move(groups)};
}

const std::vector<Command> kReads = {Command::Version, Command::Status,   Command::List,
                                     Command::Check,   Command::Attempts, Command::Top};
const std::vector<Command> kChanges = {Command::Allow, Command::Deny, Command::Test,
                                       Command::Reload, Command::Remove};

TEST(AccessProblem, RootMayDoEverything) {
    for (const AccessPolicy& policy :
         {AccessPolicy{}, AccessPolicy{.admin_gid = 50, .read_all = false},
          AccessPolicy{.admin_gid = std::nullopt, .read_all = true}}) {
        for (const auto& commands : {kReads, kChanges}) {
            for (const Command c : commands)
                EXPECT_EQ(access_problem(policy, peer(0, 1000), c), "") << to_string(c);
        }
    }
}

TEST(AccessProblem, WithoutSettingsOnlyRoot) {
    const AccessPolicy none;
    EXPECT_EQ(access_problem(none, peer(1000, 1000, {27, 100}), Command::Allow),
              "allow is not allowed for uid 1000: it needs root (set CONTROL_ADMIN_GROUP to "
              "delegate)");
    EXPECT_EQ(access_problem(none, peer(1000, 0), Command::Status),
              "status is not allowed for uid 1000: it needs root (set CONTROL_ADMIN_GROUP to "
              "delegate), or CONTROL_READ = \"all\"");
    for (const auto& commands : {kReads, kChanges}) {
        for (const Command c : commands)
            EXPECT_NE(access_problem(none, peer(1, 1), c), "") << to_string(c);
    }
}

TEST(AccessProblem, AdminGroupAsPrimaryOrSupplementary) {
    const AccessPolicy admins{.admin_gid = 50, .read_all = false};
    for (const auto& commands : {kReads, kChanges}) {
        for (const Command c : commands) {
            EXPECT_EQ(access_problem(admins, peer(1000, 50), c), "") << to_string(c);
            EXPECT_EQ(access_problem(admins, peer(1000, 1000, {20, 50, 100}), c), "")
                << to_string(c);
        }
    }
    EXPECT_EQ(access_problem(admins, peer(1001, 1001, {20, 51, 500}), Command::Test),
              "test is not allowed for uid 1001: it needs root or a member of gid 50 "
              "(CONTROL_ADMIN_GROUP)");
    EXPECT_EQ(access_problem(admins, peer(1001, 1001), Command::Attempts),
              "attempts is not allowed for uid 1001: it needs root or a member of gid 50 "
              "(CONTROL_ADMIN_GROUP), or CONTROL_READ = \"all\"");
}

TEST(AccessProblem, ReadAllOpensOnlyReadOnlyCommands) {
    const AccessPolicy read_all{.admin_gid = 50, .read_all = true};
    for (const Command c : kReads)
        EXPECT_EQ(access_problem(read_all, peer(1000, 1000), c), "") << to_string(c);
    for (const Command c : kChanges) {
        EXPECT_EQ(access_problem(read_all, peer(1000, 1000), c),
                  std::string(to_string(c)) +
                      " is not allowed for uid 1000: it needs root or a member of gid 50 "
                      "(CONTROL_ADMIN_GROUP)");
        EXPECT_EQ(access_problem(read_all, peer(1000, 1000, {50}), c), "") << to_string(c);
    }
}

}  // namespace
}  // namespace smtpfence::ctl
