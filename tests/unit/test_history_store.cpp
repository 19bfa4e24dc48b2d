// The history's writer (nfq/history_store.h): what it writes, read back with the
// test's own SQL; recovery; retention; the import of the old JSON-lines log.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/local_time.h"
#include "common/sqlite.h"
#include "nfq/attempt_log.h"
#include "nfq/history_store.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

std::int64_t count_of(const std::string& dir, const std::string& sql) {
    auto db = sql::Database::open(dir + "/history.db", sql::Database::Mode::ReadOnly);
    EXPECT_TRUE(db) << db.error().message();
    if (!db)
        return -1;
    auto n = db->query_int(sql);
    EXPECT_TRUE(n) << n.error().message();
    return n && *n ? **n : -1;
}

Attempt attempt(std::uint32_t uid, std::time_t t, const std::string& exe = "/usr/bin/php8.2") {
    Attempt a;
    a.time = t;
    a.uid = uid;
    a.gid = uid;
    a.user = "user" + std::to_string(uid);
    a.account = a.user;
    a.identified = !exe.empty();
    a.pid = 4242;
    a.exe = exe;
    a.cwd = "/home/" + a.user + "/domains/example.com/public_html";
    a.cmdline = "php mailer.php";
    a.family = "ipv4";
    a.src = "192.0.2.1";
    a.sport = 40000;
    a.dst = "198.51.100.25";
    a.dport = 25;
    return a;
}

class HistoryStoreTest : public ::testing::Test {
  protected:
    HistoryStore open(HistoryLimits limits = {}) {
        auto s = HistoryStore::open(dir_.path(), limits);
        EXPECT_TRUE(s) << s.error().message();
        return std::move(*s);
    }
    std::int64_t count(const std::string& sql) { return count_of(dir_.path(), sql); }
    testing::TempDir dir_;
};

TEST_F(HistoryStoreTest, WritesEachRecordOnceWithItsProcessAndDailyTotals) {
    const std::time_t now = std::time(nullptr);
    {
        HistoryStore s = open();
        s.explained(attempt(1000, now));
        s.explained(attempt(1000, now + 1));
        s.explained(attempt(1001, now, ""));
        CountedOnly c;
        c.time = now + 2;
        c.uid = 1000;
        c.user = c.account = "user1000";
        c.count = 495;
        s.counted_only(c);
        ASSERT_TRUE(s.commit());
        EXPECT_EQ(s.counters().written, 4U);
        EXPECT_EQ(s.counters().write_errors, 0U);
    }
    EXPECT_EQ(count("SELECT count(*) FROM records"), 4);
    EXPECT_EQ(count("SELECT count(*) FROM procs"), 1) << "one process, interned once";
    EXPECT_EQ(count("SELECT sum(count) FROM records WHERE uid = 1000"), 497);
    EXPECT_EQ(count("SELECT count(*) FROM records WHERE proc IS NULL AND explained = 1"), 1);
    EXPECT_EQ(count("SELECT explained FROM daily WHERE uid = 1000 AND day = " +
                    std::to_string(local_day(now))),
              2);
    EXPECT_EQ(count("SELECT counted FROM daily WHERE uid = 1000"), 495);
    EXPECT_EQ(count("SELECT last_identified_epoch FROM daily WHERE uid = 1000"), now + 1);
    EXPECT_EQ(count("SELECT count(*) FROM daily WHERE uid = 1001 AND last_exe IS NULL"), 1);
}

