// The attempt history's read side (nfq/history_query.h) against a history.db built with
// plain SQL on the schema: every filter of `attempts`, the per-uid scope, `top` from
// whole days in `daily` and partial days in `records`, the query plans, a missing file
// and a file of another version. The daemon's query children: test_history_child.cpp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/local_time.h"
#include "ctl/children.h"
#include "ctl/history_child.h"
#include "nfq/attempt_log.h"
#include "nfq/history_query.h"
#include "nfq/history_schema.h"
#include "tests/support/child.h"
#include "tests/support/history_rows.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/history_fixture.h"

namespace smtpfence {
namespace {

using namespace htest;  // NOLINT(google-build-using-namespace): the fixture's names

TEST_F(HistoryQueryTest, AMissingFileIsAnEmptyHistory) {
    TempDir empty;
    auto reader = HistoryReader::open(empty.path());
    ASSERT_TRUE(reader.has_value()) << reader.error().message();
    EXPECT_FALSE(reader->exists());
    const auto page = reader->attempts({});
    ASSERT_TRUE(page.has_value());
    EXPECT_TRUE(page->records.empty());
    EXPECT_FALSE(page->more);
    EXPECT_EQ(reader->top({}).value(), json::array());
    // Nothing was created by reading.
    EXPECT_FALSE(std::filesystem::exists(empty.path() + "/" + nfq::history::kFileName));
}

TEST_F(HistoryQueryTest, AnotherSchemaVersionIsRefusedNamingTheFileAndBoth) {
    ASSERT_TRUE(file.db().exec("PRAGMA user_version = 7").has_value());
    auto reader = HistoryReader::open(dir.path());
    ASSERT_FALSE(reader.has_value());
    EXPECT_EQ(reader.error().message(),
              dir.path() +
                  "/history.db: schema version 7, this smtpfenced reads version 1 (a "
                  "newer or older smtpfence wrote it)");
}

TEST_F(HistoryQueryTest, RecordsAreInTheFormatOfTheStream) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    const auto page = attempts({.user = "shop"});
    ASSERT_EQ(page.records.size(), 2U);
    nfq::Attempt a{.time = day0(5000),
                   .uid = kBob,
                   .gid = kBob,
                   .user = "bob",
                   .account = "shop",
                   .identified = true,
                   .pid = 0,
                   .exe = "/usr/bin/perl",
                   .cwd = "/home/bob",
                   .cmdline = "perl spam.pl",
                   .family = "ipv4",
                   .src = "192.0.2.1",
                   .dst = "198.51.100.7",
                   .sport = 40000,
                   .dport = 587};
    EXPECT_EQ(page.records[0], json::parse(nfq::to_json_line(a)));
    const nfq::CountedOnly c{
        .time = day0(6000), .uid = kBob, .user = "bob", .account = "shop", .count = 5};
    EXPECT_EQ(page.records[1], json::parse(nfq::to_json_line(c)));
    // Unidentified: no process fields at all.
    const json w = attempts({.user = "www-data"}).records.at(0);
    EXPECT_EQ(w.at("identified"), false);
    EXPECT_FALSE(w.contains("exe"));
    EXPECT_EQ(attempts({.dst = "2001:db8::1"}).records.at(0).at("family"), "ipv6");
}

TEST_F(HistoryQueryTest, EveryFilterNarrows) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    const std::int64_t next_day = day(1, 100) - day0();
    EXPECT_EQ(epochs({}), (std::vector<std::int64_t>{3600, 4000, 5000, 6000, 7200, next_day}));
    // user: the user name, the account or the uid, as the log's filter had it.
    EXPECT_EQ(epochs({.user = "bob"}), (std::vector<std::int64_t>{5000, 6000}));
    EXPECT_EQ(epochs({.user = "alice"}), (std::vector<std::int64_t>{3600, 4000, 7200, next_day}));
    EXPECT_EQ(epochs({.user = "33"}), (std::vector<std::int64_t>{4000}));
    EXPECT_EQ(epochs({.user = "www-data"}), (std::vector<std::int64_t>{4000}));
    EXPECT_TRUE(epochs({.user = "nobody"}).empty());
    EXPECT_EQ(epochs({.account = "shop"}), (std::vector<std::int64_t>{5000, 6000}));
    EXPECT_TRUE(epochs({.account = "bob"}).empty());  // the user is not the account
    EXPECT_EQ(epochs({.exe = "/usr/bin/php"}), (std::vector<std::int64_t>{3600, 7200, next_day}));
    EXPECT_TRUE(epochs({.exe = "/usr/bin/ph"}).empty());  // exact
    // Any spelling of the address the worker wrote.
    EXPECT_EQ(epochs({.dst = "2001:DB8:0:0::1"}), (std::vector<std::int64_t>{7200}));
    EXPECT_EQ(epochs({.dst = "198.51.100.7"}), (std::vector<std::int64_t>{5000}));
    // [since, until)
    EXPECT_EQ(epochs({.since = day0(4000), .until = day0(6000)}),
              (std::vector<std::int64_t>{4000, 5000}));
    EXPECT_EQ(epochs({.user = "alice", .since = day0(3601), .until = day0(7200)}),
              (std::vector<std::int64_t>{4000}));
    EXPECT_EQ(epochs({.account = "alice", .exe = "/usr/bin/php", .since = day(1)}),
              (std::vector<std::int64_t>{next_day}));
}

