// CSF compatibility against the real kernel. First the rules only CSF's settings bring
// (SMTP_REDIRECT's nat chain, DROP_OUT_LOGGING's log rules): accepted by the kernel,
// listed exactly as rendered, added and removed by a reload with the counters kept.
// Then `smtpfenced --csf-conf`, end to end, one test per mapped setting.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "csf-compat/csf_rules.h"
#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// A listing without the blocked set's elements (the per-uid counters the kernel added
// since), to compare with the rendered ruleset.
std::string without_counters(const std::string& listing) {
    std::string out;
    bool in_blocked = false;
    std::size_t pos = 0;
    while (pos < listing.size()) {
        std::size_t end = listing.find('\n', pos);
        end = end == std::string::npos ? listing.size() : end + 1;
        const std::string line = listing.substr(pos, end - pos);
        pos = end;
        if (line == "\tset " + std::string(nft::kSetBlocked) + " {\n")
            in_blocked = true;
        else if (line == "\t}\n")
            in_blocked = false;
        if (in_blocked && (line.rfind("\t\telements = ", 0) == 0 || line.rfind("\t\t\t", 0) == 0))
            continue;
        out += line;
    }
    return out;
}

class CsfRulesetTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (auto why = skip_reason())
            GTEST_SKIP() << *why;
        auto ns = Netns::create();
        ASSERT_TRUE(ns) << ns.error().message();
        ns_ = std::make_unique<Netns>(std::move(*ns));
        ASSERT_EQ(run(nullptr, {"ip", "-n", ns_->name(), "link", "set", "lo", "up"}).exit_code, 0);
        auto engine = NsEngine::open(*ns_);
        ASSERT_TRUE(engine) << engine.error().message();
        engine_ = std::move(*engine);
        table_ = unique_table_name();
    }

    nft::RulesetSpec spec() const {
        nft::RulesetSpec s;
        s.table = table_;
        s.allow_uids = {0};
        s.allow_gids = {8};
        s.queue = nft::QueueMode::None;
        return s;
    }

    // Applies spec and checks that the kernel lists exactly what render_nft says.
    void apply_and_compare(const nft::RulesetSpec& s) {
        const nft::Ruleset rs = nft::build_ruleset(s);
        auto applied = engine_->engine().apply(rs);
        ASSERT_TRUE(applied) << applied.error().message();
        auto listing = nft_list_table(*ns_, table_);
        ASSERT_TRUE(listing) << listing.error().message();
        EXPECT_EQ(without_counters(*listing), nft::render_nft(rs));
    }

    std::uint64_t blocked_count(uid_t uid) {
        auto counts = engine_->engine().read_blocked(table_);
        EXPECT_TRUE(counts) << counts.error().message();
        return counts && counts->contains(uid) ? counts->at(uid).packets : 0;
    }

    std::string table_;
    std::unique_ptr<Netns> ns_;
    std::unique_ptr<NsEngine> engine_;
};

TEST_F(CsfRulesetTest, LogRulesAreAcceptedAndListedAsRendered) {
    nft::RulesetSpec s = spec();
    s.log_blocked = true;
    s.log_uid = true;
    ASSERT_NO_FATAL_FAILURE(apply_and_compare(s));
    auto listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing);
    EXPECT_TRUE(contains(*listing,
                         "meta nfproto ipv4 limit rate 30/minute log prefix "
                         "\"Firewall: *TCP_OUT Blocked* \" flags skuid"))
        << *listing;
    EXPECT_TRUE(contains(*listing,
                         "meta nfproto ipv6 limit rate 30/minute log prefix "
                         "\"Firewall: *TCP6OUT Blocked* \" flags skuid"))
        << *listing;
    // The bytecode as the kernel holds it: burst 5, level 4 (warn), the uid flag.
    const RunResult debug =
        run(*ns_, {"nft", "--debug=netlink", "list", "chain", "inet", table_, nft::kChainJudge});
    EXPECT_TRUE(contains(debug.output(), "[ limit rate 30/minute burst 5 type packets flags 0x0 ]"))
        << debug.output();
    EXPECT_TRUE(contains(debug.output(), "[ log prefix Firewall: *TCP_OUT Blocked*  level 4 uid ]"))
        << debug.output();

    s.log_uid = false;
    ASSERT_NO_FATAL_FAILURE(apply_and_compare(s));
}

