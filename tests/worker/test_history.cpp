// The attempt history as the worker keeps it (docs/history.md): retention by
// HISTORY_DAYS from the config, and the upgrade from an earlier version's
// attempts.jsonl, imported once and counted once across restarts.
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/sqlite.h"
#include "nfq/attempt_log.h"
#include "tests/support/history_rows.h"
#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

namespace fs = std::filesystem;

class WorkerHistoryTest : public WorkerTest {
  protected:
    // The first column of the first row of sql on history.db, -1 when it cannot be read.
    std::int64_t query(const std::string& sql) {
        auto db = sql::Database::open(state_dir() + "/history.db", sql::Database::Mode::ReadOnly);
        if (!db)
            return -1;
        auto n = db->query_int(sql);
        return n && *n ? **n : -1;
    }
    // The history's per-uid totals reach `history` (the kernel's counters `kernel`) and
    // stay so past the next reconcile round: nothing counted twice, nothing lost.
    void expect_totals(const std::map<std::uint32_t, std::uint64_t>& history,
                       const std::map<std::uint32_t, std::uint64_t>& kernel) {
        (void)itest::wait_until([&] { return read_attempt_log(state_dir()).totals() == history; },
                                8s, 100ms);
        std::this_thread::sleep_for(1600ms);
        EXPECT_EQ(describe_counts(read_attempt_log(state_dir()).totals()), describe_counts(history))
            << diagnostics();
        auto k = kernel_blocked(topo_->server, table_);
        ASSERT_TRUE(k) << k.error().message();
        EXPECT_EQ(describe_counts(*k), describe_counts(kernel));
    }
    // One refused connect of who to the remote's port 25.
    void one_attempt(const Credentials& who) {
        auto c = start_connector(who, site_of(who), {Topology::kRemote4, "25"});
        ASSERT_TRUE(c) << c.error().message();
        auto exit = c->wait(15s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(exit->report) << exit->out;
        ASSERT_EQ(exit->report->refused, 1U) << exit->out;
    }
};

TEST_F(WorkerHistoryTest, RecordsOlderThanHistoryDaysAreRemovedByTheWorker) {
    const std::int64_t now = std::time(nullptr);
    fs::create_directories(state_dir());
    {
        auto file = testing::HistoryFile::create(state_dir());
        ASSERT_TRUE(file) << file.error().message();
        for (const std::int64_t days : {30, 10, 3}) {
            testing::HistoryRow row;
            row.epoch = now - days * 86400;
            row.uid = kCarol.uid;
            row.gid = kCarol.gid;
            row.user = row.account = "carol";
            row.exe = "/usr/bin/php" + std::to_string(days);
            row.cwd = site_of(kCarol);
            row.cmdline = "php mailer.php";
            ASSERT_TRUE(file->add(row));
        }
        // The checkpoint of an earlier worker (of a set that is gone), which covers
        // them: retention removes only what a checkpoint covers.
        ASSERT_TRUE(
            file->db().exec("INSERT INTO checkpoint (id, epoch, set_handle, after_record, kernel) "
                            "VALUES (1, " +
                            std::to_string(now - 3 * 86400) +
                            ", 99999, (SELECT max(id) FROM records), '{\"2003\":3}')"));
    }
    write_config("SMTP_BLOCK = \"1\"\nHISTORY_DAYS = \"7\"\n");
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    const bool pruned = itest::wait_until(
        [&] { return query("SELECT count(*) FROM records WHERE uid = 2003") == 1; }, 10s, 100ms);
    EXPECT_TRUE(pruned) << "carol's records older than 7 days are still there: "
                        << query("SELECT count(*) FROM records WHERE uid = 2003") << "\n"
                        << diagnostics();
    EXPECT_EQ(query("SELECT count(*) FROM procs"), 1) << "the old records' processes go with them";
    EXPECT_EQ(query("SELECT min(epoch) FROM records WHERE uid = 2003"), now - 3 * 86400);
    // And the worker records on: bob's attempt is there, counted once.
    ASSERT_NO_FATAL_FAILURE(one_attempt(kBob));
    expect_totals({{kBob.uid, 1}, {kCarol.uid, 1}}, {{kBob.uid, 1}});
}

TEST_F(WorkerHistoryTest, AnOldAttemptLogIsImportedOnceAndNeverCountedTwice) {
    const std::time_t now = std::time(nullptr);
    fs::create_directories(state_dir());
    {
        // An earlier version's log: two attempts of dave and its checkpoint of a blocked
        // set that is gone (the namespace's table is new), then a record after it.
        nfq::Attempt a;
        a.uid = kDave.uid;
        a.gid = kDave.gid;
        a.user = a.account = "dave";
        a.family = "ipv4";
        a.src = Topology::kServer4;
        a.dst = Topology::kRemote4;
        a.dport = 25;
        std::ofstream log(state_dir() + "/" + nfq::AttemptLog::kFileName);
        a.time = now - 7200;
        log << nfq::to_json_line(a);
        a.time = now - 3600;
        log << nfq::to_json_line(a);
        nfq::Checkpoint cp;
        cp.time = now - 3500;
        cp.set_handle = 99999;
        cp.kernel = {{kDave.uid, 2}};
        log << nfq::to_json_line(cp);
        nfq::CountedOnly c;
        c.time = now - 3000;
        c.uid = kDave.uid;
        c.user = c.account = "dave";
        c.count = 40;
        log << nfq::to_json_line(c);
    }
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_NO_FATAL_FAILURE(one_attempt(kBob));
    expect_totals({{kBob.uid, 1}, {kDave.uid, 42}}, {{kBob.uid, 1}});
    EXPECT_TRUE(fs::exists(state_dir() + "/attempts.jsonl.imported"));

    // A restart, then a kill: the stream the new worker wrote is never imported, the
    // old log never again.
    daemon_.reset();
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_EQ(::kill(worker, SIGKILL), 0);
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, worker));
    ASSERT_NO_FATAL_FAILURE(one_attempt(kBob));
    expect_totals({{kBob.uid, 2}, {kDave.uid, 42}}, {{kBob.uid, 2}});
}

