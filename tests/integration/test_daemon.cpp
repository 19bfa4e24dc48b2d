// The daemon's life cycle and its evidence: the seed's telnet verification, the
// kernel's per-uid counters, SIGHUP reloads (good and broken), SIGTERM, and the
// dry run that must print exactly what the kernel then holds.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <csignal>
#include <string>

#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using DaemonTest = FenceTest;

std::string config(const std::string& extra = {}) {
    return "SMTP_BLOCK = \"1\"\n" + extra;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// telnet as uid 2002 (bob) through setpriv, as `su - bob; telnet REMOTE 25` would.
std::vector<std::string> telnet_as_bob(const std::string& remote) {
    return {"setpriv",
            "--reuid=2002",
            "--regid=2002",
            "--clear-groups",
            "sh",
            "-c",
            "(sleep 1; echo QUIT) | telnet " + remote + " 25"};
}

TEST_F(DaemonTest, TelnetAsAnOrdinaryUserPrintsConnectionRefusedAtOnce) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        const auto start = std::chrono::steady_clock::now();
        // telnet alone (stdin /dev/null): it exits as soon as connect() fails.
        const RunResult r = run(topo_->server, {"setpriv", "--reuid=2002", "--regid=2002",
                                                "--clear-groups", "telnet", remote, "25"});
        const auto took = std::chrono::steady_clock::now() - start;
        EXPECT_TRUE(contains(r.output(), "Connection refused")) << remote << ": " << r.describe();
        EXPECT_FALSE(contains(r.output(), "220 ")) << remote << ": " << r.describe();
        EXPECT_NE(r.exit_code, 0) << remote << ": " << r.describe();
        EXPECT_LT(took, 3s) << remote << ": telnet took too long to give up";
        // Through a shell pipeline as in the seed's session: the same answer.
        const RunResult piped = run(topo_->server, telnet_as_bob(remote));
        EXPECT_TRUE(contains(piped.output(), "Connection refused"))
            << remote << ": " << piped.describe();
    }
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
}

TEST_F(DaemonTest, TelnetAsRootPrintsTheRemoteGreeting) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        const RunResult r =
            run(topo_->server,
                {"sh", "-c", std::string("(sleep 1; echo QUIT) | telnet ") + remote + " 25"});
        EXPECT_TRUE(contains(r.output(), SmtpListener::greeting_for(kRemoteHost)))
            << remote << ": " << r.describe();
        EXPECT_FALSE(contains(r.output(), "Connection refused")) << remote << ": " << r.describe();
    }
    EXPECT_EQ(remote_smtp_->accepted(), 2U);
}

TEST_F(DaemonTest, BlockedSetCountsEveryRefusedSynPerUid) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    auto before = server_engine().read_blocked(table_);
    ASSERT_TRUE(before) << before.error().message();
    EXPECT_TRUE(before->empty()) << "counters before any attempt";

    constexpr int kBobV4 = 5;
    constexpr int kBobV6 = 3;
    constexpr int kAliceAttempts = 2;
    for (int i = 0; i < kBobV4; ++i) {
        expect_refused(kBob, Topology::kRemote4, kSmtpPorts[static_cast<std::size_t>(i) % 3]);
    }
    for (int i = 0; i < kBobV6; ++i)
        expect_refused(kBob, Topology::kRemote6, 25);
    for (int i = 0; i < kAliceAttempts; ++i)
        expect_refused(kAlice, Topology::kRemote4, 587);
    expect_connected(kRoot, Topology::kRemote4, 25);
    expect_connected(kBob, Topology::kRemote4, 80);  // not an SMTP port: not counted

    auto after = server_engine().read_blocked(table_);
    ASSERT_TRUE(after) << after.error().message();
    ASSERT_TRUE(after->contains(kBob.uid)) << diagnostics();
    EXPECT_EQ(after->at(kBob.uid).packets, static_cast<std::uint64_t>(kBobV4 + kBobV6));
    ASSERT_TRUE(after->contains(kAlice.uid)) << diagnostics();
    EXPECT_EQ(after->at(kAlice.uid).packets, static_cast<std::uint64_t>(kAliceAttempts));
    EXPECT_FALSE(after->contains(kRoot.uid));
    EXPECT_EQ(after->size(), 2U);

    // nft's own view of the set agrees with the engine's reading.
    const RunResult set = run(topo_->server, {"nft", "list", "set", "inet", table_, "blocked"});
    ASSERT_EQ(set.exit_code, 0) << set.describe();
    EXPECT_TRUE(contains(set.out, "2002 counter packets " + std::to_string(kBobV4 + kBobV6) + " "))
        << set.out;
    EXPECT_TRUE(contains(set.out, "2001 counter packets " + std::to_string(kAliceAttempts) + " "))
        << set.out;
}

TEST_F(DaemonTest, SighupAppliesTheEditedConfig) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    expect_refused(kAlice, Topology::kRemote4, 25);
    expect_refused(kBob, Topology::kRemote4, 25);

    write_config(config("SMTP_ALLOWUSER = \"alice\"\n"));
    daemon_->signal(SIGHUP);
    const bool applied = wait_until(
        [&] { return connect(kAlice, Topology::kRemote4, 25).outcome == Outcome::Connected; }, 10s,
        100ms);
    ASSERT_TRUE(applied) << "alice still refused 10 s after SIGHUP\n" << diagnostics();
    expect_connected(kAlice, Topology::kRemote6, 587);
    expect_refused(kBob, Topology::kRemote4, 25);
    expect_refused(kBob, Topology::kRemote6, 25);
    EXPECT_TRUE(daemon_->running());

    // The reload kept the kernel's attempt counters: bob's first refusal still counts.
    auto blocked = server_engine().read_blocked(table_);
    ASSERT_TRUE(blocked) << blocked.error().message();
    ASSERT_TRUE(blocked->contains(kBob.uid)) << diagnostics();
    EXPECT_EQ(blocked->at(kBob.uid).packets, 3U) << diagnostics();
}