TEST_F(CsfRulesetTest, RedirectRulesetIsAcceptedAndListedAsRendered) {
    nft::RulesetSpec s = spec();
    s.redirect = true;
    ASSERT_NO_FATAL_FAILURE(apply_and_compare(s));
    s.allow_local = false;
    s.verdict = nft::Verdict::Drop;
    s.log_blocked = true;
    ASSERT_NO_FATAL_FAILURE(apply_and_compare(s));
}

// SMTP_REDIRECT flipped by a reload: the nat chain comes and goes in the same
// transaction as everything else, the blocked set's counters stay.
TEST_F(CsfRulesetTest, RedirectFlipsAddAndRemoveTheNatChainKeepingCounters) {
    auto mta = SmtpListener::start(*ns_, {25}, "mta.test");
    ASSERT_TRUE(mta) << mta.error().message();
    nft::RulesetSpec s = spec();
    s.allow_local = false;  // so that bob's SYNs to 127.0.0.1 are judged and counted
    ASSERT_NO_FATAL_FAILURE(apply_and_compare(s));
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    EXPECT_EQ(blocked_count(kBob.uid), 1U);

    s.redirect = true;
    auto on = engine_->engine().apply(nft::build_ruleset(s));
    ASSERT_TRUE(on) << on.error().message();
    EXPECT_TRUE(on->counters_kept) << on->note;
    auto listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing);
    EXPECT_EQ(without_counters(*listing), nft::render_nft(nft::build_ruleset(s)));
    // Redirected now (to the same local address and port): connected, counted once.
    const ConnectResult redirected = connect_as(*ns_, kBob, "127.0.0.1", 25);
    EXPECT_EQ(redirected.outcome, Outcome::Connected) << redirected.describe();
    EXPECT_EQ(redirected.greeting, SmtpListener::greeting_for("mta.test"));
    EXPECT_EQ(blocked_count(kBob.uid), 2U);

    // A reload that keeps SMTP_REDIRECT on keeps the nat chain (same hook, priority and
    // type) like the filter chains: the same chain, by its handle.
    const auto chain_header = [&] {
        const std::string text =
            run(*ns_, {"nft", "-a", "list", "chain", "inet", table_, nft::kChainToMta}).out;
        const std::size_t at = text.find("chain " + std::string(nft::kChainToMta) + " {");
        return at == std::string::npos ? std::string() : text.substr(at, text.find('\n', at) - at);
    };
    const std::string before = chain_header();
    EXPECT_TRUE(contains(before, "# handle ")) << before;
    s.allow_uids = {0, 2001};
    auto again = engine_->engine().apply(nft::build_ruleset(s));
    ASSERT_TRUE(again) << again.error().message();
    EXPECT_EQ(chain_header(), before);
    EXPECT_TRUE(again->counters_kept) << again->note;
    listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing);
    EXPECT_EQ(without_counters(*listing), nft::render_nft(nft::build_ruleset(s)));
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Connected);
    EXPECT_EQ(blocked_count(kBob.uid), 3U);

    s.redirect = false;
    auto off = engine_->engine().apply(nft::build_ruleset(s));
    ASSERT_TRUE(off) << off.error().message();
    EXPECT_TRUE(off->counters_kept) << off->note;
    listing = nft_list_table(*ns_, table_);
    ASSERT_TRUE(listing);
    EXPECT_EQ(without_counters(*listing), nft::render_nft(nft::build_ruleset(s)));
    EXPECT_FALSE(contains(*listing, nft::kChainToMta));
    EXPECT_EQ(connect_as(*ns_, kBob, "127.0.0.1", 25).outcome, Outcome::Refused);
    EXPECT_EQ(blocked_count(kBob.uid), 4U);
}

// --- CSF's own rules next to ours -------------------------------------------------