TEST_F(WorkerHistoryTest, AWorkerWhoseBatchIsNotWrittenExitsAndTheNextCountsIt) {
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    {
        // Writes of bob's records fail (as a full disk would), until the test lifts it.
        auto db =
            sql::Database::open(state_dir() + "/history.db", sql::Database::Mode::Create, 5000);
        ASSERT_TRUE(db) << db.error().message();
        ASSERT_TRUE(
            db->exec("CREATE TRIGGER refuse_bob BEFORE INSERT ON records WHEN "
                     "NEW.uid = 2002 BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END"));
    }
    ASSERT_NO_FATAL_FAILURE(one_attempt(kBob));
    const pid_t first = worker;
    const bool exited =
        itest::wait_until([&] { return worker_pid() != std::optional<pid_t>(first); }, 10s, 50ms);
    ASSERT_TRUE(exited) << "the worker went on after losing a batch\n" << diagnostics();
    EXPECT_NE(daemon_->log().find("disk full (test)"), std::string::npos) << daemon_->log();
    EXPECT_NE(daemon_->log().find("the worker exits so that the next one counts"),
              std::string::npos)
        << daemon_->log();
    {
        auto db =
            sql::Database::open(state_dir() + "/history.db", sql::Database::Mode::Create, 5000);
        ASSERT_TRUE(db) << db.error().message();
        ASSERT_TRUE(db->exec("DROP TRIGGER refuse_bob"));
    }
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, first, 45s));
    expect_totals({{kBob.uid, 1}}, {{kBob.uid, 1}});
    EXPECT_EQ(query("SELECT count(*) FROM records WHERE uid = 2002 AND explained = 0"), 1)
        << "counted from the kernel by the next worker";
}

}  // namespace
}  // namespace smtpfence::wtest
