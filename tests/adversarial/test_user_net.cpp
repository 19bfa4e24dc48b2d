// A rootless user-mode network stack run by the user, as rootless containers do:
// bob makes a user + network namespace of his own and gives it a way out through
// slirp4netns or pasta, which forward each connection the namespace opens by opening a
// socket of their own in the server's namespace. Those sockets are bob's (the stack
// runs as bob), so the fence refuses them, the kernel counts them against bob's uid,
// and the worker explains them with the process that really asked: the stack.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

// A shell snippet, run as bob in the server namespace, that starts an unprivileged
// namespace (`unshare -Urn`), connects it through slirp4netns, and from inside tries
// `exec 3<>/dev/tcp/DEST/25` (bash). Prints "INSIDE uid=0", then "CONNECTED" or the
// shell's error, then "STACK <pid of slirp4netns>".
std::string slirp_script(const std::string& dest, std::uint16_t port, bool ipv6) {
    return std::string(
               "set -u\n"
               "unshare -Urn sleep 60 & ns=$!\n"
               // The child has unshared once its net namespace differs from ours.
               "for i in $(seq 100); do\n"
               "  [ \"$(readlink /proc/$ns/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ]"
               " && break; sleep 0.05; done\n"
               "slirp4netns --configure --disable-host-loopback ") +
           (ipv6 ? "--enable-ipv6 " : "") +
           "$ns tap0 >/dev/null 2>&1 & st=$!\n"
           "inside() { nsenter -t $ns -U -n --preserve-credentials \"$@\"; }\n"
           "for i in $(seq 100); do inside ip -o -4 addr show dev tap0 2>/dev/null |"
           " grep -q 10.0.2.100 && break; sleep 0.05; done\n" +
           (ipv6 ? "for i in $(seq 100); do inside ip -o -6 addr show dev tap0 scope global"
                   " -tentative 2>/dev/null | grep -q fd00 && break; sleep 0.05; done\n"
                 : "") +
           "echo \"STACK $st\"\n"
           "inside bash -c 'echo \"INSIDE uid=$(id -u)\"; exec 3<>/dev/tcp/" +
           dest + "/" + std::to_string(port) +
           " && echo CONNECTED' 2>&1\n"
           "kill $st $ns; wait\n";
}

// The same through pasta (passt's namespace mode), which makes the namespaces itself
// and copies the server's addresses and default route into them (--no-map-gw: the
// gateway's address is the remote, not a way to the server's loopback). This Debian 12
// pasta does not pass a refusal back as a reset: the inside connect waits, and pasta
// tries again on each retransmitted SYN, so the inside gets 3 s.
std::string pasta_script(const std::string& dest, std::uint16_t port) {
    return "timeout 20 pasta --config-net --no-map-gw -4 -- bash -c '"
           "echo \"INSIDE uid=$(id -u)\";"
           " timeout 3 bash -c \"exec 3<>/dev/tcp/" +
           dest + "/" + std::to_string(port) + " && echo CONNECTED\"' 2>&1\n";
}

// An unguarded port on the remote, for the control: the same stack, run by bob,
// reaches it, so a refusal on 25 is the fence's doing, not a stack that cannot forward.
constexpr std::uint16_t kOpenPort = 2525;

class UserModeNetworkTest : public WorkerTest {
  protected:
    void SetUp() override {
        WorkerTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        auto open = itest::SmtpListener::start(topo_->remote, {kOpenPort}, "open.test");
        ASSERT_TRUE(open) << open.error().message();
        open_port_.emplace(std::move(*open));
        // pasta takes its way out from the default route.
        const itest::RunResult r =
            itest::run(topo_->server, {"ip", "route", "add", "default", "via", Topology::kRemote4});
        ASSERT_EQ(r.exit_code, 0) << r.describe();
    }

    // Runs script as bob; the attack must fail (or, for the control, connect). The
    // stack's pid (from "STACK").
    void attack(const std::string& script, pid_t* stack_pid, bool control = false) {
        const itest::RunResult r = itest::run(topo_->server, {"bash", "-c", script}, kBob, 40s);
        const std::string& out = r.out;
        ASSERT_NE(out.find("INSIDE uid=0"), std::string::npos)
            << "the namespace did not come up: " << r.describe();
        EXPECT_EQ(out.find("CONNECTED") != std::string::npos, control) << r.describe();
        // pasta forks inside itself: only slirp's pid is known from outside.
        const auto at = out.find("STACK ");
        *stack_pid =
            at == std::string::npos ? 0 : static_cast<pid_t>(std::stol(out.substr(at + 6)));
        stack_out_ = r.describe();
    }

