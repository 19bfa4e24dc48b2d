// The journal entries of docs/journal.md, read back from a real systemd-journald
// (tests/support/journald.h: private, in a mount namespace of its own) that the daemon
// and its worker write to as under systemd: an explained attempt and a counted batch
// from the worker, a self-heal and a configuration error from the daemon, each with
// its MESSAGE_ID and fields, found by journalctl's own matches; hostile folder and
// command-line bytes stay escaped inside their fields.
#include <sys/stat.h>

#include <filesystem>
#include <set>

#include "common/journal.h"
#include "common/text.h"
#include "nft/ruleset.h"
#include "tests/support/journald.h"
#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

using testing::PrivateJournald;
namespace fs = std::filesystem;

std::string id_match(journal::Kind kind) {
    return "MESSAGE_ID=" + std::string(journal::message_id(kind));
}

// A field of an entry as journalctl -o json prints it: a string, or "" when it is
// missing or not a string (a binary or repeated field, which must not happen).
std::string field(const Json& entry, const std::string& name) {
    const auto it = entry.find(name);
    return it != entry.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::set<std::string> smtpfence_fields(const Json& entry) {
    std::set<std::string> names;
    for (const auto& [name, value] : entry.items()) {
        if (name.starts_with("SMTPFENCE_"))
            names.insert(name);
    }
    return names;
}

class JournalTest : public WorkerTest {
  protected:
    void SetUp() override {
        WorkerTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        auto dir = itest::TempDir::create({"sft-journal", "/tmp", 0700});
        ASSERT_TRUE(dir) << dir.error().message();
        journal_dir_.emplace(std::move(*dir));
        auto journald = PrivateJournald::start(journal_dir_->path());
        ASSERT_TRUE(journald) << journald.error().message();
        journald_.emplace(std::move(*journald));
    }
    // The daemon (and so its worker) stop before journald does.
    void TearDown() override { daemon_.reset(); }

    // smtpfenced in journald's mount namespace, its stderr a journal stream and
    // JOURNAL_STREAM naming it, as systemd starts the service.
    void start_daemon_with_journal() {
        auto stream = journald_->open_stream("smtpfenced");
        ASSERT_TRUE(stream) << stream.error().message();
        itest::DaemonArgs args = daemon_args();
        args.mount_ns = journald_->mount_ns();
        args.stderr_fd = stream->fd.get();
        args.env = {"JOURNAL_STREAM=" + stream->journal_stream};
        auto daemon = itest::Daemon::start(topo_->server, std::move(args));
        ASSERT_TRUE(daemon) << daemon.error().message() << "\n" << journal_text();
        daemon_.emplace(std::move(*daemon));
    }

    // The entries matching matches once pred holds for them (bounded wait).
    std::vector<Json> wait_for_entries(const std::vector<std::string>& matches,
                                       const std::function<bool(const std::vector<Json>&)>& pred,
                                       Millis timeout = 10s) {
        std::vector<Json> found;
        const bool ok = itest::wait_until(
            [&] {
                auto e = journald_->entries(matches);
                found = e ? std::move(*e) : std::vector<Json>{};
                return pred(found);
            },
            timeout, 50ms);
        EXPECT_TRUE(ok) << "journal entries matching " << ::testing::PrintToString(matches)
                        << " not as expected in time: " << found.size() << " found\n"
                        << journal_text() << diagnostics();
        return found;
    }

    // Every entry's MESSAGE, for failure messages.
    std::string journal_text() {
        auto all = journald_->entries();
        if (!all)
            return all.error().message() + "\njournald: " + journald_->journald_log();
        std::string text = "journal:\n";
        for (const Json& e : *all)
            text +=
                "  " + e.value("SYSLOG_IDENTIFIER", "?") + ": " + e.value("MESSAGE", "?") + "\n";
        return text;
    }

    std::optional<itest::TempDir> journal_dir_;
    std::optional<PrivateJournald> journald_;
};

TEST_F(JournalTest, ExplainedAttemptsAndCountedBatchAreEntriesFoundByAccount) {
    ASSERT_NO_FATAL_FAILURE(start_daemon_with_journal());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    // One process, 8 connects: kExplainPerProcess explained, the rest counted only.
    constexpr std::uint64_t kConnects = 8;
    auto c = start_connector(kBob, site_of(kBob),
                             {"--count", std::to_string(kConnects), Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    auto exit = c->wait(15s);
    ASSERT_TRUE(exit) << exit.error().message();
    expect_exact_totals({{kBob.uid, kConnects}});
    // The journal says what the history says: the same explained attempts (at most
    // kExplainPerProcess: one whose SYN the reconciler counted first is counted) and
    // the rest in counted batches.
    const std::size_t explained = read_attempt_log(state_dir()).attempts_of(kBob.uid).size();
    ASSERT_GE(explained, 1U) << diagnostics();
    ASSERT_LE(explained, kExplainPerProcess) << diagnostics();

    const std::vector<std::string> bob = {"SMTPFENCE_ACCOUNT=bob"};
    auto attempts = wait_for_entries({id_match(journal::Kind::Attempt), bob[0]},
                                     [&](const auto& e) { return e.size() >= explained; });
    ASSERT_EQ(attempts.size(), explained) << journal_text();
    std::string cmdline = c->argv().front();
    for (std::size_t i = 1; i < c->argv().size(); ++i)
        cmdline += " " + c->argv()[i];
    for (const Json& e : attempts) {
        SCOPED_TRACE(e.dump());
        EXPECT_EQ(field(e, "MESSAGE_ID"), journal::kAttemptId);
        EXPECT_EQ(field(e, "PRIORITY"), "5");
        EXPECT_EQ(field(e, "SYSLOG_IDENTIFIER"), "smtpfence-worker");
        EXPECT_TRUE(field(e, "MESSAGE").starts_with("direct SMTP attempt refused: uid 2002 (bob"));
        EXPECT_EQ(field(e, "SMTPFENCE_ACCOUNT"), "bob");
        EXPECT_EQ(field(e, "SMTPFENCE_USER"), "bob");
        EXPECT_EQ(field(e, "SMTPFENCE_UID"), std::to_string(kBob.uid));
        EXPECT_EQ(field(e, "SMTPFENCE_PID"), std::to_string(c->pid()));
        EXPECT_EQ(field(e, "SMTPFENCE_EXE"), connector());
        EXPECT_EQ(field(e, "SMTPFENCE_CWD"), site_of(kBob));
        EXPECT_EQ(field(e, "SMTPFENCE_CMDLINE"), cmdline);
        EXPECT_EQ(field(e, "SMTPFENCE_DESTINATION"), Topology::kRemote4);
        EXPECT_EQ(field(e, "SMTPFENCE_PORT"), "25");
    }
    std::uint64_t counted = 0;
    const auto counted_sum = [&](const std::vector<Json>& entries) {
        counted = 0;
        for (const Json& e : entries)
            counted += text::parse_unsigned(field(e, "SMTPFENCE_COUNT"), 1000).value_or(0);
        return counted >= kConnects - explained;
    };
    auto batches = wait_for_entries({id_match(journal::Kind::Counted), bob[0]}, counted_sum);
    EXPECT_EQ(counted, kConnects - explained) << journal_text();
    for (const Json& e : batches) {
        SCOPED_TRACE(e.dump());
        EXPECT_EQ(field(e, "SMTPFENCE_UID"), std::to_string(kBob.uid));
        EXPECT_EQ(field(e, "SMTPFENCE_USER"), "bob");
        EXPECT_NE(field(e, "MESSAGE").find("counted, not explained"), std::string::npos);
    }
    // Written once: as entries, not also as plain lines on the worker's stderr.
    auto all = journald_->entries();
    ASSERT_TRUE(all) << all.error().message();
    std::size_t lines = 0;
    for (const Json& e : *all) {
        if (field(e, "MESSAGE").starts_with("direct SMTP attempt refused: ")) {
            ++lines;
            EXPECT_EQ(field(e, "MESSAGE_ID"), journal::kAttemptId) << e.dump();
        }
    }
    EXPECT_EQ(lines, explained) << journal_text();
    // The daemon's own lines reach the journal through its stderr stream.
    auto daemon_lines = journald_->entries({"SYSLOG_IDENTIFIER=smtpfenced"});
    ASSERT_TRUE(daemon_lines) << daemon_lines.error().message();
    EXPECT_FALSE(daemon_lines->empty()) << journal_text();
}

TEST_F(JournalTest, HostileFolderAndCommandLineStayEscapedInTheirFields) {
    // A folder and an executable name with a quote, a backslash, a newline and what
    // would be a field of its own after it; the same bytes on the command line.
    const std::string hostile = "a\"b\\c\nMESSAGE=forged";
    const std::string cwd = site_of(kAlice) + "/" + hostile;
    fs::create_directories(cwd);
    ASSERT_EQ(::chown(cwd.c_str(), kAlice.uid, kAlice.gid), 0);
    const std::string exe = dir_->path() + "/bin/x\"y\\z\nSMTPFENCE_ACCOUNT=mallory";
    fs::copy_file(connector(), exe);
    ASSERT_EQ(::chmod(exe.c_str(), 0755), 0);
    const std::string tag = "t\"q\\r\nPRIORITY=0\x01";

    ASSERT_NO_FATAL_FAILURE(start_daemon_with_journal());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    connector_path_ = exe;
    // Two connects: explained both, or one when the reconciler counted the other first.
    auto c = start_connector(kAlice, cwd, {"--count", "2", "--tag", tag, Topology::kRemote4, "25"});
    ASSERT_TRUE(c) << c.error().message();
    auto exit = c->wait(15s);
    ASSERT_TRUE(exit) << exit.error().message();

    auto entries = wait_for_entries({id_match(journal::Kind::Attempt), "SMTPFENCE_ACCOUNT=alice"},
                                    [](const auto& e) { return !e.empty(); });
    ASSERT_FALSE(entries.empty()) << journal_text();
    const Json& e = entries.front();
    SCOPED_TRACE(e.dump());
    EXPECT_EQ(field(e, "SMTPFENCE_CWD"), text::printable(cwd, journal::kValueMaxChars));
    EXPECT_EQ(field(e, "SMTPFENCE_EXE"), text::printable(exe, journal::kValueMaxChars));
    EXPECT_EQ(field(e, "SMTPFENCE_CMDLINE"),
              text::printable(exe + " --count 2 --tag " + tag + " " + Topology::kRemote4 + " 25",
                              journal::kValueMaxChars));
    EXPECT_NE(field(e, "SMTPFENCE_CWD").find("a\"b\\\\c\\x0aMESSAGE=forged"), std::string::npos);
    // Every field one plain string: nothing repeated, nothing binary, nothing added.
    for (const auto& [name, value] : e.items())
        EXPECT_TRUE(value.is_string()) << name << " is not one plain string";
    EXPECT_EQ(field(e, "PRIORITY"), "5");
    EXPECT_EQ(field(e, "SMTPFENCE_ACCOUNT"), "alice");
    EXPECT_EQ(
        smtpfence_fields(e),
        (std::set<std::string>{"SMTPFENCE_ACCOUNT", "SMTPFENCE_USER", "SMTPFENCE_UID",
                               "SMTPFENCE_PID", "SMTPFENCE_EXE", "SMTPFENCE_CWD",
                               "SMTPFENCE_CMDLINE", "SMTPFENCE_DESTINATION", "SMTPFENCE_PORT"}));
    for (const char* forged : {"MESSAGE=forged", "SMTPFENCE_ACCOUNT=mallory", "PRIORITY=0"}) {
        auto found = journald_->entries({std::string(forged)});
        ASSERT_TRUE(found) << found.error().message();
        EXPECT_TRUE(found->empty()) << forged << " became a field\n" << journal_text();
    }
    // The human line is one line too.
    EXPECT_EQ(field(e, "MESSAGE").find('\n'), std::string::npos);
}

// The reject rule's handle in chain judge, from `nft -a`.
std::string reject_rule_handle(const Netns& ns, const std::string& table) {
    const auto r = itest::run(ns, {"nft", "-a", "list", "chain", "inet", table, nft::kChainJudge});
    const std::string key = "reject with tcp reset # handle ";
    const auto at = r.out.rfind(key);
    if (at == std::string::npos)
        return {};
    return r.out.substr(at + key.size(), r.out.find('\n', at) - at - key.size());
}

TEST_F(JournalTest, SelfHealAndConfigErrorOfTheDaemonAreEntries) {
    // Unowned, so that nft may change the table and the daemon restores it.
    write_config("SMTP_BLOCK = \"1\"\nTABLE_OWNER = \"0\"\n");
    ASSERT_NO_FATAL_FAILURE(start_daemon_with_journal());
    const std::string handle = reject_rule_handle(topo_->server, table_);
    ASSERT_FALSE(handle.empty()) << diagnostics();
    const auto r = itest::run(topo_->server, {"nft", "delete", "rule", "inet", table_,
                                              nft::kChainJudge, "handle", handle});
    ASSERT_EQ(r.exit_code, 0) << r.describe();

    auto heals = wait_for_entries({id_match(journal::Kind::SelfHeal), "SMTPFENCE_TABLE=" + table_},
                                  [](const auto& e) { return !e.empty(); });
    ASSERT_FALSE(heals.empty());
    {
        const Json& e = heals.front();
        SCOPED_TRACE(e.dump());
        EXPECT_EQ(field(e, "SYSLOG_IDENTIFIER"), "smtpfenced");
        EXPECT_EQ(field(e, "PRIORITY"), "4");
        EXPECT_NE(field(e, "SMTPFENCE_CHANGED_BY").find("(nft)"), std::string::npos);
        EXPECT_NE(field(e, "SMTPFENCE_CHANGE"), "");
        EXPECT_EQ(field(e, "SMTPFENCE_RESTORED"), "yes");
        EXPECT_TRUE(text::is_all_digits(field(e, "SMTPFENCE_DURATION_US")));
        EXPECT_NE(field(e, "MESSAGE").find("; restored in "), std::string::npos);
    }
    EXPECT_FALSE(reject_rule_handle(topo_->server, table_).empty()) << "not restored";

    // A key the daemon does not know, seen by its watch on the file: the reload fails.
    write_config("SMTP_BLOCK = \"1\"\nTABLE_OWNER = \"0\"\nSMTP_BLOKC = \"1\"\n");
    auto errors = wait_for_entries({id_match(journal::Kind::ConfigError), "SMTPFENCE_WHEN=reload"},
                                   [](const auto& e) { return !e.empty(); });
    ASSERT_FALSE(errors.empty());
    const Json& e = errors.front();
    SCOPED_TRACE(e.dump());
    EXPECT_EQ(field(e, "PRIORITY"), "3");
    EXPECT_EQ(field(e, "SMTPFENCE_IN_FORCE"), "unchanged");
    EXPECT_NE(field(e, "SMTPFENCE_ERROR").find(config_path_ + ":3"), std::string::npos);
    EXPECT_NE(field(e, "SMTPFENCE_ERROR").find("unknown setting \"SMTP_BLOKC\""),
              std::string::npos);
    EXPECT_NE(field(e, "MESSAGE").find("reload failed: "), std::string::npos);
}

TEST_F(JournalTest, BrokenConfigAtStartIsAConfigErrorWithTheDefaultsInForce) {
    write_config("SMTP_BLOCK = \"1\"\nSMTP_PORTS = \"25,x\"\n");
    ASSERT_NO_FATAL_FAILURE(start_daemon_with_journal());
    auto errors = wait_for_entries({id_match(journal::Kind::ConfigError), "SMTPFENCE_WHEN=start"},
                                   [](const auto& e) { return !e.empty(); });
    ASSERT_EQ(errors.size(), 1U) << journal_text();
    const Json& e = errors.front();
    SCOPED_TRACE(e.dump());
    EXPECT_EQ(field(e, "SYSLOG_IDENTIFIER"), "smtpfenced");
    EXPECT_EQ(field(e, "SMTPFENCE_IN_FORCE"), "defaults");
    EXPECT_NE(field(e, "SMTPFENCE_ERROR").find(config_path_ + ":2"), std::string::npos);
    EXPECT_EQ(field(e, "MESSAGE"), field(e, "SMTPFENCE_ERROR"));
}

}  // namespace
}  // namespace smtpfence::wtest
