// Relay exceptions end to end (docs/relay-exceptions.md): smtpfenced in the server
// namespace resolves the names of exceptions through a real dnsmasq in the remote
// namespace, whose records the tests change while the daemon runs; users telnet and
// connect to the remote's SMTP listener on the allowed and on other addresses and ports.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"
#include "tests/support/dnsmasq.h"

namespace smtpfence::itest {
namespace {

using nlohmann::json;

// A second address of the remote (the listener takes every address): "another host".
constexpr const char* kOther4 = "192.0.2.26";
constexpr const char* kOther6 = "2001:db8::26";

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

class RelayTest : public FenceTest {
  protected:
    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        for (const auto& [family, address] :
             {std::pair{"-4", "192.0.2.26/24"}, std::pair{"-6", "2001:db8::26/64"}}) {
            const RunResult r =
                run(topo_->remote, {"ip", family, "addr", "add", address, "dev", "veth0", "nodad"});
            ASSERT_EQ(r.exit_code, 0) << r.describe();
        }
        write_hosts(std::string(Topology::kRemote4) + " relay.test\n" + Topology::kRemote6 +
                    " relay.test\n");
        // The remote's own name server, as a provider's resolver would be; TTL 1 s.
        auto dns = testing::Dnsmasq::start(
            topo_->remote, Topology::kRemote4, dir_->path() + "/dnsmasq.log",
            {"--addn-hosts=" + hosts_, "--local-ttl=1", "--local=/test/"});
        ASSERT_TRUE(dns) << dns.error().message();
        dns_.emplace(std::move(*dns));
        resolv_conf_ =
            dir_->write("resolv.conf", std::string("nameserver ") + Topology::kRemote4 + "\n");
    }

    void write_hosts(const std::string& text) { hosts_ = dir_->write("hosts", text); }

    // The daemon with quick lookups: TTL floor 1 s, grace 3 s.
    void start(const std::string& extra = {}) {
        ASSERT_NO_FATAL_FAILURE(
            start_daemon("SMTP_BLOCK = \"1\"\nDEST_TTL_MIN = \"1\"\nDEST_GRACE = \"3\"\n" + extra,
                         {"--resolv-conf", resolv_conf_}));
    }

    RunResult ctl(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {smtpfencectl_path(), "--socket",
                                         dir_->path() + "/control.sock"};
        argv.insert(argv.end(), args.begin(), args.end());
        return run(topo_->server, argv, std::nullopt, 20s);
    }