    // The kernel counted the stack's forwarded SYNs against bob; the log agrees exactly;
    // the first are explained with the stack's process; nobody reached the remote.
    void expect_attributed_to_bob(pid_t stack_pid, const std::string& exe,
                                  const std::string& dest) {
        auto kernel = kernel_blocked(topo_->server, table_);
        ASSERT_TRUE(kernel) << kernel.error().message();
        const std::uint64_t syns = (*kernel)[kBob.uid];
        EXPECT_GE(syns, 1U) << "no SYN of bob's was refused: " << stack_out_;
        EXPECT_EQ(kernel->size(), 1U) << "only bob's uid may appear in the blocked set";
        expect_exact_totals({{kBob.uid, syns}});
        const AttemptLogView log = read_attempt_log(state_dir());
        const auto records = log.attempts_of(kBob.uid);
        ASSERT_FALSE(records.empty()) << diagnostics();
        const Json& a = records.front();
        SCOPED_TRACE("record: " + a.dump());
        EXPECT_EQ(a.value("user", ""), "bob");
        EXPECT_EQ(a.value("account", ""), "bob");
        EXPECT_EQ(a.value("dst", ""), dest);
        EXPECT_EQ(a.value("dport", 0U), 25U);
        EXPECT_TRUE(a.value("identified", false)) << "the stack was running: it must be found";
        if (stack_pid != 0) {
            EXPECT_EQ(a.value("pid", pid_t{0}), stack_pid);
        }
        EXPECT_NE(a.value("exe", "").find(exe), std::string::npos) << a.value("exe", "");
        EXPECT_EQ(remote_smtp_->accepted(), 0U) << "the remote accepted a connection";
    }

    // With the daemon and its worker up: the control (bob's stack reaches the open port),
    // then the attack on port 25, then who was billed for it.
    void stack_attack(const std::function<std::string(std::uint16_t)>& script,
                      const std::string& dest, const std::string& exe) {
        ASSERT_NO_FATAL_FAILURE(start_daemon());
        pid_t worker = 0;
        ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
        pid_t stack = 0;
        ASSERT_NO_FATAL_FAILURE(attack(script(kOpenPort), &stack, /*control=*/true));
        EXPECT_EQ(open_port_->accepted(), 1U);
        ASSERT_NO_FATAL_FAILURE(attack(script(25), &stack));
        expect_attributed_to_bob(stack, exe, dest);
    }

    [[nodiscard]] static bool have(const char* tool) {
        return itest::run(nullptr, {"sh", "-c", std::string("command -v ") + tool}).exit_code == 0;
    }

    std::string stack_out_;
    std::optional<itest::SmtpListener> open_port_;
};

TEST_F(UserModeNetworkTest, Slirp4netnsRunByBobIsRefusedAndBilledToBob) {
    if (!have("slirp4netns"))
        GTEST_SKIP() << "slirp4netns is not installed (scripts/install-deps installs it)";
    ASSERT_NO_FATAL_FAILURE(stack_attack(
        [](std::uint16_t port) { return slirp_script(Topology::kRemote4, port, false); },
        Topology::kRemote4, "/usr/bin/slirp4netns"));
    // slirp4netns passes the reset back: the inside sees a plain refusal.
    EXPECT_NE(stack_out_.find("Connection refused"), std::string::npos) << stack_out_;
}

TEST_F(UserModeNetworkTest, Slirp4netnsOverIpv6IsRefusedAndBilledToBob) {
    if (!have("slirp4netns"))
        GTEST_SKIP() << "slirp4netns is not installed (scripts/install-deps installs it)";
    ASSERT_NO_FATAL_FAILURE(stack_attack(
        [](std::uint16_t port) { return slirp_script(Topology::kRemote6, port, true); },
        Topology::kRemote6, "/usr/bin/slirp4netns"));
}

TEST_F(UserModeNetworkTest, PastaRunByBobIsRefusedAndBilledToBob) {
    if (!have("pasta"))
        GTEST_SKIP() << "pasta is not installed (package passt; scripts/install-deps installs it)";
    // /usr/bin/passt or /usr/bin/passt.avx2: pasta is a link to passt, which may exec its
    // AVX2 build.
    ASSERT_NO_FATAL_FAILURE(
        stack_attack([](std::uint16_t port) { return pasta_script(Topology::kRemote4, port); },
                     Topology::kRemote4, "/usr/bin/passt"));
}

}  // namespace
}  // namespace smtpfence::wtest
