// A restart with a changed configuration: the daemon stops (SIGTERM, its table stays
// in force), the config changes one setting that adds or removes a chain, set or rule,
// and a new daemon starts while a blocked uid floods a remote port 25. Each setting
// both ways, with the table owned and not: the new daemon must take the table over
// (adopting it when owned, issue 16), serve and enforce exactly the new config, and not
// one of the flood's connections may get through meanwhile.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using json = nlohmann::json;

constexpr std::uint64_t kMinAttempts = 200;

struct Change {
    std::string to_after;   // the test's name when going from before to after
    std::string to_before;  // and back
    std::string before;     // config lines
    std::string after;
};

struct RestartCase {
    std::string name;
    std::string before;
    std::string after;
    bool needs_ownership = false;  // a kernel with persistent owned tables (Linux 6.9)
};

// gtest names a failing case by its parameter.
void PrintTo(const RestartCase& c, std::ostream* os) {
    *os << c.name;
}

std::string owner_line(bool owned) {
    return std::string("TABLE_OWNER = \"") + (owned ? "1" : "0") + "\"\n";
}

// The flood's connects wait up to 5 s each for an answer and it looks for its stop
// signal every 32 connects, so dropped SYNs would stall it for minutes. The DROP_OUT
// cases therefore run with SMTP_REDIRECT on: the blocked SYNs go to the local MTA
// (nothing listens: refused) and never reach the judge's last rule, the one DROP_OUT
// changes; they check that rule's change and that nothing gets through meanwhile.
const std::string kRedirect = "SMTP_REDIRECT = \"1\"\n";

std::vector<RestartCase> restart_cases() {
    const std::vector<Change> changes = {
        {"SmtpRedirectOn", "SmtpRedirectOff", "SMTP_REDIRECT = \"0\"\n", "SMTP_REDIRECT = \"1\"\n"},
        {"DropOutDrop", "DropOutReject", kRedirect + "DROP_OUT = \"REJECT\"\n",
         kRedirect + "DROP_OUT = \"DROP\"\n"},
        {"DropOutLoggingOn", "DropOutLoggingOff", "DROP_OUT_LOGGING = \"0\"\n",
         "DROP_OUT_LOGGING = \"1\"\n"},
        {"DropUidLoggingOn", "DropUidLoggingOff",
         "DROP_OUT_LOGGING = \"1\"\nDROP_UID_LOGGING = \"0\"\n",
         "DROP_OUT_LOGGING = \"1\"\nDROP_UID_LOGGING = \"1\"\n"},
        {"SmtpAllowLocalOff", "SmtpAllowLocalOn", "SMTP_ALLOWLOCAL = \"1\"\n",
         "SMTP_ALLOWLOCAL = \"0\"\n"},
        {"SmtpPortsAdd", "SmtpPortsRemove", "SMTP_PORTS = \"25,465,587\"\n",
         "SMTP_PORTS = \"25,465,587,2525\"\n"},
        {"NfqueueNumChange", "NfqueueNumBack", "NFQUEUE_NUM = \"2525\"\n",
         "NFQUEUE_NUM = \"2600\"\n"},
    };
    std::vector<RestartCase> out;
    for (const Change& c : changes) {
        for (const bool owned : {true, false}) {
            const std::string owner = owner_line(owned);
            const std::string suffix = owned ? "_Owned" : "_NotOwned";
            out.push_back({c.to_after + suffix, c.before + owner, c.after + owner, owned});
            out.push_back({c.to_before + suffix, c.after + owner, c.before + owner, owned});
        }
    }
    out.push_back({"TableOwnerOn", owner_line(false), owner_line(true), true});
    out.push_back({"TableOwnerOff", owner_line(true), owner_line(false), true});
    return out;
}