TEST_F(HistoryQueryTest, ABadAddressIsAnInvalidArgumentNamingIt) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    auto reader = HistoryReader::open(dir.path());
    ASSERT_TRUE(reader.has_value());
    for (const std::string bad : {"mail.example", "198.51.100.0/24", "1.2.3.4.5"}) {
        const auto page = reader->attempts({.dst = bad});
        ASSERT_FALSE(page.has_value()) << bad;
        EXPECT_EQ(page.error().code, EINVAL);
        EXPECT_EQ(page.error().what, "dst \"" + bad + "\"");
        EXPECT_EQ(page.error().detail, "not an IPv4 or IPv6 address");
    }
    EXPECT_EQ(reader->attempts({.limit = 0}).error().code, EINVAL);
    EXPECT_EQ(reader->attempts({.limit = HistoryReader::kMaxLimit + 1}).error().code, EINVAL);
}

TEST_F(HistoryQueryTest, TheNewestLimitInTimeOrderAndWhetherMoreMatched) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    const auto two = attempts({.limit = 2});
    ASSERT_EQ(two.records.size(), 2U);
    EXPECT_TRUE(two.more);
    EXPECT_EQ(two.records[0].at("epoch"), day0(7200));
    EXPECT_EQ(two.records[1].at("epoch"), day(1, 100));
    EXPECT_FALSE(attempts({.limit = 6}).more);
    EXPECT_TRUE(attempts({.limit = 5}).more);
    const auto bob_one = attempts({.user = "bob", .limit = 1});
    EXPECT_TRUE(bob_one.more);
    EXPECT_EQ(bob_one.records.at(0).at("type"), "counted");
}

// A peer that is not an admin: its own uid's records whatever it asks for.
TEST_F(HistoryQueryTest, TheScopeOfOneUidIsNeverWidened) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    EXPECT_EQ(epochs({.only_uid = kBob}), (std::vector<std::int64_t>{5000, 6000}));
    EXPECT_TRUE(epochs({.user = "alice", .only_uid = kBob}).empty());
    EXPECT_TRUE(epochs({.user = "1001", .only_uid = kBob}).empty());
    EXPECT_TRUE(epochs({.account = "alice", .only_uid = kBob}).empty());
    EXPECT_TRUE(epochs({.exe = "/usr/bin/php", .only_uid = kBob}).empty());
    EXPECT_TRUE(epochs({.dst = "2001:db8::1", .only_uid = kBob}).empty());
    // alice's account holds the web server's attempt too: not hers to see.
    EXPECT_EQ(epochs({.account = "alice", .only_uid = kAlice}).size(), 3U);
    EXPECT_EQ(epochs({.account = "alice", .only_uid = kWww}), (std::vector<std::int64_t>{4000}));

    const json mine = top({.since = day0(), .only_uid = kWww});
    ASSERT_EQ(mine.size(), 1U) << mine.dump();
    EXPECT_EQ(mine[0].at("account"), "alice");
    EXPECT_EQ(mine[0].at("attempts"), 1);
    EXPECT_EQ(mine[0].at("users"), json({"www-data"}));
    EXPECT_EQ(top({.since = day0(), .only_uid = 4242}), json::array());
}