TEST_F(HistoryStoreTest, TheFileIsPrivate) {
    { HistoryStore s = open(); }
    struct stat st {};
    ASSERT_EQ(::stat((dir_.path() + "/history.db").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600U);
}

TEST_F(HistoryStoreTest, RecoveryIsTheCheckpointAndTheAttemptsAfterIt) {
    const std::time_t now = std::time(nullptr);
    {
        HistoryStore s = open();
        s.explained(attempt(1000, now));
        Checkpoint cp;
        cp.time = now;
        cp.set_handle = 7;
        cp.kernel = {{1000, 12}, {1001, 3}};
        s.checkpoint(cp);
        s.explained(attempt(1000, now));  // held after the checkpoint
        s.explained(attempt(1001, now));
        ASSERT_TRUE(s.commit());
    }
    HistoryStore s = open();
    auto r = s.recover();
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_TRUE(r->checkpoint);
    EXPECT_EQ(r->checkpoint->set_handle, 7U);
    EXPECT_EQ(r->checkpoint->kernel,
              (std::map<std::uint32_t, std::uint64_t>{{1000, 12}, {1001, 3}}));
    EXPECT_EQ(r->explained_since, (std::map<std::uint32_t, std::uint64_t>{{1000, 1}, {1001, 1}}));
}

TEST_F(HistoryStoreTest, WhatWasNotCommittedIsNeitherRecordedNorCheckpointed) {
    const std::time_t now = std::time(nullptr);
    {
        HistoryStore s = open();
        Checkpoint cp;
        cp.time = now;
        cp.set_handle = 1;
        cp.kernel = {{1000, 1}};
        s.explained(attempt(1000, now));
        s.checkpoint(cp);
        ASSERT_TRUE(s.commit());
    }
    // A worker killed before its commit: a child process writes and dies with _exit.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        auto s = HistoryStore::open(dir_.path(), {});
        if (!s)
            _exit(2);
        s->explained(attempt(1000, now));
        Checkpoint cp;
        cp.time = now;
        cp.set_handle = 1;
        cp.kernel = {{1000, 2}};
        s->checkpoint(cp);
        _exit(0);  // no destructor: as kill -9
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    HistoryStore s = open();
    auto r = s.recover();
    ASSERT_TRUE(r) << r.error().message();
    ASSERT_TRUE(r->checkpoint);
    EXPECT_EQ(r->checkpoint->kernel.at(1000), 1U);
    EXPECT_TRUE(r->explained_since.empty());
    EXPECT_EQ(count("SELECT count(*) FROM records"), 1);
}

TEST_F(HistoryStoreTest, AFailedWriteLosesTheWholeBatchAndSaysSo) {
    const std::time_t now = std::time(nullptr);
    HistoryStore s = open();
    {
        // A write that fails: the test's own trigger refuses uid 666.
        auto db = sql::Database::open(dir_.path() + "/history.db", sql::Database::Mode::Create);
        ASSERT_TRUE(db);
        ASSERT_TRUE(
            db->exec("CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.uid = 666 "
                     "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"));
    }
    s.explained(attempt(1000, now));
    s.explained(attempt(666, now));
    Checkpoint cp;
    cp.time = now;
    cp.set_handle = 3;
    cp.kernel = {{1000, 1}, {666, 1}};
    s.checkpoint(cp);
    s.explained(attempt(1001, now));
    auto r = s.commit();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("refused by the test"), std::string::npos)
        << r.error().message();
    EXPECT_NE(r.error().message().find("a batch of 2 record(s)"), std::string::npos)
        << r.error().message();
    EXPECT_EQ(s.counters().write_errors, 2U);
    EXPECT_EQ(count("SELECT count(*) FROM records"), 0) << "nothing of the batch";
    EXPECT_EQ(count("SELECT count(*) FROM checkpoint"), 0) << "nor its checkpoint";
    EXPECT_EQ(count("SELECT count(*) FROM daily"), 0);
    // The next batch is written again.
    s.explained(attempt(1000, now));
    ASSERT_TRUE(s.commit());
    EXPECT_EQ(count("SELECT count(*) FROM records"), 1);
}

TEST_F(HistoryStoreTest, AnIdIsNeverGivenOutTwiceSoRecoveryStaysExact) {
    const std::time_t now = std::time(nullptr);
    HistoryStore s = open(HistoryLimits{1, std::uint64_t{1024} << 20U});
    for (int i = 0; i < 3; ++i)
        s.explained(attempt(1000, now - 3 * 86400));
    Checkpoint cp;
    cp.time = now;
    cp.set_handle = 1;
    cp.kernel = {{1000, 3}};
    s.checkpoint(cp);
    ASSERT_TRUE(s.commit());
    ASSERT_EQ(s.prune_step(now).value_or(true), false);
    EXPECT_EQ(count("SELECT count(*) FROM records"), 0) << "all three were older than a day";
    // The next attempt, committed before any checkpoint (the commit after a drain),
    // then a kill: recovery must see it after the checkpoint.
    s.explained(attempt(1000, now));
    ASSERT_TRUE(s.commit());
    auto r = s.recover();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->explained_since, (std::map<std::uint32_t, std::uint64_t>{{1000, 1}}));
}