    json ctl_json(std::vector<std::string> args) {
        args.emplace_back("--json");
        const RunResult r = ctl(args);
        json j = json::parse(r.out, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << r.describe();
        return j;
    }

    // The exception of `list` whose rule is text; null when there is none.
    json exception(const std::string& rule) {
        const json list = ctl_json({"list"});
        for (const json& e : list.value("exceptions", json::array())) {
            if (e.value("rule", "") == rule)
                return e;
        }
        return nullptr;
    }

    // Waits until the exception's addresses (not those in grace) are exactly want.
    void wait_addresses(const std::string& rule, std::vector<std::string> want,
                        Millis timeout = 5s) {
        std::sort(want.begin(), want.end());
        json last;
        const bool ok = wait_until(
            [&] {
                last = exception(rule);
                if (last.is_null())
                    return false;
                std::vector<std::string> have = last["addresses"];
                std::sort(have.begin(), have.end());
                return have == want;
            },
            timeout, 100ms);
        ASSERT_TRUE(ok) << rule << ": " << last.dump() << "\n" << diagnostics();
    }

    // telnet as who, as `su - who -c 'telnet HOST PORT'` would: its output.
    std::string telnet(const Credentials& who, const std::string& host, std::uint16_t port) {
        return run(topo_->server,
                   {"sh", "-c",
                    "(sleep 1; echo QUIT) | telnet " + host + " " + std::to_string(port)},
                   who, 10s)
            .output();
    }

    std::uint64_t blocked_count(std::uint32_t uid) {
        auto blocked = server_engine().read_blocked(table_);
        EXPECT_TRUE(blocked) << blocked.error().message();
        if (!blocked || !blocked->contains(uid))
            return 0;
        return blocked->at(uid).packets;
    }

    std::string hosts_;
    std::string resolv_conf_;
    std::optional<testing::Dnsmasq> dns_;
};

TEST_F(RelayTest, ANameLetsTheUserReachThatRelayOnThatPortOnlyAndIsNoAttempt) {
    ASSERT_NO_FATAL_FAILURE(start());
    const RunResult added = ctl({"allow", "alice", "--to", "relay.test:587"});
    ASSERT_EQ(added.exit_code, 0) << added.describe();
    EXPECT_TRUE(contains(added.out, "exception alice to relay.test:587: added")) << added.out;
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test:587", {Topology::kRemote4, Topology::kRemote6}));

    // The relay's submission port, by telnet and over both families.
    const std::string greeted = telnet(kAlice, Topology::kRemote4, 587);
    EXPECT_TRUE(contains(greeted, "220 " + std::string(kRemoteHost))) << greeted << diagnostics();
    expect_connected(kAlice, Topology::kRemote6, 587);
    // The same host on another guarded port, another host, another user: refused.
    const std::string refused = telnet(kAlice, Topology::kRemote4, 25);
    EXPECT_TRUE(contains(refused, "Connection refused")) << refused;
    expect_refused(kAlice, kOther4, 587);
    expect_refused(kAlice, kOther6, 587);
    expect_refused(kBob, Topology::kRemote4, 587);

    // Counted: the three refusals of alice, not her two connections.
    EXPECT_EQ(blocked_count(kAlice.uid), 3U) << diagnostics();
    const json e = exception("alice to relay.test:587");
    EXPECT_EQ(e.value("uses", 0U), 2U) << e.dump();
    EXPECT_EQ(e.value("uses_today", 0U), 2U) << e.dump();
    // The worker records the refusals only.
    json attempts;
    ASSERT_TRUE(wait_until(
        [&] {
            attempts = ctl_json({"attempts", "--user", "alice"});
            return attempts.value("shown", 0U) >= 3U;
        },
        10s, 200ms))
        << attempts.dump();
    for (const json& r : attempts["records"]) {
        const std::string dst = r.value("dst", "");
        EXPECT_FALSE(r.value("dport", 0) == 587 &&
                     (dst == Topology::kRemote4 || dst == Topology::kRemote6))
            << "an allowed connection recorded: " << r.dump();
    }
    EXPECT_EQ(attempts.value("shown", 0U), 3U) << attempts.dump();

    // check: by which rule, and the exit codes scripts rely on.
    const RunResult ok = ctl({"check", "alice", "--to", "relay.test:587"});
    EXPECT_EQ(ok.exit_code, 0) << ok.describe();
    EXPECT_TRUE(contains(ok.out, "allowed by exception alice to relay.test:587")) << ok.out;
    EXPECT_EQ(ctl({"check", "alice", "--to", "relay.test:25"}).exit_code, 5);
    EXPECT_EQ(ctl({"check", "alice", "--to", std::string(kOther4) + ":587"}).exit_code, 5);
    EXPECT_EQ(ctl({"check", "bob", "--to", "relay.test:587"}).exit_code, 5);

    // deny: back to refused, at once.
    ASSERT_EQ(ctl({"deny", "alice", "--to", "relay.test:587"}).exit_code, 0);
    expect_refused(kAlice, Topology::kRemote4, 587);
    EXPECT_TRUE(exception("alice to relay.test:587").is_null());
}

TEST_F(RelayTest, AnAddressThatMovesIsFollowedAndTheOldOneEndsAfterTheGrace) {
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(ctl({"allow", "alice", "--to", "relay.test:587"}).exit_code, 0);
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test:587", {Topology::kRemote4, Topology::kRemote6}));
    expect_connected(kAlice, Topology::kRemote4, 587);
    expect_refused(kAlice, kOther4, 587);

    write_hosts(std::string(kOther4) + " relay.test\n");
    dns_->reload();
    // TTL 1 s + a second.
    ASSERT_NO_FATAL_FAILURE(wait_addresses("alice to relay.test:587", {kOther4}, 2500ms));
    expect_connected(kAlice, kOther4, 587);
    // The old addresses stay for the grace (3 s): a client may hold the older answer.
    const json moved = exception("alice to relay.test:587");
    EXPECT_EQ(moved["grace"].size(), 2U) << moved.dump();
    expect_connected(kAlice, Topology::kRemote4, 587);
    // ... and are refused after it.
    ASSERT_TRUE(wait_until([&] { return exception("alice to relay.test:587")["grace"].empty(); },
                           5s, 100ms))
        << exception("alice to relay.test:587").dump();
    expect_refused(kAlice, Topology::kRemote4, 587);
    expect_refused(kAlice, Topology::kRemote6, 587);
    expect_connected(kAlice, kOther4, 587);
}

TEST_F(RelayTest, NxdomainAndAnUnreachableServerKeepTheLastGoodAddresses) {
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(ctl({"allow", "alice", "--to", "relay.test"}).exit_code, 0);
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test", {Topology::kRemote4, Topology::kRemote6}));

    write_hosts("");
    dns_->reload();
    json failing;
    ASSERT_TRUE(wait_until(
        [&] {
            failing = exception("alice to relay.test");
            return failing.contains("error");
        },
        5s, 100ms))
        << failing.dump();
    EXPECT_TRUE(contains(failing.value("error", ""), "not found")) << failing.dump();
    EXPECT_EQ(failing["addresses"].size(), 2U) << failing.dump();
    expect_connected(kAlice, Topology::kRemote4, 25);
    const json status = ctl_json({"status"});
    EXPECT_TRUE(status["destination_exceptions"]["failing"].contains("relay.test"))
        << status.dump();
    EXPECT_TRUE(contains(daemon_->log(), "relay.test")) << daemon_->log();

    // No server any more (the host answers port unreachable, which c-ares 1.18 reports
    // as it reports SERVFAIL: docs/relay-exceptions.md): still the last good addresses.
    dns_->kill();
    ASSERT_TRUE(wait_until(
        [&] {
            return contains(exception("alice to relay.test").value("error", ""),
                            "Could not contact DNS servers");
        },
        15s, 200ms))
        << exception("alice to relay.test").dump();
    expect_connected(kAlice, Topology::kRemote6, 465);
    expect_refused(kAlice, kOther4, 25);
}

// CPU seconds (user + system) the process has used, from /proc/PID/stat.
double cpu_seconds(pid_t pid) {
    const std::string stat = testing::read_file("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i == 14 || i == 15)
            ticks += std::stod(field);  // utime, stime
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

TEST_F(RelayTest, ASilentServerTimesOutIsRetriedAndNeverSpinsTheDaemon) {
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(ctl({"allow", "alice", "--to", "relay.test:587"}).exit_code, 0);
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test:587", {Topology::kRemote4, Topology::kRemote6}));
    // The name server's packets vanish: no answer, no ICMP either.
    for (const std::string rule :
         {"add table inet sft_silent",
          "add chain inet sft_silent in { type filter hook input priority 0; policy accept; }",
          "add rule inet sft_silent in meta l4proto { tcp, udp } th dport 53 drop"}) {
        const RunResult r = run(topo_->remote, {"nft", rule});
        ASSERT_EQ(r.exit_code, 0) << r.describe();
    }
    json failing;
    ASSERT_TRUE(wait_until(
        [&] {
            failing = exception("alice to relay.test:587");
            return contains(failing.value("error", ""), "timeout");
        },
        20s, 200ms))
        << failing.dump() << diagnostics();
    expect_connected(kAlice, Topology::kRemote4, 587);
    // Waiting on c-ares' timeouts costs the daemon nothing: a loop that spun on a
    // zero poll timeout used a whole CPU here.
    const double before = cpu_seconds(daemon_->pid());
    std::this_thread::sleep_for(3s);
    EXPECT_LT(cpu_seconds(daemon_->pid()) - before, 0.5) << "the daemon spins while DNS is silent";
    // And the name is asked again: the answer comes back when the server does.
    const RunResult open = run(topo_->remote, {"nft", "delete table inet sft_silent"});
    ASSERT_EQ(open.exit_code, 0) << open.describe();
    ASSERT_TRUE(wait_until([&] { return !exception("alice to relay.test:587").contains("error"); },
                           30s, 200ms))
        << exception("alice to relay.test:587").dump();
}

TEST_F(RelayTest, NetworksGroupsEveryoneAndIpv6) {
    ASSERT_NO_FATAL_FAILURE(start());
    // A group and a network, every guarded port: carol (supplementary member), dave
    // (primary group).
    ASSERT_EQ(ctl({"allow", "--group", "webmail", "--to", "192.0.2.0/24"}).exit_code, 0);
    for (const Credentials& member : {kCarol, kDave}) {
        expect_connected(member, Topology::kRemote4, 25);
        expect_connected(member, kOther4, 465);
        expect_refused(member, Topology::kRemote6, 25);  // IPv6 is not in the network
    }
    expect_refused(kBob, Topology::kRemote4, 25);
    // Everyone, to one IPv6 address and port.
    ASSERT_EQ(ctl({"allow", "--everyone", "--to", "[2001:db8::26]:587"}).exit_code, 0);
    expect_connected(kBob, kOther6, 587);
    expect_connected(kAlice, kOther6, 587);
    expect_refused(kBob, kOther6, 25);
    expect_refused(kBob, Topology::kRemote6, 587);
    const RunResult check = ctl({"check", "bob", "--to", "[2001:db8::26]:587"});
    EXPECT_EQ(check.exit_code, 0) << check.describe();
    EXPECT_TRUE(contains(check.out, "everyone to [2001:db8::26]:587")) << check.out;
    // The allow.list lines they were stored as.
    const std::string list = testing::read_file(dir_->path() + "/allow.list");
    EXPECT_TRUE(contains(list, "group webmail to 192.0.2.0/24\n")) << list;
    EXPECT_TRUE(contains(list, "everyone to [2001:db8::26]:587\n")) << list;
}

TEST_F(RelayTest, ExceptionsSurviveReloadAndRestartAndComeFromTheConfigToo) {
    ASSERT_NO_FATAL_FAILURE(start("SMTP_ALLOWDEST = \"bob=192.0.2.26:465\"\n"));
    ASSERT_EQ(ctl({"allow", "alice", "--to", "relay.test:587"}).exit_code, 0);
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test:587", {Topology::kRemote4, Topology::kRemote6}));
    expect_connected(kBob, kOther4, 465);
    expect_refused(kBob, kOther4, 587);

    expect_connected(kAlice, Topology::kRemote4, 587);
    ASSERT_EQ(ctl({"reload"}).exit_code, 0);
    expect_connected(kAlice, Topology::kRemote4, 587);
    expect_connected(kBob, kOther4, 465);
    // The reload replaced the sets; the count of the first connection was kept.
    const json kept = exception("alice to relay.test:587");
    EXPECT_EQ(kept.value("uses", 0U), 2U) << kept.dump();

    ASSERT_TRUE(daemon_->stop().has_value());
    daemon_.reset();
    ASSERT_NO_FATAL_FAILURE(start("SMTP_ALLOWDEST = \"bob=192.0.2.26:465\"\n"));
    // The table stayed in force, so the start returns at once: wait for the socket.
    ASSERT_TRUE(wait_until([&] { return ctl({"status"}).exit_code == 0; }, 10s, 100ms))
        << diagnostics();
    ASSERT_NO_FATAL_FAILURE(
        wait_addresses("alice to relay.test:587", {Topology::kRemote4, Topology::kRemote6}));
    expect_connected(kAlice, Topology::kRemote6, 587);
    expect_connected(kBob, kOther4, 465);
    const json e = exception("bob to 192.0.2.26:465");
    EXPECT_TRUE(contains(e.value("origin", ""), "smtpfence.conf:")) << e.dump();

    // A broken SMTP_ALLOWDEST: the reload is refused naming file and line; all stays.
    write_config(
        "SMTP_BLOCK = \"1\"\nDEST_TTL_MIN = \"1\"\nSMTP_ALLOWDEST = \"bob=192.0.2.26:99999\"\n");
    const RunResult bad = ctl({"reload"});
    EXPECT_NE(bad.exit_code, 0);
    EXPECT_TRUE(contains(bad.err, "smtpfence.conf:3")) << bad.describe();
    EXPECT_TRUE(contains(bad.err, "99999")) << bad.describe();
    expect_connected(kBob, kOther4, 465);
    expect_connected(kAlice, Topology::kRemote4, 587);
}

TEST_F(RelayTest, MalformedDestinationsGetAClearErrorAndChangeNothing) {
    ASSERT_NO_FATAL_FAILURE(start());
    ASSERT_EQ(ctl({"allow", "alice", "--to", "192.0.2.25:587"}).exit_code, 0);
    const std::string before = testing::read_file(dir_->path() + "/allow.list");
    const std::string long_name = std::string(250, 'a') + ".test";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"relay.test:0", "port"},
        {"relay.test:65536", "port"},
        {"198.51.100.0/33", "prefix"},
        {"198.51.100.7/24", "198.51.100.0/24"},
        {"0.0.0.0/0", "allow USER"},
        {"::/0", "allow USER"},
        {"[2001:db8::25:25", "without ']'"},
        {long_name, "253"},
        {"bad\x01name.test", "\\x01"},
        {"", "empty"},
    };
    for (const auto& [to, says] : cases) {
        const RunResult r = ctl({"allow", "alice", "--to", to});
        EXPECT_EQ(r.exit_code, 2) << to << ": " << r.describe();
        EXPECT_TRUE(contains(r.err, says)) << to << ": " << r.describe();
        EXPECT_FALSE(contains(r.err, "\x01")) << "control byte echoed: " << r.describe();
    }
    // Refused before the daemon too: --everyone alone.
    EXPECT_EQ(ctl({"allow", "--everyone"}).exit_code, 2);
    EXPECT_EQ(testing::read_file(dir_->path() + "/allow.list"), before);
    expect_connected(kAlice, Topology::kRemote4, 587);
    expect_refused(kAlice, Topology::kRemote4, 25);
}

}  // namespace
}  // namespace smtpfence::itest