TEST_F(HistoryQueryTest, TopRanksAccountsAsTheLogDid) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    const json all = top({.since = day0()});
    ASSERT_EQ(all.size(), 2U) << all.dump();
    EXPECT_EQ(all[0], json({{"account", "shop"},
                            {"attempts", 6},
                            {"explained", 1},
                            {"counted_only", 5},
                            {"users", {"bob"}},
                            {"last_epoch", day0(6000)},
                            {"last_cwd", "/home/bob"},
                            {"last_exe", "/usr/bin/perl"}}));
    EXPECT_EQ(all[1], json({{"account", "alice"},
                            {"attempts", 4},
                            {"explained", 4},
                            {"counted_only", 0},
                            {"users", {"alice", "www-data"}},
                            {"last_epoch", day(1, 100)},
                            {"last_cwd", "/home/alice/site"},
                            {"last_exe", "/usr/bin/php"}}));
    // The first day only, to its end: alice 3, shop 6; ties would go by name.
    const json first = top({.since = day0(), .until = day(1)});
    EXPECT_EQ(first[1].at("attempts"), 3) << first.dump();
}

// Whole local days come from `daily`, the part of a day before the first whole one and
// after the last from `records`: rows in one table only show which was read.
TEST_F(HistoryQueryTest, TopReadsWholeDaysFromDailyAndPartialDaysFromRecords) {
    const auto only_records = [&](const HistoryRow& r) {
        ASSERT_TRUE(file.add(r, /*daily=*/false).has_value());
    };
    const auto only_daily = [&](const HistoryRow& r) {
        ASSERT_TRUE(file.add_daily(r).has_value());
    };
    only_records(bob(day0(5000)));           // partial first day: counted
    only_daily(bob(day0(4000), 100));        // its daily row: not
    only_daily(bob(day(1, 10), 20));         // whole day: counted
    only_records(bob(day(1, 20), 1000));     // its record: not
    only_daily(bob(day(2, 10), 300));        // the partial last day's daily row: not
    only_records(bob(day(2, 10), 4000));     // its record: counted
    only_records(bob(day(2, 7000), 50000));  // at until: not
    const json rows = top({.since = day0(4500), .until = day(2, 7000)});
    ASSERT_EQ(rows.size(), 1U) << rows.dump();
    EXPECT_EQ(rows[0].at("explained"), 1) << rows.dump();
    EXPECT_EQ(rows[0].at("counted_only"), 20 + 4000) << rows.dump();
    EXPECT_EQ(rows[0].at("last_cwd"), "/home/bob");

    // Without until, every day from the first whole one on is read from daily.
    const json open_ended = top({.since = day0(4500)});
    EXPECT_EQ(open_ended[0].at("counted_only"), 20 + 300) << open_ended.dump();
    // From a midnight: no partial first day.
    EXPECT_EQ(top({.since = day(1)})[0].at("explained"), 0);
    // Within one day: records only.
    EXPECT_EQ(top({.since = day(2, 1), .until = day(2, 7001)})[0].at("counted_only"), 54000);
}