// detect_csf_rules() run inside ns (in a child that joins it), its explanation back.
Result<std::string> explain_in(const Netns& ns, bool csf_mode) {
    auto pipe = testing::make_pipe();
    if (!pipe)
        return std::unexpected(pipe.error());
    auto child = testing::spawn_in(ns, [&]() -> int {
        const std::string text = csf::explain(csf::detect_csf_rules(), csf_mode);
        return testing::write_all(pipe->write.get(), text.data(), text.size()) ? 0 : 1;
    });
    if (!child)
        return std::unexpected(child.error());
    pipe->write.reset();
    std::string out;
    (void)testing::read_until_eof(pipe->read.get(), out, std::chrono::steady_clock::now() + 60s);
    const auto status = child->wait();
    if (!status)
        return std::unexpected(status.error());
    if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0)
        return fail(0, "detect_csf_rules in " + ns.name(), describe_status(*status));
    return out;
}

// CSF's SMTP_BLOCK as `csf -r` loads it (iptables-nft here), in a namespace of its own.
TEST(CsfRulesDetection, SeesCsfsChainsAndExplainsThem) {
    if (auto why = skip_reason())
        GTEST_SKIP() << *why;
    auto ns = Netns::create();
    ASSERT_TRUE(ns) << ns.error().message();
    auto clean = explain_in(*ns, false);
    ASSERT_TRUE(clean) << clean.error().message();
    EXPECT_EQ(*clean, "");

    const std::string rules =
        "*filter\n:SMTPOUTPUT - [0:0]\n-A OUTPUT -j SMTPOUTPUT\n"
        "-A SMTPOUTPUT -o lo -p tcp -m multiport --dports 25,465,587 -j ACCEPT\n"
        "-A SMTPOUTPUT -p tcp -m multiport --dports 25,465,587 -m owner --gid-owner 8 -j "
        "ACCEPT\n"
        "-A SMTPOUTPUT -p tcp -m multiport --dports 25,465,587 -m owner --uid-owner 0 -j "
        "ACCEPT\n"
        "-A SMTPOUTPUT -p tcp -m multiport --dports 25,465,587 -j REJECT\nCOMMIT\n";
    auto tmp = TempDir::create();
    ASSERT_TRUE(tmp) << tmp.error().message();
    const std::string file = tmp->write("csf.rules", rules);
    for (const char* restore : {"iptables-nft-restore", "ip6tables-nft-restore"}) {
        const RunResult r = run(*ns, {"sh", "-c", std::string(restore) + " < " + file});
        if (r.exit_code != 0 && contains(r.output(), "not found"))
            GTEST_SKIP() << restore << " is not installed";
        ASSERT_EQ(r.exit_code, 0) << r.describe();
    }
    auto loaded = explain_in(*ns, false);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_TRUE(contains(*loaded,
                         "CSF's own SMTP_BLOCK rules are loaded as well (iptables: chain "
                         "SMTPOUTPUT with 4 rule(s), 1 of them refusing or dropping, "
                         "hooked into OUTPUT; ip6tables: chain SMTPOUTPUT with 4 "
                         "rule(s), 1 of them refusing or dropping, hooked into OUTPUT)"))
        << *loaded;
}

// --- smtpfenced --csf-conf, end to end -------------------------------------------

const std::string kCsfData = std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data/csf";

// The full-size DirectAdmin csf.conf of the unit tests' corpus (SMTP_BLOCK on, the
// usual groups, IPv6 on, REJECT, logging on) with some settings' lines replaced.
std::string directadmin_csf_conf(const std::vector<std::pair<std::string, std::string>>& set = {}) {
    std::string text = read_file(kCsfData + "/csf-directadmin.conf");
    for (const auto& [key, value] : set) {
        const std::string start = "\n" + key + " = \"";
        const std::size_t at = text.find(start);
        if (at == std::string::npos) {
            ADD_FAILURE() << key << " not in the corpus file";
            continue;
        }
        const std::size_t end = text.find('\n', at + 1);
        text.replace(at + 1, end - at - 1, key + " = \"" + value + "\"");
    }
    return text;
}