TEST_F(HistoryStoreTest, RetentionNeverRemovesARecordAfterTheCheckpoint) {
    const std::time_t now = std::time(nullptr);
    HistoryStore s = open(HistoryLimits{1, std::uint64_t{1024} << 20U});
    s.explained(attempt(1000, now - 3 * 86400));  // old, and not covered by a checkpoint
    ASSERT_TRUE(s.commit());
    ASSERT_EQ(s.prune_step(now).value_or(true), false);
    EXPECT_EQ(count("SELECT count(*) FROM records"), 1)
        << "recovery counts it: removing it would count it twice";
}

TEST_F(HistoryStoreTest, RetentionRemovesOldRecordsTheirProcessesAndDays) {
    const std::time_t now = std::time(nullptr);
    {
        HistoryStore s = open(HistoryLimits{30, std::uint64_t{1024} << 20U});
        for (int i = 0; i < 300; ++i)
            s.explained(attempt(1000, now - 40 * 86400, "/old/" + std::to_string(i % 3)));
        s.explained(attempt(1000, now - 10 * 86400, "/old/0"));
        s.explained(attempt(1000, now, "/new"));
        Checkpoint cp;
        cp.time = now;
        cp.set_handle = 1;
        cp.kernel = {{1000, 302}};
        s.checkpoint(cp);
        ASSERT_TRUE(s.commit());
        auto more = s.prune_step(now);
        ASSERT_TRUE(more) << more.error().message();
        for (int step = 1; step < 300 / HistoryStore::kPruneBatch + 1; ++step) {
            EXPECT_TRUE(*more) << "300 old records take steps of " << HistoryStore::kPruneBatch;
            more = s.prune_step(now);
            ASSERT_TRUE(more) << more.error().message();
        }
        EXPECT_FALSE(*more);
        EXPECT_EQ(s.counters().pruned, 300U);
    }
    EXPECT_EQ(count("SELECT count(*) FROM records"), 2);
    EXPECT_EQ(count("SELECT count(*) FROM procs"), 2) << "/old/0 (still used) and /new";
    EXPECT_EQ(count("SELECT count(*) FROM daily WHERE day < " +
                    std::to_string(local_day(now - 30 * 86400))),
              0);
}

TEST_F(HistoryStoreTest, RetentionBySizeRemovesTheOldestFirst) {
    const std::time_t now = std::time(nullptr);
    HistoryStore s = open(HistoryLimits{90, std::uint64_t{1} << 20U});  // 1 MiB
    for (int i = 0; i < 20000; ++i) {
        Attempt a = attempt(1000 + static_cast<std::uint32_t>(i % 50), now - 20000 + i,
                            "/usr/bin/php" + std::to_string(i));
        s.explained(a);
    }
    Checkpoint cp;
    cp.time = now;
    cp.set_handle = 1;
    s.checkpoint(cp);
    ASSERT_TRUE(s.commit());
    auto before = s.bytes_used();
    ASSERT_TRUE(before);
    ASSERT_GT(*before, std::uint64_t{1} << 20U);
    for (int i = 0; i < 1000; ++i) {
        auto more = s.prune_step(now);
        ASSERT_TRUE(more) << more.error().message();
        if (!*more)
            break;
    }
    auto after = s.bytes_used();
    ASSERT_TRUE(after);
    EXPECT_LE(*after, std::uint64_t{1} << 20U);
    const std::int64_t oldest = count("SELECT min(epoch) FROM records");
    EXPECT_GT(oldest, now - 20000) << "the oldest went first";
    EXPECT_EQ(count("SELECT max(epoch) FROM records"), now - 1) << "the newest stayed";
    EXPECT_EQ(count("SELECT count(*) FROM procs WHERE id NOT IN (SELECT proc FROM records "
                    "WHERE proc IS NOT NULL)"),
              0)
        << "no process left behind";
}