TEST_F(DaemonTest, SighupWithABrokenConfigKeepsTheRulesAndNamesFileAndLine) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    expect_refused(kAlice, Topology::kRemote4, 25);

    // Line 3 lacks its double quotes: CSF's loader refuses such a line, and so must we.
    // Line 2 would allow alice: if any of this file were applied, she would connect.
    write_config("SMTP_BLOCK = \"1\"\nSMTP_ALLOWUSER = \"alice\"\nSMTP_PORTS = 25,465\n");
    daemon_->signal(SIGHUP);
    const std::string where = config_path_ + ":3";
    const bool logged = wait_until([&] { return contains(daemon_->log(), where); }, 10s, 50ms);
    EXPECT_TRUE(logged) << "no error naming " << where << " in the log:\n" << daemon_->log();
    EXPECT_TRUE(daemon_->running()) << "a broken config on SIGHUP stopped the daemon:\n"
                                    << daemon_->log();

    auto exists = server_engine().table_exists(table_);
    ASSERT_TRUE(exists) << exists.error().message();
    EXPECT_TRUE(*exists);
    expect_refused(kAlice, Topology::kRemote4, 25);
    expect_refused(kAlice, Topology::kRemote6, 465);
    expect_refused(kBob, Topology::kRemote4, 587);
    expect_connected(kRoot, Topology::kRemote4, 25);
}

TEST_F(DaemonTest, SigtermLeavesTheTableInForce) {
    ASSERT_NO_FATAL_FAILURE(start_daemon(config()));
    expect_refused(kBob, Topology::kRemote4, 25);

    auto status = daemon_->stop();
    ASSERT_TRUE(status) << status.error().message() << "\n" << daemon_->log();
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe_status(*status) << "\n"
                                                                 << daemon_->log();

    auto exists = server_engine().table_exists(table_);
    ASSERT_TRUE(exists) << exists.error().message();
    EXPECT_TRUE(*exists) << "SIGTERM removed the table";
    for (const std::uint16_t port : kSmtpPorts) {
        expect_refused(kBob, Topology::kRemote4, port);
        expect_refused(kBob, Topology::kRemote6, port);
    }
    expect_connected(kRoot, Topology::kRemote4, 25);
}

TEST_F(DaemonTest, DryRunPrintsExactlyWhatTheKernelLists) {
    const std::string conf = config(
        "SMTP_ALLOWUSER = \"alice,4242\"\nSMTP_ALLOWGROUP = \"webmail\"\n"
        "SMTP_PORTS = \"25,465,587,2525\"\n");
    ASSERT_NO_FATAL_FAILURE(start_daemon(conf));
    const std::vector<std::string> dry_run = {
        smtpfencectl_path(), "apply",      "--dry-run", "--config", config_path_, "--table", table_,
        "--passwd",          passwd_path_, "--group",   group_path_};
    const RunResult r = run(topo_->server, dry_run);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    auto listing = nft_list_table(topo_->server, table_);
    ASSERT_TRUE(listing) << listing.error().message();
    EXPECT_EQ(r.out, *listing);

    // A dry run of a different policy changes nothing in the kernel. (Another file: the
    // daemon would reload its own config when it changes.)
    const std::string other_conf = dir_->write("other.conf", config("SMTP_ALLOWUSER = \"bob\"\n"));
    std::vector<std::string> other_dry_run = dry_run;
    other_dry_run[4] = other_conf;
    const RunResult other = run(topo_->server, other_dry_run);
    ASSERT_EQ(other.exit_code, 0) << other.describe();
    EXPECT_NE(other.out, r.out) << "the dry run ignored the config";
    auto unchanged = nft_list_table(topo_->server, table_);
    ASSERT_TRUE(unchanged) << unchanged.error().message();
    EXPECT_EQ(*unchanged, *listing) << "the dry run changed the kernel's table";
    expect_refused(kBob, Topology::kRemote4, 25);
}

TEST_F(DaemonTest, DryRunStillMatchesTheKernelAfterAReload) {
    // Few allowed uids (root, mail, Debian-exim, alice): no long element lists.
    ASSERT_NO_FATAL_FAILURE(
        start_daemon(config("SMTP_ALLOWGROUP = \"\"\nSMTP_ALLOWUSER = \"alice\"\n")));
    write_config(config("SMTP_ALLOWGROUP = \"\"\nSMTP_ALLOWUSER = \"alice,bob\"\n"));
    daemon_->signal(SIGHUP);
    const bool reloaded = wait_until(
        [&] {
            auto uids = server_engine().read_u32_set(table_, nft::kSetAllowUid);
            return uids && uids->contains(kBob.uid);
        },
        10s, 20ms);
    ASSERT_TRUE(reloaded) << "the reload did not show in the kernel\n" << diagnostics();

    const RunResult r =
        run(topo_->server, {smtpfencectl_path(), "apply", "--dry-run", "--config", config_path_,
                            "--table", table_, "--passwd", passwd_path_, "--group", group_path_});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    auto listing = nft_list_table(topo_->server, table_);
    ASSERT_TRUE(listing) << listing.error().message();
    EXPECT_EQ(r.out, *listing);
}

}  // namespace
}  // namespace smtpfence::itest
