// The reconciler driven by a scripted kernel: what it writes for attempts counted and
// not explained, a re-created blocked set, a new uid; and that a worker killed at any
// point, the next one started from what the log holds, counts every attempt once
// (README, "Every attempt counted").
#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "nfq/history_store.h"
#include "nfq/reconciler.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

constexpr std::uint32_t kAlice = 1001;
constexpr std::uint32_t kBob = 1002;
constexpr std::uint32_t kCarol = 1003;

struct QueuedSyn {
    std::uint32_t id = 0;
    std::uint32_t uid = 0;
    bool explain = true;  // false: the worker counts it only (its process told enough)
};

// The kernel as the reconciler sees it: the observe rule counts a SYN in the blocked
// set just before queueing it with the queue's next packet id.
class ScriptedKernel final : public KernelReadings {
  public:
    std::uint32_t syn(std::uint32_t uid, bool explain = true) {
        ++counters_[uid];
        waiting.push_back({++sequence_, uid, explain});
        return sequence_;
    }
    // n SYNs of uid that the worker counts only.
    void unexplained_syns(std::uint32_t uid, int n) {
        for (int i = 0; i < n; ++i)
            syn(uid, false);
    }
    // The table deleted and made again: a new set, its counters from zero.
    void recreate_set() {
        ++handle_;
        counters_.clear();
    }
    // The same set's counters set back to zero (nft reset).
    void reset_counters() { counters_.clear(); }
    [[nodiscard]] std::uint64_t counter(std::uint32_t uid) const {
        const auto it = counters_.find(uid);
        return it == counters_.end() ? 0 : it->second;
    }

    Result<std::optional<std::uint64_t>> blocked_set() override { return handle_; }
    Result<std::map<std::uint32_t, std::uint64_t>> counters() override {
        if (while_counters_are_read)
            while_counters_are_read();
        return counters_;
    }
    std::optional<std::uint32_t> queue_id_sequence() override { return sequence_; }

    std::deque<QueuedSyn> waiting;                  // in the worker's socket
    std::function<void()> while_counters_are_read;  // a SYN queued during the dump

  private:
    std::uint64_t handle_ = 7;
    std::uint32_t sequence_ = 0;
    std::map<std::uint32_t, std::uint64_t> counters_;
};

// Every record that reached the attempt log, as one line of text each: "attempt UID
// #ID", "counted UID xN (user)", "checkpoint HANDLE UID:N ...".
using Written = std::vector<std::string>;

// Explained records plus counted-only counts of uid.
std::uint64_t recorded(const Written& written, std::uint32_t uid) {
    const std::string attempt = "attempt " + std::to_string(uid) + " #";
    const std::string counted = "counted " + std::to_string(uid) + " x";
    std::uint64_t n = 0;
    for (const std::string& line : written) {
        if (line.starts_with(attempt))
            ++n;
        else if (line.starts_with(counted))
            n += std::stoull(line.substr(counted.size()));
    }
    return n;
}

// The attempt history in the test's directory; after kill_after(n) it takes n more
// records and no others, as a worker killed at that point (what it took is committed
// when the worker goes: any prefix of the records, as a kill between two commits).
class DyingLog final : public AttemptSink {
  public:
    DyingLog(const std::string& dir, Written& written)
        : log_(HistoryStore::open(dir, {}).value()), written_(written) {}

    // The worker dies: what it took is committed (any prefix of the records, see above).
    ~DyingLog() { EXPECT_TRUE(log_.commit()); }
    DyingLog(const DyingLog&) = delete;
    DyingLog& operator=(const DyingLog&) = delete;

    LogRecovery recover() { return log_.recover().value(); }

    void kill_after(std::size_t records) { left_ = records; }

    void explained(const Attempt& a) override {
        if (take("attempt " + std::to_string(a.uid) + " #" + std::to_string(a.sport)))
            log_.explained(a);
    }
    void counted_only(const CountedOnly& c) override {
        if (take("counted " + std::to_string(c.uid) + " x" + std::to_string(c.count) + " (" +
                 c.user + ")"))
            log_.counted_only(c);
    }
    void checkpoint(const Checkpoint& cp) override {
        std::string line = "checkpoint " + std::to_string(cp.set_handle);
        for (const auto& [uid, n] : cp.kernel)
            line += " " + std::to_string(uid) + ":" + std::to_string(n);
        if (take(line))
            log_.checkpoint(cp);
    }

  private:
    bool take(std::string line) {
        if (left_) {
            if (*left_ == 0)
                return false;
            --*left_;
        }
        written_.push_back(std::move(line));
        return true;
    }
    HistoryStore log_;
    Written& written_;
    std::optional<std::size_t> left_;
};