class CsfDaemonTest : public FenceTest {
  protected:
    void write_csf(const std::string& text) { csf_path_ = dir_->write("csf.conf", text); }

    // smtpfenced --csf-conf csf.conf, with an empty smtpfence.conf beside it. When the
    // file enforces nothing there is no table to wait for: the log says so instead.
    void start_csf(const std::string& csf_text, bool enforcing = true) {
        write_csf(csf_text);
        write_config("");
        DaemonArgs args;
        args.table = table_;
        args.config = config_path_;
        args.passwd = passwd_path_;
        args.group = group_path_;
        args.work_dir = dir_->path();
        args.extra = {"--csf-conf", csf_path_, "--no-worker"};
        if (!enforcing)
            args.ready_log_text = "nothing is enforced";
        auto daemon = Daemon::start(topo_->server, std::move(args));
        ASSERT_TRUE(daemon) << daemon.error().message();
        daemon_ = std::make_unique<Daemon>(std::move(*daemon));
    }

    bool table_exists() {
        auto exists = server_engine().table_exists(table_);
        EXPECT_TRUE(exists) << exists.error().message();
        return exists && *exists;
    }

    std::string listing() {
        auto text = nft_list_table(topo_->server, table_);
        EXPECT_TRUE(text) << text.error().message();
        return text ? *text : std::string();
    }

    std::string csf_path_;
};

TEST_F(CsfDaemonTest, SmtpBlockOneRefusesOrdinaryUsersLetsRootAndGroupMailThrough) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf()));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        for (const std::uint16_t port : kSmtpPorts)
            expect_refused(kBob, remote, port);
        expect_connected(kRoot, remote, 25);
        expect_connected(kErin, remote, 587);  // primary group mail (SMTP_ALLOWGROUP)
    }
    expect_connected(kBob, Topology::kRemote4, 80);  // not an SMTP port
    EXPECT_TRUE(contains(daemon_->log(), "config " + csf_path_)) << daemon_->log();
}

TEST_F(CsfDaemonTest, SmtpBlockZeroLetsEveryUserConnectAndSaysSo) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_BLOCK", "0"}}), false));
    EXPECT_FALSE(table_exists());
    expect_connected(kBob, Topology::kRemote4, 25);
    expect_connected(kBob, Topology::kRemote6, 465);
    EXPECT_TRUE(
        contains(daemon_->log(), "SMTP_BLOCK is \"0\" in " + csf_path_ + ": nothing is enforced"))
        << daemon_->log();
}

TEST_F(CsfDaemonTest, SmtpPortsGuardThoseAndOnlyThose) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_PORTS", " 2525 , 465"}})));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        expect_refused(kBob, remote, 2525);
        expect_refused(kBob, remote, 465);
        expect_connected(kBob, remote, 25);
        expect_connected(kBob, remote, 587);
    }
}

TEST_F(CsfDaemonTest, SmtpAllowUserLetsThatUserThrough) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_ALLOWUSER", "alice"}})));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        expect_connected(kAlice, remote, 25);
        expect_refused(kBob, remote, 25);
    }
}

// CSF matched the primary group only (--gid-owner); a supplementary member gets through
// here as well.
TEST_F(CsfDaemonTest, SmtpAllowGroupLetsPrimaryAndSupplementaryMembersThrough) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_ALLOWGROUP", "webmail"}})));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        expect_connected(kDave, remote, 25);   // primary group webmail
        expect_connected(kCarol, remote, 25);  // supplementary member
        expect_refused(kBob, remote, 25);
        expect_refused(kErin, remote, 25);  // mail is no longer listed
    }
}

TEST_F(CsfDaemonTest, SmtpAllowLocalKeepsTheServersOwnAddressesOpen) {
    auto local = SmtpListener::start(topo_->server, kSmtpPorts, kServerHost);
    ASSERT_TRUE(local) << local.error().message();
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_ALLOWLOCAL", "1"}})));
    for (const char* own : {"127.0.0.1", "::1", Topology::kServer4, Topology::kServer6})
        expect_connected(kBob, own, 25, kServerHost);
    expect_refused(kBob, Topology::kRemote4, 25);
}

