// Malformed configuration files: the corpus in data/config/ (cases.tsv says, for each
// file, whether the loader must refuse it and on which line, or accept it and which
// ports it then guards), plus what is made at run time: a 10 MB line, a file over the
// 16 MiB cap, a directory and a symlink loop given as the config path.
//
// A refused file must give an error naming file and line (or the file, when it cannot
// be read at all), `smtpfenced --once` must exit 2 and program nothing, and a running
// daemon reloaded (SIGHUP) with it must keep exactly the rules in force.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "tests/adversarial/attack.h"
#include "tests/integration/fence_test.h"

namespace smtpfence::itest {
namespace {

namespace fs = std::filesystem;

struct Case {
    std::string file;     // path of the case file
    bool refuse = false;  // the loader must refuse it
    int line = 0;         // refuse: the line the error names
    std::string ports;    // accept: the guarded ports, "25,465,587"
    std::string why;
};

std::vector<Case> corpus() {
    const std::string dir = std::string(SMTPFENCE_ADVERSARIAL_DATA) + "/config";
    std::ifstream in(dir + "/cases.tsv");
    std::vector<Case> cases;
    std::string row;
    while (std::getline(in, row)) {
        if (row.empty() || row[0] == '#')
            continue;
        std::vector<std::string> f;
        std::istringstream cols(row);
        for (std::string col; std::getline(cols, col, '\t');)
            f.push_back(col);
        if (f.size() < 4)
            continue;
        Case c{dir + "/" + f[0], f[1] == "refuse", 0, "", f[3]};
        if (c.refuse)
            c.line = std::stoi(f[2]);
        else
            c.ports = f[2];
        cases.push_back(std::move(c));
    }
    return cases;
}

std::size_t count(const std::string& haystack, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = haystack.find(needle); pos != std::string::npos;
         pos = haystack.find(needle, pos + 1))
        ++n;
    return n;
}

// A message a terminal shows safely: no control bytes but newline and tab.
bool is_clean_text(const std::string& s) {
    return std::none_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u < 0x20 && c != '\n' && c != '\t') || u == 0x7f;
    });
}