// One worker's life: its history opened, then its reconciler started from what the
// history holds (as run_worker does).
class Worker {
  public:
    Worker(const std::string& dir, ScriptedKernel& kernel, Written& written)
        : kernel_(kernel),
          log_(dir, written),
          reconciler_(
              kernel, log_, [](CountedOnly& c) { c.user = "user" + std::to_string(c.uid); },
              log_.recover()) {}

    // Explains what waits in the socket (the poll loop's drain).
    Result<void> take_waiting() {
        if (before_next_drain) {
            before_next_drain();
            before_next_drain = nullptr;
        }
        while (!kernel_.waiting.empty()) {
            const QueuedSyn syn = kernel_.waiting.front();
            kernel_.waiting.pop_front();
            if (reconciler_.accounted_for(syn.id) || !syn.explain)
                continue;
            Attempt a;
            a.uid = syn.uid;
            a.sport = static_cast<std::uint16_t>(syn.id);  // names the SYN in Written
            reconciler_.explained(syn.id, a);
        }
        return {};
    }
    void reconcile() {
        reconciler_.reconcile([this] { return take_waiting(); });
    }

    DyingLog& log() { return log_; }
    Reconciler& reconciler() { return reconciler_; }
    // Runs once, in the next drain: after a round's readings when that is the round's.
    std::function<void()> before_next_drain;

  private:
    ScriptedKernel& kernel_;
    DyingLog log_;
    Reconciler reconciler_;
};

class ReconcilerTest : public ::testing::Test {
  protected:
    Worker& start_worker() {
        worker_ = std::make_unique<Worker>(dir_.path(), kernel_, written_);
        return *worker_;
    }
    // SIGKILL: the worker's memory is gone; the daemon accepts what waited for it
    // (counted by the kernel, never seen by a worker).
    void kill_worker() {
        worker_.reset();
        kernel_.waiting.clear();
    }
    // The news since the last call.
    Written written_since() {
        Written news(written_.begin() + static_cast<std::ptrdiff_t>(seen_), written_.end());
        seen_ = written_.size();
        return news;
    }

    testing::TempDir dir_;
    ScriptedKernel kernel_;
    Written written_;
    std::unique_ptr<Worker> worker_;
    std::size_t seen_ = 0;
};

TEST_F(ReconcilerTest, NoNewAttemptsWriteNothing) {
    Worker& w = start_worker();
    w.reconcile();
    EXPECT_EQ(written_since(), Written{});
    kernel_.syn(kAlice);
    ASSERT_TRUE(w.take_waiting());
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"attempt 1001 #1", "checkpoint 7 1001:1"}));
    w.reconcile();
    w.reconcile();
    EXPECT_EQ(written_since(), Written{});
    EXPECT_EQ(w.reconciler().stats().reconciles, 4U);
}

TEST_F(ReconcilerTest, AttemptsCountedButNotExplainedAreCountedOnlyPerUid) {
    Worker& w = start_worker();
    kernel_.unexplained_syns(kAlice, 3);
    for (int i = 0; i < 5; ++i)
        kernel_.syn(kBob, i < 2);
    w.reconcile();
    EXPECT_EQ(written_since(),
              (Written{"attempt 1002 #4", "attempt 1002 #5", "counted 1001 x3 (user1001)",
                       "counted 1002 x3 (user1002)", "checkpoint 7 1001:3 1002:5"}));
    EXPECT_EQ(w.reconciler().stats().counted_only, 6U);
    // Ids up to the round's sequence are in its counted-only records.
    EXPECT_TRUE(w.reconciler().accounted_for(8));
    EXPECT_FALSE(w.reconciler().accounted_for(9));
}

TEST_F(ReconcilerTest, CountersBelowTheCheckpointAreNewAttempts) {
    Worker& w = start_worker();
    kernel_.unexplained_syns(kAlice, 10);
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"counted 1001 x10 (user1001)", "checkpoint 7 1001:10"}));
    // The table re-created: a new set, counting from zero (2 is below the 10).
    kernel_.recreate_set();
    kernel_.unexplained_syns(kAlice, 2);
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"counted 1001 x2 (user1001)", "checkpoint 8 1001:2"}));
    EXPECT_EQ(w.reconciler().stats().counter_resets, 1U);
    // The same set's counters reset in place: the kernel is trusted.
    kernel_.reset_counters();
    kernel_.syn(kAlice, false);
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"counted 1001 x1 (user1001)", "checkpoint 8 1001:1"}));
    EXPECT_EQ(w.reconciler().stats().counter_resets, 1U);
    // Re-created while no worker ran: the log's checkpoint names the old set.
    kill_worker();
    kernel_.recreate_set();
    kernel_.syn(kAlice, false);
    start_worker().reconcile();
    EXPECT_EQ(written_since(), (Written{"counted 1001 x1 (user1001)", "checkpoint 9 1001:1"}));
    EXPECT_EQ(recorded(written_, kAlice), 14U);
}