TEST_F(CsfDaemonTest, SmtpAllowLocalZeroGuardsThemToo) {
    auto local = SmtpListener::start(topo_->server, kSmtpPorts, kServerHost);
    ASSERT_TRUE(local) << local.error().message();
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_ALLOWLOCAL", "0"}})));
    for (const char* own : {"127.0.0.1", "::1", Topology::kServer4, Topology::kServer6})
        expect_refused(kBob, own, 25);
    expect_connected(kRoot, "127.0.0.1", 25, kServerHost);
}

// DROP_OUT = "DROP": no reset comes back, the caller waits until it gives up.
TEST_F(CsfDaemonTest, DropOutDropLetsTheCallerTimeOut) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"DROP_OUT", "DROP"}})));
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        const ConnectResult r = connect_as(topo_->server, kBob, remote, 25, 1500ms);
        EXPECT_EQ(r.outcome, Outcome::TimedOut) << remote << ": " << r.describe() << "\n"
                                                << diagnostics();
    }
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    expect_connected(kRoot, Topology::kRemote4, 25);
    EXPECT_TRUE(contains(listing(), "\t\tdrop\n")) << listing();
}

// SMTP_REDIRECT = "1": the blocked user's connection to a remote port 25 lands on the
// local MTA, over IPv4 and IPv6; each attempt is counted once; root still goes out.
TEST_F(CsfDaemonTest, SmtpRedirectSendsBlockedUsersToTheLocalMta) {
    auto local = SmtpListener::start(topo_->server, kSmtpPorts, kServerHost);
    ASSERT_TRUE(local) << local.error().message();
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"SMTP_REDIRECT", "1"}})));
    int attempts = 0;
    for (const char* remote : {Topology::kRemote4, Topology::kRemote6}) {
        for (const std::uint16_t port : kSmtpPorts) {
            expect_connected(kBob, remote, port, kServerHost);
            ++attempts;
        }
    }
    expect_connected(kRoot, Topology::kRemote4, 25, kRemoteHost);
    expect_connected(kErin, Topology::kRemote6, 25, kRemoteHost);  // group mail: not redirected
    EXPECT_EQ(remote_smtp_->accepted(), 2U) << "a blocked user reached the remote server";
    EXPECT_EQ(local->accepted(), static_cast<std::uint64_t>(attempts));
    auto counts = server_engine().read_blocked(table_);
    ASSERT_TRUE(counts) << counts.error().message();
    ASSERT_TRUE(counts->contains(kBob.uid)) << diagnostics();
    EXPECT_EQ(counts->at(kBob.uid).packets, static_cast<std::uint64_t>(attempts));
    EXPECT_FALSE(counts->contains(kRoot.uid));
    EXPECT_TRUE(contains(listing(), "chain " + std::string(nft::kChainToMta))) << listing();
}

// DROP_OUT_LOGGING with DROP_UID_LOGGING: CSF's log lines, rate-limited, with the uid.
// (The lines themselves cannot be read here: the kernel logs nothing from a network
// namespace unless net.netfilter.nf_log_all_netns, a host-wide setting, is on.)
TEST_F(CsfDaemonTest, DropOutLoggingPutsCsfsLogRulesInTheTable) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf()));
    const std::string text = listing();
    EXPECT_TRUE(contains(text,
                         "meta nfproto ipv4 limit rate 30/minute log prefix \"Firewall: "
                         "*TCP_OUT Blocked* \" flags skuid"))
        << text;
    EXPECT_TRUE(contains(text,
                         "meta nfproto ipv6 limit rate 30/minute log prefix \"Firewall: "
                         "*TCP6OUT Blocked* \" flags skuid"))
        << text;
    const RunResult debug = run(topo_->server, {"nft", "--debug=netlink", "list", "chain", "inet",
                                                table_, nft::kChainJudge});
    EXPECT_TRUE(contains(debug.output(), "[ limit rate 30/minute burst 5 type packets flags 0x0 ]"))
        << debug.output();
    EXPECT_TRUE(contains(debug.output(), "[ log prefix Firewall: *TCP6OUT Blocked*  level 4 uid ]"))
        << debug.output();
    expect_refused(kBob, Topology::kRemote4, 25);
}