// Every combination of filters walks indexes in time order, in both passes: never a
// scan of records, never a sort of every match ("USE TEMP B-TREE FOR ORDER BY").
TEST_F(HistoryQueryTest, EveryFilterCombinationWalksAnIndexInTimeOrder) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    // An executable run from more folders than the query reads as branches.
    for (int i = 0; i < 70; ++i) {
        HistoryRow r = alice(day0(i));
        r.exe = "/usr/bin/many";
        r.cwd = "/home/alice/" + std::to_string(i);
        ASSERT_TRUE(file.add(r).has_value());
    }
    for (unsigned mask = 0; mask < 128; ++mask) {
        AttemptQuery q;
        const auto set = [&](unsigned bit) { return (mask & (1U << bit)) != 0; };
        if (set(0))
            q.user = set(6) ? "1001" : "alice";
        if (set(1))
            q.account = "alice";
        if (set(2))
            q.exe = set(6) ? "/usr/bin/many" : "/usr/bin/php";
        if (set(3))
            q.dst = "198.51.100.7";
        if (set(4))
            q.since = day0(1);
        if (set(5))
            q.only_uid = kAlice;
        auto branches = nfq::attempts_branches(file.db(), q);
        ASSERT_TRUE(branches.has_value()) << branches.error().message();
        ASSERT_FALSE(branches->empty()) << "mask " << mask;
        for (const nfq::AttemptBranch& b : *branches) {
            for (const auto pass : {nfq::AttemptPass::Keys, nfq::AttemptPass::Records}) {
                const std::string sql = nfq::attempts_sql(q, b, pass);
                auto plan = file.db().prepare("EXPLAIN QUERY PLAN " + sql);
                ASSERT_TRUE(plan.has_value()) << plan.error().message();
                std::string details;
                while (plan->step().value_or(false))
                    details += plan->text(3) + "\n";
                const std::string where = "mask " + std::to_string(mask) + ": " + sql + "\n";
                EXPECT_EQ(details.find("TEMP B-TREE"), std::string::npos) << where << details;
                EXPECT_EQ(details.find("SCAN r"), std::string::npos) << where << details;
                EXPECT_NE(details.find("SEARCH r USING "), std::string::npos) << where << details;
                EXPECT_NE(details.find("INDEX " + b.index + " "), std::string::npos)
                    << where << details;
            }
        }
    }
    // A handful of processes: one branch each; more: time alone.
    EXPECT_EQ(nfq::attempts_branches(file.db(), {.exe = "/usr/bin/php"})->size(), 1U);
    EXPECT_EQ(nfq::attempts_branches(file.db(), {.exe = "/usr/bin/many"})->at(0).index,
              "records_epoch");
    EXPECT_TRUE(nfq::attempts_branches(file.db(), {.exe = "/usr/bin/none"})->empty());
    EXPECT_EQ(epochs({.exe = "/usr/bin/many", .limit = 3}),
              (std::vector<std::int64_t>{67, 68, 69}));
}

// Branches are merged in time order, each record once (a user's account and uid both
// hold it), ties in one second in the order written.
TEST_F(HistoryQueryTest, BranchesAreMergedInTimeOrderEachRecordOnce) {
    for (int i = 0; i < 12; ++i) {
        HistoryRow r = alice(day0(100 + i / 2));  // two a second
        r.cwd = "/home/alice/" + std::to_string(i % 3);
        r.pid = i;
        ASSERT_TRUE(file.add(r).has_value());
    }
    std::vector<std::int64_t> pids;
    for (const json& j : attempts({.exe = "/usr/bin/php", .limit = 5}).records)
        pids.push_back(j.at("pid").get<std::int64_t>());
    EXPECT_EQ(pids, (std::vector<std::int64_t>{7, 8, 9, 10, 11}));
    EXPECT_EQ(attempts({.user = "alice", .limit = 100}).records.size(), 12U);
    EXPECT_EQ(attempts({.user = "1001", .limit = 12}).more, false);
    EXPECT_EQ(attempts({.user = "1001", .limit = 11}).more, true);
}

}  // namespace
}  // namespace smtpfence