TEST_F(ReconcilerTest, ANewUidIsAddedToTheCheckpoint) {
    Worker& w = start_worker();
    kernel_.syn(kAlice, false);
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"counted 1001 x1 (user1001)", "checkpoint 7 1001:1"}));
    kernel_.syn(kCarol, false);
    kernel_.syn(kCarol);
    w.reconcile();
    EXPECT_EQ(written_since(), (Written{"attempt 1003 #3", "counted 1003 x1 (user1003)",
                                        "checkpoint 7 1001:1 1003:2"}));
}

TEST_F(ReconcilerTest, ARestartedWorkerTakesTheAttemptsAfterTheLastCheckpoint) {
    Worker& first = start_worker();
    kernel_.syn(kAlice);
    first.reconcile();
    kernel_.syn(kAlice);
    kernel_.syn(kBob, false);
    ASSERT_TRUE(first.take_waiting());  // written between two rounds
    kernel_.syn(kBob);                  // waits in the queue, then the kill
    kill_worker();
    start_worker().reconcile();
    EXPECT_EQ(written_since(),
              (Written{"attempt 1001 #1", "checkpoint 7 1001:1", "attempt 1001 #2",
                       "counted 1002 x2 (user1002)", "checkpoint 7 1001:2 1002:2"}));
}

TEST_F(ReconcilerTest, AQueueMovingWhileTheCountersAreReadPostponesTheRound) {
    Worker& w = start_worker();
    kernel_.while_counters_are_read = [this] { kernel_.syn(kAlice); };
    w.reconcile();
    EXPECT_EQ(w.reconciler().stats().reconcile_retries, 1U);
    EXPECT_EQ(written_since(), Written{});
    EXPECT_EQ(kernel_.waiting.size(), 20U);  // left for the poll loop
    kernel_.while_counters_are_read = nullptr;
    w.reconcile();
    EXPECT_EQ(recorded(written_, kAlice), 20U);
}

// The case that once counted an attempt twice (commit fa9774a): a SYN queued after the
// round's readings, explained in its drain, is not in the round's checkpoint; its
// record written before that checkpoint, a worker killed after it left "record,
// checkpoint", and the next worker, taking the records after the last checkpoint as
// beyond its kernel totals, counted the SYN again.
TEST_F(ReconcilerTest, ASynQueuedAfterTheReadingsIsWrittenAfterTheCheckpoint) {
    Worker& w = start_worker();
    kernel_.syn(kAlice);
    w.before_next_drain = [this] { kernel_.syn(kAlice); };
    w.reconcile();
    EXPECT_EQ(written_since(),
              (Written{"attempt 1001 #1", "checkpoint 7 1001:1", "attempt 1001 #2"}));
    kill_worker();
    start_worker().reconcile();
    EXPECT_EQ(written_since(), (Written{"checkpoint 7 1001:2"}));
    EXPECT_EQ(recorded(written_, kAlice), kernel_.counter(kAlice));
}

// The same kind of rounds with the worker killed after each record in turn: whatever
// part of the log a dying worker wrote, the next one counts every attempt once.
TEST(ReconcilerKillTest, AWorkerKilledAfterAnyRecordCountsNothingTwice) {
    // The first worker's life: three rounds, each with SYNs of two uids waiting and
    // one queued after its readings; once an attempt explained between two rounds.
    const auto first_life = [](ScriptedKernel& kernel, Worker& w) {
        for (int round = 0; round < 3; ++round) {
            kernel.syn(kAlice);
            kernel.syn(kBob);
            w.before_next_drain = [&kernel, round] { kernel.syn(round == 1 ? kBob : kAlice); };
            w.reconcile();
            if (round == 0) {
                kernel.syn(kBob);
                ASSERT_TRUE(w.take_waiting());
            }
        }
    };
    std::size_t records = 0;
    {
        testing::TempDir dir;
        ScriptedKernel kernel;
        Written written;
        Worker w(dir.path(), kernel, written);
        first_life(kernel, w);
        records = written.size();
    }
    ASSERT_EQ(records, 13U);
    for (std::size_t kill_after = 0; kill_after <= records; ++kill_after) {
        testing::TempDir dir;
        ScriptedKernel kernel;
        Written written;
        {
            Worker dying(dir.path(), kernel, written);
            dying.log().kill_after(kill_after);
            first_life(kernel, dying);
        }
        kernel.waiting.clear();
        kernel.syn(kAlice);
        Worker next(dir.path(), kernel, written);
        next.reconcile();
        next.reconcile();
        for (const std::uint32_t uid : {kAlice, kBob}) {
            EXPECT_EQ(recorded(written, uid), kernel.counter(uid))
                << "uid " << uid << ", killed after " << kill_after << " records";
        }
    }
}

}  // namespace
}  // namespace smtpfence::nfq