TEST_F(HistoryStoreTest, ImportsTheOldLogOnceWithItsCheckpoint) {
    const std::time_t now = std::time(nullptr);
    {
        std::ofstream rotated(dir_.path() + "/attempts.jsonl.1");
        rotated << to_json_line(attempt(1000, now - 100));
        Checkpoint cp;
        cp.time = now - 90;
        cp.set_handle = 5;
        cp.kernel = {{1000, 1}};
        rotated << to_json_line(cp);
        std::ofstream current(dir_.path() + "/attempts.jsonl");
        current << to_json_line(attempt(1000, now - 50));
        CountedOnly c;
        c.time = now - 40;
        c.uid = 1001;
        c.user = c.account = "user1001";
        c.count = 7;
        current << to_json_line(c) << "not json\n"
                << R"({"type":"attempt","uid":1000,"epoch":5,"user":5})"
                << "\n"
                << R"({"type":"counted","uid":"1000","epoch":5,"count":1})"
                << "\n"
                << R"({"type":"attempt","uid":1000)";
    }
    {
        HistoryStore s = open();
        auto n = s.import_jsonl();
        ASSERT_TRUE(n) << n.error().message();
        EXPECT_EQ(*n, 4U) << "three attempts (one with a user of the wrong type, kept as "
                             "\"\") and a counted record; the counted record with a uid "
                             "string and the torn last line are skipped";
        auto r = s.recover();
        ASSERT_TRUE(r);
        ASSERT_TRUE(r->checkpoint);
        EXPECT_EQ(r->checkpoint->set_handle, 5U);
        EXPECT_EQ(r->explained_since, (std::map<std::uint32_t, std::uint64_t>{{1000, 2}}))
            << "the two attempts after the checkpoint";
    }
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/attempts.jsonl.imported"));
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/attempts.jsonl.1.imported"));
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/attempts.jsonl"));
    {
        HistoryStore s = open();
        auto n = s.import_jsonl();
        ASSERT_TRUE(n);
        EXPECT_EQ(*n, 0U);
    }
    EXPECT_EQ(count("SELECT count(*) FROM records"), 4);
    EXPECT_EQ(count("SELECT sum(count) FROM records"), 10);
}

TEST_F(HistoryStoreTest, AnImportInterruptedBeforeTheRenamesIsNotCountedTwice) {
    const std::time_t now = std::time(nullptr);
    {
        std::ofstream current(dir_.path() + "/attempts.jsonl");
        current << to_json_line(attempt(1000, now - 50));
    }
    {
        HistoryStore s = open();
        ASSERT_EQ(s.import_jsonl().value_or(99), 1U);
    }
    // Put the file back, as if the worker died between the commit and the rename.
    std::filesystem::rename(dir_.path() + "/attempts.jsonl.imported",
                            dir_.path() + "/attempts.jsonl");
    HistoryStore s = open();
    ASSERT_EQ(s.import_jsonl().value_or(99), 0U);
    EXPECT_EQ(count("SELECT count(*) FROM records"), 1);
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/attempts.jsonl.imported"));
}

TEST_F(HistoryStoreTest, TheStreamWrittenAfterTheFirstOpenIsNeverImported) {
    {
        HistoryStore s = open();
        ASSERT_EQ(s.import_jsonl().value_or(99), 0U) << "nothing to import";
    }
    {
        auto stream = AttemptLog::open(dir_.path());
        ASSERT_TRUE(stream);
        stream->explained(attempt(1000, std::time(nullptr)));
    }
    HistoryStore s = open();
    ASSERT_EQ(s.import_jsonl().value_or(99), 0U);
    EXPECT_EQ(count("SELECT count(*) FROM records"), 0);
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/attempts.jsonl"));
}

TEST_F(HistoryStoreTest, RefusesASymlinkOrAHardLinkAtItsName) {
    const std::string db = dir_.path() + "/history.db";
    const std::string other = dir_.path() + "/other";
    { std::ofstream(other) << "x"; }
    ASSERT_EQ(::symlink(other.c_str(), db.c_str()), 0);
    auto s = HistoryStore::open(dir_.path(), {});
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().message().find("symlink"), std::string::npos) << s.error().message();
    ASSERT_EQ(::unlink(db.c_str()), 0);
    ASSERT_EQ(::link(other.c_str(), db.c_str()), 0);
    auto hard = HistoryStore::open(dir_.path(), {});
    ASSERT_FALSE(hard);
    EXPECT_NE(hard.error().message().find("hard links"), std::string::npos)
        << hard.error().message();
}

TEST_F(HistoryStoreTest, RefusesAFileOfANewerSchema) {
    { HistoryStore s = open(); }
    {
        auto db = sql::Database::open(dir_.path() + "/history.db", sql::Database::Mode::Create);
        ASSERT_TRUE(db);
        ASSERT_TRUE(db->exec("PRAGMA user_version = 99"));
    }
    auto s = HistoryStore::open(dir_.path(), {});
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().message().find("newer smtpfence"), std::string::npos)
        << s.error().message();
}

}  // namespace
}  // namespace smtpfence::nfq