// The listing without the elements the kernel adds to the dynamic sets (the blocked
// uids' counters and rate limits), which a dry run cannot know. (test_csf.cpp's
// without_counters does the same for `blocked` alone.)
std::string without_dynamic_elements(const std::string& listing) {
    std::istringstream in(listing);
    std::string out;
    std::string line;
    bool dynamic = false;
    bool elements = false;
    while (std::getline(in, line)) {
        if (line == "\tset " + std::string(nft::kSetBlocked) + " {" ||
            line == "\tset " + std::string(nft::kSetObserveRate) + " {")
            dynamic = true;
        else if (line == "\t}")
            dynamic = false;
        elements = elements || (dynamic && line.starts_with("\t\telements = "));
        if (!elements)
            out += line + "\n";
        else if (line.ends_with("}"))
            elements = false;  // the last line of the element list
    }
    return out;
}

class RestartTest : public FenceTest, public ::testing::WithParamInterface<RestartCase> {
  protected:
    // Config lines common to both daemons: alice allowed, bob (the flood) blocked.
    static std::string config(const std::string& lines) {
        return "SMTP_BLOCK = \"1\"\nSMTP_ALLOWUSER = \"alice\"\n" + lines;
    }

    // What `smtpfencectl apply --dry-run` prints for the config file now.
    std::string dry_run() {
        const RunResult r = run(
            topo_->server, {smtpfencectl_path(), "apply", "--dry-run", "--config", config_path_,
                            "--table", table_, "--passwd", passwd_path_, "--group", group_path_});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return r.out;
    }

    json status() {
        const RunResult r = run(
            topo_->server,
            {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock", "status", "--json"});
        return json::parse(r.out, nullptr, false);
    }
};

TEST_P(RestartTest, TheNewConfigTakesOverUnderAFlood) {
    const RestartCase& c = GetParam();
    if (c.needs_ownership) {
        auto owned = server_engine().probe_ownership(table_ + "-probe");
        ASSERT_TRUE(owned) << owned.error().message();
        if (!*owned)
            GTEST_SKIP() << "this kernel has no persistent owned tables (Linux < 6.9)";
    }
    ASSERT_NO_FATAL_FAILURE(start_daemon(config(c.before)));
    auto stopped = daemon_->stop();
    ASSERT_TRUE(stopped) << stopped.error().message();
    ASSERT_EQ(*stopped, 0) << describe_status(*stopped) << "\n" << diagnostics();
    daemon_.reset();

    auto flood = ConnectFlood::start(topo_->server, kBob, Topology::kRemote4, 25, kMinAttempts);
    ASSERT_TRUE(flood) << flood.error().message();
    // Returns at once: the table the first daemon left exists.
    ASSERT_NO_FATAL_FAILURE(start_daemon(config(c.after)));
    const std::string want = dry_run();
    std::string have;
    const bool enforced = wait_until(
        [&] {
            auto listing = nft_list_table(topo_->server, table_);
            have = listing ? without_dynamic_elements(*listing) : listing.error().message();
            return have == want;
        },
        10s, 50ms);
    auto counts = flood->finish();
    ASSERT_TRUE(counts) << counts.error().message();

    EXPECT_TRUE(enforced) << "the kernel does not hold the new config's ruleset\n--- dry run:\n"
                          << want << "--- kernel:\n"
                          << have << diagnostics();
    EXPECT_TRUE(daemon_->running()) << diagnostics();
    const json s = status();
    EXPECT_TRUE(s.value("enforcing", false)) << s.dump();
    EXPECT_FALSE(s.contains("config_error")) << s.dump();
    EXPECT_EQ(counts->connected, 0U) << "connections of a blocked uid got through";
    EXPECT_EQ(counts->other, 0U) << "unexpected connect() errors, last: "
                                 << errno_text(counts->last_other_errno);
    EXPECT_GE(counts->refused, kMinAttempts);
    EXPECT_EQ(remote_smtp_->accepted(), 0U);
    expect_refused(kBob, Topology::kRemote4, 25);
    expect_connected(kAlice, Topology::kRemote4, 25);
}

INSTANTIATE_TEST_SUITE_P(RestartMatrix, RestartTest, ::testing::ValuesIn(restart_cases()),
                         [](const ::testing::TestParamInfo<RestartCase>& p) {
                             return p.param.name;
                         });

}  // namespace
}  // namespace smtpfence::itest