TEST_F(CsfDaemonTest, LoggingWithoutUidOrWithoutDropLogging) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"DROP_UID_LOGGING", "0"}})));
    std::string text = listing();
    EXPECT_TRUE(contains(text, "log prefix \"Firewall: *TCP_OUT Blocked* \"\n")) << text;
    EXPECT_FALSE(contains(text, "flags skuid")) << text;

    // DROP_LOGGING = "0": CSF wrote no line for blocked SYNs then.
    write_csf(directadmin_csf_conf({{"DROP_LOGGING", "0"}}));
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until([&] { return !contains(listing(), "log prefix"); }, 10s, 100ms))
        << listing() << daemon_->log();
    EXPECT_TRUE(contains(daemon_->log(), "DROP_OUT_LOGGING: on, but DROP_LOGGING is off"))
        << daemon_->log();
}

// IPV6 = "0" left IPv6 open under CSF; here it is guarded all the same, with a note.
TEST_F(CsfDaemonTest, Ipv6ZeroStillBlocksIpv6) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf({{"IPV6", "0"}})));
    expect_refused(kBob, Topology::kRemote6, 25);
    expect_refused(kBob, Topology::kRemote6, 587);
    expect_refused(kBob, Topology::kRemote4, 25);
    EXPECT_TRUE(contains(daemon_->log(), "IPV6: \"0\": CSF loaded no IPv6 rule")) << daemon_->log();
}

// An edit of csf.conf is applied without a signal; a broken edit leaves the rules in
// force and the log names the line; SIGHUP re-reads as well.
TEST_F(CsfDaemonTest, EditsAreAppliedBrokenOnesLoggedWithTheirLine) {
    ASSERT_NO_FATAL_FAILURE(start_csf(directadmin_csf_conf()));
    expect_refused(kAlice, Topology::kRemote4, 25);

    write_csf(directadmin_csf_conf({{"SMTP_ALLOWUSER", "alice"}}));
    ASSERT_TRUE(wait_until(
        [&] { return connect(kAlice, Topology::kRemote4, 25).outcome == Outcome::Connected; }, 10s,
        100ms))
        << "the edit was not applied\n"
        << diagnostics();

    // Unquoted: CSF itself refuses to load this file.
    std::string broken = directadmin_csf_conf({{"SMTP_ALLOWUSER", "alice"}});
    const std::size_t at = broken.find("\nSMTP_BLOCK = \"1\"");
    ASSERT_NE(at, std::string::npos);
    broken.replace(at + 1, 16, "SMTP_BLOCK = 0");
    const int line =
        static_cast<int>(std::count(broken.begin(),
                                    broken.begin() + static_cast<std::ptrdiff_t>(at + 1), '\n')) +
        1;
    write_csf(broken);
    const std::string where = csf_path_ + ":" + std::to_string(line);
    ASSERT_TRUE(wait_until([&] { return contains(daemon_->log(), where); }, 10s, 100ms))
        << daemon_->log();
    EXPECT_TRUE(contains(daemon_->log(), "the rules in force are unchanged")) << daemon_->log();
    expect_connected(kAlice, Topology::kRemote4, 25);
    expect_refused(kBob, Topology::kRemote4, 25);

    // Fixed, and SMTP_BLOCK switched off by the same edit: the table goes.
    write_csf(directadmin_csf_conf({{"SMTP_BLOCK", "0"}}));
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until([&] { return !table_exists(); }, 10s, 100ms)) << daemon_->log();
    expect_connected(kBob, Topology::kRemote4, 25);

    // And on again.
    write_csf(directadmin_csf_conf());
    ASSERT_TRUE(wait_until([&] { return table_exists(); }, 10s, 100ms)) << daemon_->log();
    ASSERT_TRUE(wait_until(
        [&] { return connect(kBob, Topology::kRemote4, 25).outcome == Outcome::Refused; }, 5s,
        100ms))
        << diagnostics();
}

}  // namespace
}  // namespace smtpfence::itest