class ConfigCorpusTest : public FenceTest {
  protected:
    struct Snapshot {
        std::set<std::uint32_t> allow_uid;
        std::string listing;
        bool operator==(const Snapshot&) const = default;
    };

    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        cases_ = corpus();
        ASSERT_GE(cases_.size(), 40U) << "corpus not found under " << SMTPFENCE_ADVERSARIAL_DATA;
        // The rules in force: alice allowed. Every broken file below that were applied
        // even in part would change the table or the allowlist.
        ASSERT_NO_FATAL_FAILURE(start_daemon(kGood, {"--no-worker"}));
        before_ = snapshot();
        ASSERT_TRUE(before_.allow_uid.contains(kAlice.uid)) << diagnostics();
    }

    static constexpr const char* kGood = "SMTP_BLOCK = \"1\"\nSMTP_ALLOWUSER = \"alice\"\n";

    Snapshot snapshot() {
        Snapshot s;
        if (auto u = server_engine().read_u32_set(table_, "allow_uid"))
            s.allow_uid = *u;
        auto listing = nft_list_table(topo_->server, table_);
        s.listing = listing ? *listing : "error: " + listing.error().message();
        return s;
    }

    void expect_rules_unchanged(const std::string& after) {
        EXPECT_TRUE(daemon_->running()) << "after " << after << "\n" << diagnostics();
        const Snapshot now = snapshot();
        EXPECT_EQ(now.allow_uid, before_.allow_uid) << "after " << after;
        EXPECT_EQ(now.listing, before_.listing) << "after " << after;
    }

    // smtpfenced --once with config on a table of its own (which must stay absent
    // when the config is refused).
    RunResult once(const std::string& config, const std::string& table) {
        return run(topo_->server,
                   {smtpfenced_path(), "--once", "--config", config, "--table", table, "--passwd",
                    passwd_path_, "--group", group_path_, "--state-dir", dir_->path() + "/state",
                    "--virtual-dir", dir_->path() + "/virtual"},
                   std::nullopt, 30s);
    }

    bool table_exists(const std::string& table) {
        return run(topo_->server, {"nft", "list", "table", "inet", table}).exit_code == 0;
    }

    // A refused config: exit code, the message naming where, nothing programmed.
    void expect_once_refuses(const std::string& config, const std::string& where, int expected_exit,
                             const std::string& what) {
        const std::string probe = table_ + "_once";
        const RunResult r = once(config, probe);
        EXPECT_EQ(r.exit_code, expected_exit) << what << ": " << r.describe().substr(0, 2000);
        EXPECT_NE(r.err.find(where), std::string::npos)
            << what << ": no \"" << where << "\" in: " << r.err.substr(0, 2000);
        EXPECT_TRUE(is_clean_text(r.err)) << what << ": raw control bytes in the message";
        EXPECT_LT(r.err.size(), 4096U) << what << ": a message of " << r.err.size() << " bytes";
        EXPECT_FALSE(table_exists(probe)) << what << ": --once programmed a refused config";
        expect_rules_unchanged(what + " (--once)");
    }

    // The daemon's config replaced by content (or by whatever prepare() makes at its
    // path), then SIGHUP: an error naming where is logged, the rules stay.
    void expect_reload_refuses(const std::function<void()>& prepare, const std::string& where,
                               const std::string& what) {
        const std::size_t seen = count(daemon_->log(), where);
        prepare();
        daemon_->signal(SIGHUP);
        const bool logged =
            wait_until([&] { return count(daemon_->log(), where) > seen; }, 10s, 20ms);
        EXPECT_TRUE(logged) << what << ": no new \"" << where << "\" in the log:\n"
                            << daemon_->log().substr(0, 4000);
        expect_rules_unchanged(what + " (SIGHUP)");
    }

    void put_config_bytes(const std::string& bytes) {
        std::error_code ec;
        fs::remove_all(config_path_, ec);
        std::ofstream(config_path_, std::ios::binary) << bytes;
    }

    std::vector<Case> cases_;
    Snapshot before_;
};

TEST_F(ConfigCorpusTest, OnceRefusesEveryBrokenFileNamingFileAndLine) {
    for (const Case& c : cases_) {
        if (c.refuse)
            expect_once_refuses(c.file, c.file + ":" + std::to_string(c.line) + ":", 2,
                                fs::path(c.file).filename().string() + " (" + c.why + ")");
    }
}

TEST_F(ConfigCorpusTest, SighupWithEveryBrokenFileKeepsTheRulesInForce) {
    for (const Case& c : cases_) {
        if (!c.refuse)
            continue;
        const std::string bytes = read_file(c.file);
        expect_reload_refuses([&] { put_config_bytes(bytes); },
                              config_path_ + ":" + std::to_string(c.line) + ":",
                              fs::path(c.file).filename().string() + " (" + c.why + ")");
    }
    expect_refused(kBob, Topology::kRemote4, 25);
    expect_connected(kAlice, Topology::kRemote4, 25);
}

TEST_F(ConfigCorpusTest, TolerableFilesAreReadAsCsfReadsThem) {
    int n = 0;
    for (const Case& c : cases_) {
        if (c.refuse)
            continue;
        const std::string what = fs::path(c.file).filename().string() + " (" + c.why + ")";
        const std::string probe = table_ + "_ok" + std::to_string(n++);
        const RunResult r = once(c.file, probe);
        EXPECT_EQ(r.exit_code, 0) << what << ": " << r.describe();
        const RunResult set = run(topo_->server, {"nft", "list", "set", "inet", probe, "ports"});
        // "elements = { 25, 465, 587 }" -> "25,465,587"
        std::string ports;
        if (const auto open = set.out.find("elements = {"); open != std::string::npos) {
            for (auto i = open + 12; i < set.out.size() && set.out[i] != '}'; ++i) {
                if (set.out[i] != ' ' && set.out[i] != '\n' && set.out[i] != '\t')
                    ports.push_back(set.out[i]);
            }
        }
        EXPECT_EQ(ports, c.ports) << what << ": " << set.describe();
        expect_rules_unchanged(what);
    }
}

