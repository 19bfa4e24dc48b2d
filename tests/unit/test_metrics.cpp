#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>
#include <string>

#include "common/files.h"
#include "common/sqlite.h"
#include "ctl/attempt_totals.h"
#include "ctl/metrics.h"
#include "ctl/metrics_export.h"
#include "ctl/metrics_textfile.h"
#include "nfq/history_store.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using Kernel = std::map<std::uint32_t, nft::PacketCount>;

TEST(AttemptTotals, FollowsTheKernelWhileItGrows) {
    AttemptTotals t;
    t.update({});
    EXPECT_TRUE(t.by_uid().empty());
    t.update(Kernel{{1002, {3, 180}}, {1003, {0, 0}}});
    EXPECT_EQ(t.by_uid(), (std::map<std::uint32_t, std::uint64_t>{{1002, 3}}));
    t.update(Kernel{{1002, {5, 300}}, {1003, {1, 60}}});
    EXPECT_EQ(t.by_uid(), (std::map<std::uint32_t, std::uint64_t>{{1002, 5}, {1003, 1}}));
}

TEST(AttemptTotals, CarriesACounterThatWentDown) {
    AttemptTotals t;
    t.update(Kernel{{1002, {10, 0}}, {1003, {4, 0}}});
    // The set was rebuilt: 1002 started again and has 2 new attempts, 1003 is gone.
    t.update(Kernel{{1002, {2, 0}}});
    EXPECT_EQ(t.by_uid(), (std::map<std::uint32_t, std::uint64_t>{{1002, 12}, {1003, 4}}));
    t.update(Kernel{{1002, {3, 0}}, {1003, {1, 0}}});
    EXPECT_EQ(t.by_uid(), (std::map<std::uint32_t, std::uint64_t>{{1002, 13}, {1003, 5}}));
    // Down to zero twice in a row: nothing is counted twice.
    t.update({});
    t.update({});
    EXPECT_EQ(t.by_uid(), (std::map<std::uint32_t, std::uint64_t>{{1002, 13}, {1003, 5}}));
}

TEST(Metrics, EscapesLabelValues) {
    EXPECT_EQ(escape_label_value("bob"), "bob");
    EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    EXPECT_EQ(escape_label_value("\\n"), "\\\\n");
    // UTF-8 stays; bytes that are not UTF-8 (a lone byte, an overlong form, a
    // surrogate, a cut sequence) become U+FFFD each.
    EXPECT_EQ(escape_label_value("j\xC3\xBCrgen \xF0\x9F\x93\xA7"),
              "j\xC3\xBCrgen \xF0\x9F\x93\xA7");
    const std::string bad = "\xEF\xBF\xBD";
    EXPECT_EQ(escape_label_value("a\xFF"), "a" + bad);
    EXPECT_EQ(escape_label_value("\xC0\xAF"), bad + bad);
    EXPECT_EQ(escape_label_value("\xED\xA0\x80"), bad + bad + bad);
    EXPECT_EQ(escape_label_value("x\xE2\x82"), "x" + bad + bad);
}

MetricsSnapshot sample() {
    MetricsSnapshot m;
    m.version = "0.1.0";
    m.enforcing = true;
    m.table_present = true;
    m.table_owned = true;
    m.self_heals = 2;
    m.worker_up = true;
    m.worker_restarts = 1;
    m.queue = MetricsSnapshot::Queue{.waiting = 3, .dropped = 4, .user_dropped = 5};
    m.attempts = {{"bob", 1002, 7}, {"ev\"il\\\nx", 1003, 1}};
    m.explained = 6;
    m.allowed_uids = 2;
    m.allowed_gids = 1;
    m.destination_exceptions = 0;
    m.last_apply_seconds = 0.0125;
    m.last_apply_at = 1700000000;
    return m;
}

TEST(Metrics, RendersEveryMetricWithHelpAndType) {
    const std::string text = render_metrics(sample());
    EXPECT_TRUE(text.starts_with(
        "# HELP smtpfence_build_info The smtpfenced version writing this file (always 1).\n"
        "# TYPE smtpfence_build_info gauge\n"
        "smtpfence_build_info{version=\"0.1.0\"} 1\n"));
    for (const char* line : {
             "# TYPE smtpfence_attempts_total counter\n",
             "\nsmtpfence_attempts_total{account=\"bob\",uid=\"1002\"} 7\n",
             "\nsmtpfence_attempts_total{account=\"ev\\\"il\\\\\\nx\",uid=\"1003\"} 1\n",
             "\nsmtpfence_enforcing 1\n",
             "\nsmtpfence_config_error 0\n",
             "\nsmtpfence_table_present 1\n",
             "\nsmtpfence_table_owned 1\n",
             "\nsmtpfence_self_heals_total 2\n",
             "\nsmtpfence_self_heal_failures_total 0\n",
             "\nsmtpfence_worker_up 1\n",
             "\nsmtpfence_worker_restarts_total 1\n",
             "\nsmtpfence_queue_waiting 3\n",
             "\nsmtpfence_queue_dropped_total 4\n",
             "\nsmtpfence_queue_user_dropped_total 5\n",
             "\nsmtpfence_attempts_explained_total 6\n",
             "\nsmtpfence_allowed_uids 2\n",
             "\nsmtpfence_allowed_gids 1\n",
             "\nsmtpfence_destination_exceptions 0\n",
             "\nsmtpfence_last_apply_duration_seconds 0.012500\n",
             "\nsmtpfence_last_apply_timestamp_seconds 1700000000\n",
         }) {
        EXPECT_NE(text.find(line), std::string::npos) << line;
    }
    // One sample a line: the hostile name's newline stays inside its escape.
    std::size_t lines = 0;
    for (const char c : text)
        lines += c == '\n' ? 1 : 0;
    EXPECT_EQ(lines, 3 * 19 + 1);
    EXPECT_EQ(text.back(), '\n');
}

