// `smtpfencectl attempts` and `top` against a real smtpfenced, from a history.db the
// test writes with SQL (tests/support/history_rows.h): who sees what under
// CONTROL_READ = "all" (each user only their own uid, root everything), and the daemon
// answering `status` while several queries run in its children.
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/sqlite.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"
#include "tests/support/history_rows.h"

namespace smtpfence::itest {
namespace {

using nlohmann::json;
using testing::HistoryFile;
using testing::HistoryRow;

class HistoryTest : public FenceTest {
  protected:
    // history.db in the state directory the daemon will use, before it starts.
    HistoryFile history() {
        const std::string state = dir_->path() + "/state";
        std::filesystem::create_directories(state);
        auto file = HistoryFile::create(state);
        EXPECT_TRUE(file.has_value()) << file.error().message();
        return std::move(file.value());
    }

    static HistoryRow row(const Credentials& who, std::int64_t epoch, std::uint64_t counted = 0) {
        return {.epoch = epoch,
                .uid = who.uid,
                .gid = who.gid,
                .user = who.name,
                .account = who.name,
                .count = counted,
                .pid = 1234,
                .exe = counted == 0 ? "/usr/bin/php" : "",
                .cwd = "/home/" + who.name,
                .cmdline = "php send.php"};
    }

    RunResult ctl(std::vector<std::string> args, const std::optional<Credentials>& who = {}) {
        args.insert(args.begin(),
                    {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock"});
        return run(topo_->server, args, who, 20s);
    }
    json ctl_json(std::vector<std::string> args, const std::optional<Credentials>& who = {}) {
        args.emplace_back("--json");
        const RunResult r = ctl(args, who);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        json j = json::parse(r.out, nullptr, false);
        EXPECT_TRUE(j.is_object()) << r.describe();
        return j;
    }
};

std::set<std::uint32_t> uids_of(const json& records) {
    std::set<std::uint32_t> out;
    for (const json& r : records)
        out.insert(r.at("uid").get<std::uint32_t>());
    return out;
}

TEST_F(HistoryTest, AUserSeesOnlyTheirOwnRecordsAndTotalsAndRootSeesAll) {
    const std::int64_t now = std::time(nullptr);
    {
        HistoryFile file = history();
        for (const HistoryRow& r : {row(kAlice, now - 50), row(kAlice, now - 40),
                                    row(kBob, now - 30), row(kBob, now - 20, 7)}) {
            ASSERT_TRUE(file.add(r).has_value());
        }
    }
    ASSERT_NO_FATAL_FAILURE(
        start_daemon("SMTP_BLOCK = \"1\"\nCONTROL_READ = \"all\"\n", {"--no-worker"}));

    json mine = ctl_json({"attempts"}, kAlice);
    EXPECT_EQ(uids_of(mine["records"]), std::set<std::uint32_t>{kAlice.uid}) << mine.dump();
    EXPECT_EQ(mine["shown"], 2);
    EXPECT_EQ(mine["only_uid"], kAlice.uid);
    // Asking for another user's records narrows to nothing; it never widens.
    for (const std::vector<std::string>& filter :
         {std::vector<std::string>{"--user", "bob"}, {"--account", "bob"}, {"--user", "2002"}}) {
        std::vector<std::string> args{"attempts"};
        args.insert(args.end(), filter.begin(), filter.end());
        const json none = ctl_json(args, kAlice);
        EXPECT_TRUE(none["records"].empty()) << filter[1] << ": " << none.dump();
    }
    const RunResult text = ctl({"attempts"}, kAlice);
    EXPECT_EQ(text.exit_code, 0) << text.describe();
    EXPECT_NE(text.out.find("only uid 2001's"), std::string::npos) << text.out;
    const json bobs = ctl_json({"top", "--since", "1h"}, kBob);
    ASSERT_EQ(bobs["accounts"].size(), 1U) << bobs.dump();
    EXPECT_EQ(bobs["accounts"][0]["account"], "bob");
    EXPECT_EQ(bobs["accounts"][0]["attempts"], 8);

    const json all = ctl_json({"attempts"});
    EXPECT_EQ(uids_of(all["records"]), (std::set<std::uint32_t>{kAlice.uid, kBob.uid}));
    EXPECT_FALSE(all.contains("only_uid"));
    const json ranked = ctl_json({"top", "--since", "1h"});
    ASSERT_EQ(ranked["accounts"].size(), 2U) << ranked.dump();
    EXPECT_EQ(ranked["accounts"][0]["account"], "bob");
    EXPECT_EQ(ranked["accounts"][1]["account"], "alice");
    EXPECT_EQ(ranked["accounts"][1]["attempts"], 2);
    const json bob_only = ctl_json({"attempts", "--user", "bob", "--limit", "1"});
    EXPECT_EQ(bob_only["records"][0]["type"], "counted") << bob_only.dump();
    EXPECT_EQ(bob_only["more"], true);

    const RunResult bad = ctl({"attempts", "--dst", "mail.example"});
    EXPECT_EQ(bad.exit_code, 2) << bad.describe();
    EXPECT_NE(bad.err.find("--dst \"mail.example\""), std::string::npos) << bad.describe();
    const RunResult bad_until = ctl({"top", "--until", "soon"});
    EXPECT_EQ(bad_until.exit_code, 2) << bad_until.describe();
    EXPECT_NE(bad_until.err.find("--until \"soon\""), std::string::npos) << bad_until.describe();
}

// The queries run in the daemon's children: its loop answers status meanwhile, and
// each query its own answer.
TEST_F(HistoryTest, StatusIsAnsweredWhileFourQueriesRun) {
    constexpr int kRecords = 20000;
    const std::int64_t now = std::time(nullptr);
    {
        HistoryFile file = history();
        ASSERT_TRUE(file.db().exec("BEGIN").has_value());
        for (int i = 0; i < kRecords; ++i)
            ASSERT_TRUE(file.add(row(i % 2 == 0 ? kAlice : kBob, now - kRecords + i)).has_value());
        ASSERT_TRUE(file.db().exec("COMMIT").has_value());
    }
    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\n", {"--no-worker"}));

    std::vector<json> answers(4);
    std::vector<std::thread> queries;
    for (std::size_t i = 0; i < answers.size(); ++i) {
        queries.emplace_back([&, i] {
            answers[i] =
                ctl_json({"attempts", "--user", i % 2 == 0 ? "alice" : "bob", "--limit", "100000"});
        });
    }
    const json status = ctl_json({"status"});
    for (std::thread& t : queries)
        t.join();
    EXPECT_EQ(status.value("enforcing", false), true) << status.dump();
    for (std::size_t i = 0; i < answers.size(); ++i) {
        EXPECT_EQ(answers[i].value("shown", 0), kRecords / 2) << i;
        EXPECT_EQ(answers[i].value("more", true), false) << i;
        EXPECT_EQ(uids_of(answers[i]["records"]),
                  std::set<std::uint32_t>{i % 2 == 0 ? kAlice.uid : kBob.uid});
    }
}

}  // namespace
}  // namespace smtpfence::itest