TEST_F(ConfigCorpusTest, TenMegabyteLinesAreRefusedWithAShortMessage) {
    const std::string big(std::size_t{10} << 20U, 'a');
    for (const auto& [name, content] :
         {std::pair<std::string, std::string>{
              "long-value.conf", "SMTP_BLOCK = \"1\"\nSMTP_ALLOWUSER = \"" + big + "\"\n"},
          {"long-key.conf", "SMTP_BLOCK = \"1\"\n" + big + " = \"1\"\n"},
          {"long-unquoted.conf", "SMTP_BLOCK = \"1\"\nSMTP_PORTS = " + big + "\n"}}) {
        const std::string path = dir_->write(name, content);
        expect_once_refuses(path, path + ":2:", 2, name);
        expect_reload_refuses([&] { put_config_bytes(content); }, config_path_ + ":2:", name);
    }
}

// Files smtpfenced cannot read at all. The message names the file and the rules
// stay; the exit code is not asserted here (see the DISABLED_ test below).
TEST_F(ConfigCorpusTest, UnreadableConfigPathsNameTheFileAndKeepTheRules) {
    const std::string d = dir_->path();
    fs::create_directory(d + "/a-directory");
    fs::create_symlink(d + "/loop-b", d + "/loop-a");
    fs::create_symlink(d + "/loop-a", d + "/loop-b");
    {
        std::ofstream huge(d + "/huge.conf");
        huge << "# " << std::string((std::size_t{16} << 20U) + 10, 'x') << "\n";
    }
    for (const std::string& path :
         {d + "/a-directory", d + "/loop-a", d + "/huge.conf", d + "/does-not-exist.conf"}) {
        const std::string probe = table_ + "_unreadable";
        const RunResult r = once(path, probe);
        EXPECT_NE(r.exit_code, 0) << path << ": " << r.describe();
        EXPECT_NE(r.err.find(path), std::string::npos) << path << ": " << r.describe();
        EXPECT_FALSE(table_exists(probe)) << path;
        expect_rules_unchanged(path + " (--once)");
    }
    expect_reload_refuses(
        [&] {
            fs::remove_all(config_path_);
            fs::create_directory(config_path_);
        },
        config_path_ + ": Is a directory", "config path a directory");
    expect_reload_refuses(
        [&] {
            fs::remove_all(config_path_);
            fs::create_symlink(config_path_, config_path_);
        },
        config_path_ + ": Too many levels of symbolic links", "config path a symlink loop");
    expect_reload_refuses(
        [&] {
            fs::remove_all(config_path_);
            fs::copy_file(d + "/huge.conf", config_path_);
        },
        config_path_ + ": File too large", "config over 16 MiB");
    expect_refused(kBob, Topology::kRemote4, 25);
    expect_connected(kAlice, Topology::kRemote4, 25);
}

// docs/commands.md: exit code 2 is "bad arguments or configuration", 1 "the kernel or the system
// refused". A config path that is a directory, a symlink loop or over the size cap is
// a configuration mistake of the admin's, and the brief of issue 9 asks for 2.
TEST_F(ConfigCorpusTest, UnreadableConfigPathsExitWithTheConfigurationCode) {
    const std::string d = dir_->path();
    fs::create_directory(d + "/a-directory");
    fs::create_symlink(d + "/loop-b", d + "/loop-a");
    fs::create_symlink(d + "/loop-a", d + "/loop-b");
    for (const std::string& path : {d + "/a-directory", d + "/loop-a"})
        expect_once_refuses(path, path, 2, path);
}

}  // namespace
}  // namespace smtpfence::itest