TEST(Metrics, LeavesOutWhatIsNotKnown) {
    MetricsSnapshot m = sample();
    m.queue.reset();
    m.explained.reset();
    m.last_apply_seconds.reset();
    m.attempts.clear();
    const std::string text = render_metrics(m);
    for (const char* absent : {"smtpfence_queue_", "smtpfence_attempts_explained_total",
                               "smtpfence_last_apply_", "smtpfence_attempts_total{"}) {
        EXPECT_EQ(text.find(absent), std::string::npos) << absent;
    }
    // A counter without samples keeps its HELP and TYPE (valid for promtool).
    EXPECT_NE(text.find("# TYPE smtpfence_attempts_total counter\n"), std::string::npos);
}

TEST(MetricsTextfile, ReplacesTheFileWithMode0644) {
    const testing::TempDir dir;
    const std::string path = dir.path() + "/smtpfence.prom";
    const mode_t old_umask = ::umask(077);
    ASSERT_TRUE(write_textfile(path, "a 1\n").has_value());
    ::umask(old_umask);
    EXPECT_EQ(testing::read_file(path), "a 1\n");
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644U);
    // A temporary file a killed daemon left is replaced, and none stays behind.
    (void)dir.write(".smtpfence.prom.tmp", "stale");
    ASSERT_TRUE(write_textfile(path, "a 2\n").has_value());
    EXPECT_EQ(testing::read_file(path), "a 2\n");
    std::size_t entries = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path()))
        ++entries;
    EXPECT_EQ(entries, 1U);
}

TEST(MetricsTextfile, RefusesSymlinksAndNamesAMissingDirectory) {
    const testing::TempDir dir;
    const std::string victim = dir.write("victim", "keep");
    const std::string link = dir.path() + "/smtpfence.prom";
    ASSERT_EQ(::symlink(victim.c_str(), link.c_str()), 0);
    auto r = write_textfile(link, "a 1\n");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(),
              link + ": Too many levels of symbolic links (" + std::string(kSymlinkRefused) + ")");
    EXPECT_EQ(testing::read_file(victim), "keep");

    std::filesystem::create_directory(dir.path() + "/real");
    ASSERT_EQ(::symlink((dir.path() + "/real").c_str(), (dir.path() + "/linked").c_str()), 0);
    r = write_textfile(dir.path() + "/linked/smtpfence.prom", "a 1\n");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ELOOP);
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/real/smtpfence.prom"));

    r = write_textfile(dir.path() + "/missing/smtpfence.prom", "a 1\n");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(), dir.path() + "/missing: No such file or directory");
}

nfq::Attempt explained_at(std::time_t t) {
    nfq::Attempt a;
    a.time = t;
    a.uid = a.gid = 1002;
    a.user = a.account = "bob";
    a.identified = true;
    a.exe = "/usr/bin/php";
    a.cwd = "/home/bob";
    a.family = "ipv4";
    return a;
}

// attempts_explained_total: the history's totals grow with each committed record,
// survive retention, and are seeded in a file made before they existed.
TEST(MetricsExplained, TheHistorysTotalOnlyGrows) {
    const testing::TempDir dir;
    EXPECT_EQ(read_explained_total(dir.path()).value(), std::nullopt) << "no history yet";
    const std::time_t now = std::time(nullptr);
    {
        auto s = nfq::HistoryStore::open(dir.path(), {30, std::uint64_t{1024} << 20U});
        ASSERT_TRUE(s) << s.error().message();
        s->explained(explained_at(now - std::time_t{40} * 86400));
        s->explained(explained_at(now));
        nfq::CountedOnly c;
        c.time = now;
        c.uid = 1002;
        c.user = c.account = "bob";
        c.count = 495;
        s->counted_only(c);
        nfq::Checkpoint cp;
        cp.time = now;
        cp.set_handle = 1;
        cp.kernel = {{1002, 497}};
        s->checkpoint(cp);
        ASSERT_TRUE(s->commit());
        EXPECT_EQ(read_explained_total(dir.path()).value(), 2U);
        auto more = s->prune_step(now);
        while (more && *more)
            more = s->prune_step(now);
        ASSERT_TRUE(more) << more.error().message();
        EXPECT_EQ(s->counters().pruned, 1U);
        EXPECT_EQ(read_explained_total(dir.path()).value(), 2U) << "retention leaves it";
        s->explained(explained_at(now));  // never committed
    }
    EXPECT_EQ(read_explained_total(dir.path()).value(), 2U);
    {
        // A file from before the totals: seeded from what daily holds (the day left).
        auto db = sql::Database::open(dir.path() + "/history.db", sql::Database::Mode::Create);
        ASSERT_TRUE(db);
        ASSERT_TRUE(db->exec("DROP TABLE totals"));
    }
    EXPECT_EQ(read_explained_total(dir.path()).value(), std::nullopt);
    auto s = nfq::HistoryStore::open(dir.path(), {});
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(read_explained_total(dir.path()).value(), 1U);
    s->explained(explained_at(now));
    ASSERT_TRUE(s->commit());
    EXPECT_EQ(read_explained_total(dir.path()).value(), 2U);
}

}  // namespace
}  // namespace smtpfence
