// smtpfenced as systemd runs it (Type=notify, WatchdogSec, ExecReload=kill -HUP): the
// notifications it sends on a real notification socket, in order.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <string>

#include "common/fd.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using ServiceTest = FenceTest;

// The service manager's end: a datagram socket the daemon's sd_notify() writes to.
class NotifySocket {
  public:
    explicit NotifySocket(std::string path) : path_(std::move(path)) {
        fd_ = UniqueFd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
        bound_ = fd_.valid() &&
                 ::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
    }
    [[nodiscard]] bool bound() const { return bound_; }
    [[nodiscard]] const std::string& path() const { return path_; }

    // The next message, or "" after timeout.
    std::string next(Millis timeout = 10s) {
        pollfd p{fd_.get(), POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1)
            return {};
        std::string buf(4096, '\0');
        const ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
        buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        return buf;
    }
    // Skips watchdog pings until a message starting with prefix (or timeout).
    std::string next_starting(const std::string& prefix, Millis timeout = 10s) {
        const auto until = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < until) {
            std::string m =
                next(std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now()));
            if (m.rfind(prefix, 0) == 0)
                return m;
        }
        return {};
    }

  private:
    std::string path_;
    UniqueFd fd_;
    bool bound_ = false;
};

TEST_F(ServiceTest, NotifiesReadyWatchdogReloadAndStopLikeATypeNotifyService) {
    NotifySocket notify(dir_->path() + "/notify.sock");
    ASSERT_TRUE(notify.bound()) << errno_text(errno);
    ASSERT_NO_FATAL_FAILURE(
        start_daemon("SMTP_ALLOWUSER = \"alice\"\n", {},
                     {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=400000"}));

    const std::string ready = notify.next_starting("READY=1");
    ASSERT_FALSE(ready.empty()) << "no READY=1\n" << daemon_->log();
    EXPECT_NE(ready.find("\nSTATUS=enforcing: outbound TCP ports 25,465,587"), std::string::npos)
        << ready;
    expect_refused(kBob, Topology::kRemote4, 25);  // ready means the block is in force

    // WatchdogSec=0.4s: a ping at least every 0.2 s.
    int pings = 0;
    const auto until = std::chrono::steady_clock::now() + 1s;
    while (std::chrono::steady_clock::now() < until) {
        if (notify.next(500ms) == "WATCHDOG=1")
            ++pings;
    }
    EXPECT_GE(pings, 3) << "watchdog pings in one second";

    daemon_->signal(SIGHUP);
    const std::string reloading = notify.next_starting("RELOADING=1");
    ASSERT_FALSE(reloading.empty()) << daemon_->log();
    EXPECT_NE(reloading.find("\nMONOTONIC_USEC="), std::string::npos) << reloading;
    EXPECT_FALSE(notify.next_starting("READY=1").empty()) << "no READY=1 after the reload";

    auto status = daemon_->stop();
    ASSERT_TRUE(status) << status.error().message();
    EXPECT_FALSE(notify.next_starting("STOPPING=1").empty());
    expect_refused(kBob, Topology::kRemote4, 25);  // stopping never opens SMTP
}

}  // namespace
}  // namespace smtpfence::itest
