// The DirectAdmin sink against a temporary /etc/virtual: the bytes on disk, exactly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nfq/da_sink.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

using namespace std::string_literals;

using testing::TempDir;

constexpr std::time_t kTime = 1767225600;  // 2026-01-01T00:00:00Z

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

// The file's bytes, or "<missing>".
std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return "<missing>";
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        out.push_back(line);
    return out;
}

std::size_t count_lines_starting(const std::string& text, const std::string& prefix) {
    std::size_t n = 0;
    for (const std::string& line : lines_of(text))
        n += line.starts_with(prefix) ? 1 : 0;
    return n;
}

mode_t mode_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

// Appends bytes as Exim does (open, write, close); creates the file.
void exim_append(const std::string& path, const std::string& bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0660);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

std::string exim_limit_line(const std::string& user, std::uint64_t limit, std::time_t time) {
    return "action=limit&username=" + user + "&count=" + std::to_string(limit) +
           "&limit=" + std::to_string(limit) +
           "&email=someone@example.com&authenticated_id=&sender_host_address=&log_time=" +
           std::to_string(time) + "\n";
}

Attempt attempt(const std::string& account,
                const std::string& cwd = "/home/alice/domains/example.com/public_html",
                std::uint32_t uid = 1000) {
    Attempt a;
    a.time = kTime;
    a.uid = uid;
    a.gid = uid;
    a.user = account;
    a.account = account;
    a.identified = true;
    a.pid = 4242;
    a.exe = "/usr/bin/php8.2";
    a.cwd = cwd;
    a.cmdline = "php mailer.php";
    a.family = "ipv4";
    a.src = "192.0.2.1";
    a.dst = "192.0.2.25";
    a.sport = 40000;
    a.dport = 25;
    return a;
}

CountedOnly counted(const std::string& account, std::uint64_t count, std::uint32_t uid = 1000) {
    CountedOnly c;
    c.time = kTime;
    c.uid = uid;
    c.user = account;
    c.account = account;
    c.count = count;
    return c;
}

class DaSinkTest : public ::testing::Test {
  protected:
    DaSinkTest() { std::filesystem::create_directory(root_); }

    [[nodiscard]] DaSinkConfig config(std::uint32_t weight = 1) const {
        DaSinkConfig c;
        c.virtual_dir = root_;
        c.blocked_script_paths = tmp_.path() + "/blocked_script_paths";
        c.attempt_weight = weight;
        c.max_usage_bytes = 1U << 20U;
        return c;
    }
    static std::unique_ptr<DaSink> open(DaSinkConfig c) {
        auto sink = DaSink::open(std::move(c));
        EXPECT_TRUE(sink) << sink.error().message();
        return sink ? std::move(*sink) : nullptr;
    }
    [[nodiscard]] std::string usage(const std::string& account) const {
        return root_ + "/usage/" + account;
    }
    [[nodiscard]] std::string queue_path() const { return root_ + "/mail_task.queue"; }
    [[nodiscard]] std::string queue() const { return slurp(queue_path()); }
    void write(const std::string& name, const std::string& content) const {
        std::ofstream(root_ + "/" + name, std::ios::binary) << content;
    }

    TempDir tmp_;
    std::string root_ = tmp_.path() + "/virtual";
};

// ---- counting -----------------------------------------------------------------------

TEST_F(DaSinkTest, EachExplainedAttemptAppendsOneByte) {
    auto sink = open(config(1));
    for (int i = 0; i < 3; ++i)
        sink->explained(attempt("alice"));
    EXPECT_EQ(slurp(usage("alice")), "111");
    EXPECT_EQ(lines_of(slurp(usage("alice.bytes"))).size(), 3U);
    EXPECT_EQ(sink->stats().attempts, 3U);
    EXPECT_EQ(sink->stats().bytes_appended, 3U);
    EXPECT_EQ(sink->stats().errors, 0U);
    EXPECT_FALSE(exists(queue_path()));  // no limit: no notice
    // DirectAdmin's modes (the umask notwithstanding).
    EXPECT_EQ(mode_of(root_ + "/usage"), 0750U);
    EXPECT_EQ(mode_of(usage("alice")), 0660U);
    EXPECT_EQ(mode_of(usage("alice.bytes")), 0660U);
}

TEST_F(DaSinkTest, WeightThreeAppendsThreeBytesPerAttempt) {
    auto sink = open(config(3));
    sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));
    EXPECT_EQ(slurp(usage("alice")), "111111");
    sink->explained(attempt("bob", "/home/bob"));
    EXPECT_EQ(slurp(usage("bob")), "111");
    EXPECT_EQ(slurp(usage("alice")), "111111");
}

TEST_F(DaSinkTest, CountedOnlyAppendsCountTimesWeight) {
    auto sink = open(config(3));
    sink->counted_only(counted("alice", 7));
    EXPECT_EQ(slurp(usage("alice")), std::string(21, '1'));
    sink->counted_only(counted("alice", 0));
    EXPECT_EQ(slurp(usage("alice")).size(), 21U);
    // Not explained: no line for DirectAdmin's path statistics.
    EXPECT_FALSE(exists(usage("alice.bytes")));
    EXPECT_EQ(sink->stats().attempts, 7U);
}

TEST_F(DaSinkTest, WeightZeroCountsNothingButRecordsThePath) {
    auto sink = open(config(0));
    sink->explained(attempt("alice"));
    sink->counted_only(counted("alice", 5));
    EXPECT_FALSE(exists(usage("alice")));
    EXPECT_EQ(lines_of(slurp(usage("alice.bytes"))).size(), 1U);
}

TEST_F(DaSinkTest, BytesLineHasEximsFormatWithDirectOutMethod) {
    auto sink = open(config());
    sink->explained(attempt("alice"));
    EXPECT_EQ(slurp(usage("alice.bytes")),
              "0=type=email&email=&method=direct_out&id=&authenticated_id=&sender_host_address=&"
              "log_time=1767225600&message_size=0&local_part=&domain=&"
              "path=/home/alice/domains/example.com/public_html\n");
    Attempt gone = attempt("alice", "");
    gone.identified = false;
    sink->explained(gone);
    EXPECT_EQ(lines_of(slurp(usage("alice.bytes"))).back().substr(0, 2), "0=");
    EXPECT_TRUE(lines_of(slurp(usage("alice.bytes"))).back().ends_with("&path="));
}

TEST_F(DaSinkTest, UsageFileStopsGrowingAtTheCeiling) {
    DaSinkConfig c = config();
    c.max_usage_bytes = 10;
    auto sink = open(c);
    sink->counted_only(counted("alice", 100));
    EXPECT_EQ(slurp(usage("alice")).size(), 10U);
    EXPECT_EQ(sink->stats().capped, 90U);
    // A limit above the ceiling raises it: the limit is still reached, and notified.
    write("limit_bob", "50\n");
    sink->counted_only(counted("bob", 100));
    EXPECT_EQ(slurp(usage("bob")).size(), 50U);
    EXPECT_EQ(count_lines_starting(queue(), "action=limit&username=bob&"), 1U);
}

// ---- limits -------------------------------------------------------------------------

TEST(DaLimit, ParsedAsPerlsIntOfTheFirstLine) {
    EXPECT_EQ(parse_da_limit(""), 0U);
    EXPECT_EQ(parse_da_limit("1000\n"), 1000U);
    EXPECT_EQ(parse_da_limit("200"), 200U);
    EXPECT_EQ(parse_da_limit("  7\n"), 7U);
    EXPECT_EQ(parse_da_limit("+5"), 5U);
    EXPECT_EQ(parse_da_limit("-5"), 0U);
    EXPECT_EQ(parse_da_limit("0"), 0U);
    EXPECT_EQ(parse_da_limit("abc"), 0U);
    EXPECT_EQ(parse_da_limit("12abc"), 12U);
    EXPECT_EQ(parse_da_limit("\n12"), 0U);  // Perl reads the (empty) first line only
    EXPECT_EQ(parse_da_limit("99999999999999999999999"), std::numeric_limits<std::uint64_t>::max());
}

TEST_F(DaSinkTest, PerUserLimitFileWinsEvenWhenEmpty) {
    EXPECT_EQ(da_user_limit(root_, "alice"), 0U);  // neither file
    write("limit", "5\n");
    EXPECT_EQ(da_user_limit(root_, "alice"), 5U);
    write("limit_bob", "9\n");
    EXPECT_EQ(da_user_limit(root_, "alice"), 5U);
    write("limit_alice", "3\n");
    EXPECT_EQ(da_user_limit(root_, "alice"), 3U);
    write("limit_alice", "");
    EXPECT_EQ(da_user_limit(root_, "alice"), 0U);
    write("limit_alice", "-4");
    EXPECT_EQ(da_user_limit(root_, "alice"), 0U);
    write("limit_alice", "garbage");
    EXPECT_EQ(da_user_limit(root_, "alice"), 0U);
    std::filesystem::remove(root_ + "/limit_alice");
    std::filesystem::create_directory(root_ + "/limit_alice");  // exists: wins, reads as 0
    EXPECT_EQ(da_user_limit(root_, "alice"), 0U);
}

// Limit files that disable the limit: no notice however many attempts.
TEST_F(DaSinkTest, NoNoticeWithoutAnEnforcedLimit) {
    struct Case {
        const char* name;
        std::vector<std::pair<std::string, std::string>> files;
    };
    const std::vector<Case> cases = {
        {"no limit files", {}},
        {"limit 0", {{"limit", "0\n"}}},
        {"limit negative", {{"limit", "-3\n"}}},
        {"limit garbage", {{"limit", "many\n"}}},
        {"limit_USER empty beats limit", {{"limit", "2\n"}, {"limit_alice", ""}}},
        {"limit_USER 0 beats limit", {{"limit", "2\n"}, {"limit_alice", "0"}}},
    };
    for (const Case& c : cases) {
        std::filesystem::remove_all(root_);
        std::filesystem::create_directory(root_);
        for (const auto& [name, content] : c.files)
            write(name, content);
        auto sink = open(config());
        for (int i = 0; i < 5; ++i)
            sink->explained(attempt("alice"));
        sink->settle(true);
        EXPECT_EQ(slurp(usage("alice")), "11111") << c.name;
        EXPECT_FALSE(exists(queue_path())) << c.name;
        EXPECT_EQ(sink->pending(), 0U) << c.name;
    }
}

TEST_F(DaSinkTest, GlobalLimitAndPerUserLimitAreEnforced) {
    write("limit", "2\n");
    write("limit_bob", "4\n");
    auto sink = open(config());
    for (int i = 0; i < 5; ++i) {
        sink->explained(attempt("alice"));
        sink->explained(attempt("bob", "/home/bob"));
    }
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()),
              (std::vector<std::string>{
                  "action=limit&username=alice&count=2&limit=2&email=&authenticated_id=&"
                  "sender_host_address=&log_time=1767225600",
                  "action=limit&username=bob&count=4&limit=4&email=&authenticated_id=&"
                  "sender_host_address=&log_time=1767225600"}));
}

// ---- the notice at the crossing -----------------------------------------------------

TEST_F(DaSinkTest, OneNoticeWhenTheCountReachesTheLimit) {
    write("limit", "3\n");
    auto sink = open(config(1));
    sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));
    // Size 2 = limit-1: watched (an Exim that stat'ed less may take the third place).
    sink->settle(true);
    EXPECT_FALSE(exists(queue_path()));
    EXPECT_EQ(sink->pending(), 1U);
    // The third byte is the count 3: it started at size 2 = limit-1, which an Exim may
    // have seen; the notice waits for settle().
    sink->explained(attempt("alice"));
    EXPECT_EQ(sink->pending(), 1U);
    EXPECT_FALSE(exists(queue_path()));
    sink->settle(true);
    EXPECT_EQ(queue(),
              "action=limit&username=alice&count=3&limit=3&email=&authenticated_id=&"
              "sender_host_address=&log_time=1767225600\n");
    EXPECT_EQ(mode_of(queue_path()), 0660U);
    for (int i = 0; i < 4; ++i)
        sink->explained(attempt("alice"));
    sink->counted_only(counted("alice", 10));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
    EXPECT_EQ(slurp(usage("alice")).size(), 17U);
    EXPECT_EQ(sink->stats().notifications, 1U);
}

TEST_F(DaSinkTest, JumpingOverTheLimitNotifiesAtOnce) {
    write("limit_alice", "5");
    auto sink = open(config(3));
    sink->explained(attempt("alice"));  // 3
    EXPECT_FALSE(exists(queue_path()));
    sink->explained(attempt("alice"));  // 3 -> 6: size 4 never existed
    EXPECT_EQ(sink->pending(), 0U);
    EXPECT_EQ(queue(),
              "action=limit&username=alice&count=6&limit=5&email=&authenticated_id=&"
              "sender_host_address=&log_time=1767225600\n");
    sink->explained(attempt("alice"));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
}

TEST_F(DaSinkTest, CountedOnlyCrossingNotifiesOnce) {
    write("limit", "10");
    auto sink = open(config(1));
    sink->counted_only(counted("alice", 25));
    EXPECT_EQ(count_lines_starting(queue(), "action=limit&username=alice&count=25&limit=10&"), 1U);
    sink->counted_only(counted("alice", 5));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
}

TEST_F(DaSinkTest, SettleWaitsForTheDelayAndTheDestructorFlushes) {
    write("limit", "1");
    DaSinkConfig c = config();
    c.settle_delay = std::chrono::hours(1);
    auto sink = open(c);
    sink->explained(attempt("alice"));
    sink->settle(false);
    sink->checkpoint(Checkpoint{});
    EXPECT_FALSE(exists(queue_path()));
    EXPECT_EQ(sink->pending(), 1U);
    sink.reset();  // the worker stops: the pending crossing is not lost
    EXPECT_EQ(count_lines_starting(queue(), "action=limit&username=alice&count=1&limit=1&"), 1U);
}

TEST_F(DaSinkTest, CheckpointSettlesOnceTheDelayIsOver) {
    write("limit", "1");
    DaSinkConfig c = config();
    c.settle_delay = std::chrono::milliseconds(0);
    auto sink = open(c);
    sink->explained(attempt("alice"));
    sink->checkpoint(Checkpoint{});
    EXPECT_EQ(lines_of(queue()).size(), 1U);
}

// Exim saw size limit-1 and wrote its notice; our byte then took the limit-th place
// before Exim's own: one notice, Exim's.
TEST_F(DaSinkTest, EximsOwnNoticeForTheCrossingIsNotRepeated) {
    write("limit", "5");
    auto sink = open(config());
    for (int i = 0; i < 4; ++i)
        sink->explained(attempt("alice"));
    const std::string exim_line = exim_limit_line("alice", 5, std::time(nullptr));
    exim_append(queue_path(), exim_line);  // Exim: stat 4, count 5 == limit: notice
    sink->explained(attempt("alice"));     // ours lands at 5
    exim_append(usage("alice"), "1");      // Exim's byte at 6
    sink->settle(true);
    EXPECT_EQ(queue(), exim_line);
    EXPECT_EQ(sink->stats().exim_notified, 1U);
    EXPECT_EQ(sink->stats().notifications, 0U);
}

// Issue 16: a local user's mail with an empty envelope sender (sendmail -f '<>') crosses
// the limit; exim.pl still writes its notice, with email= empty and authenticated_id= the
// login. Ours stood at the brink (limit-1): one notice, Exim's, whatever the sender.
TEST_F(DaSinkTest, EximsNoticeWithAnEmptySenderIsNotRepeated) {
    write("limit", "5");
    auto sink = open(config());
    for (int i = 0; i < 4; ++i)
        sink->explained(attempt("alice"));
    EXPECT_EQ(sink->pending(), 1U);
    const std::string exim_line =
        "action=limit&username=alice&count=5&limit=5&email=&"
        "authenticated_id=alice&sender_host_address=&log_time=" +
        std::to_string(std::time(nullptr)) + "\n";
    exim_append(queue_path(), exim_line);  // Exim: stat 4, count 5 == limit: notice
    exim_append(usage("alice"), "1");      // then its byte, the fifth
    sink->settle(true);
    EXPECT_EQ(queue(), exim_line);
    EXPECT_EQ(sink->stats().exim_notified, 1U);
    EXPECT_EQ(sink->stats().notifications, 0U);
}

// Our own notice of an earlier crossing (the same limit, moments before the nightly
// reset deleted the usage file) is not taken for Exim's notice of the next one.
TEST_F(DaSinkTest, OurOwnEarlierNoticeIsNotTakenForEximsNotice) {
    write("limit", "1");
    auto sink = open(config());
    Attempt now = attempt("alice");
    now.time = std::time(nullptr);
    sink->explained(now);  // 0 -> 1: at the brink, pending
    sink->settle(true);
    ASSERT_EQ(lines_of(queue()).size(), 1U);
    ASSERT_EQ(::unlink(usage("alice").c_str()), 0);  // the nightly reset
    sink->explained(now);                            // a new day's crossing, same second
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 2U);
    EXPECT_EQ(sink->stats().notifications, 2U);
    EXPECT_EQ(sink->stats().exim_notified, 0U);
}

// Exim saw size 3 (count 4, no notice); our byte made it 4; Exim's byte became the
// fifth, unannounced: we write the notice.
TEST_F(DaSinkTest, EximByteReachingTheLimitUnannouncedIsNotified) {
    write("limit", "5");
    auto sink = open(config());
    for (int i = 0; i < 3; ++i)
        sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));  // ends at 4 = limit-1: the brink
    sink->settle(true);
    EXPECT_FALSE(exists(queue_path()));  // not reached yet
    EXPECT_EQ(sink->pending(), 1U);
    exim_append(usage("alice"), "1");  // Exim's unannounced fifth
    sink->settle(true);
    EXPECT_EQ(queue(),
              "action=limit&username=alice&count=5&limit=5&email=&authenticated_id=&"
              "sender_host_address=&log_time=1767225600\n");
}

// A notice of yesterday still in the queue (DirectAdmin not running) is not today's.
TEST_F(DaSinkTest, OldEximNoticeDoesNotCountForToday) {
    write("limit", "2");
    exim_append(queue_path(), exim_limit_line("alice", 2, std::time(nullptr) - 86400));
    auto sink = open(config());
    sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 2U);
    EXPECT_EQ(sink->stats().notifications, 1U);
}

// The nightly reset deletes usage/*: counting restarts at 0, and the limit is crossed
// (and notified) again only when the new count reaches it, as Exim does.
TEST_F(DaSinkTest, DailyDeletionRestartsTheCountAndTheNotice) {
    write("limit", "3");
    auto sink = open(config());
    for (int i = 0; i < 4; ++i)
        sink->explained(attempt("alice"));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);

    std::filesystem::remove(usage("alice"));
    std::filesystem::remove(usage("alice.bytes"));
    sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));
    sink->settle(true);
    EXPECT_EQ(slurp(usage("alice")), "11");
    EXPECT_EQ(lines_of(queue()).size(), 1U);  // not crossed again yet
    sink->explained(attempt("alice"));
    sink->settle(true);
    EXPECT_EQ(slurp(usage("alice")), "111");
    EXPECT_EQ(lines_of(queue()).size(), 2U);
    EXPECT_EQ(lines_of(slurp(usage("alice.bytes"))).size(), 3U);
}

// Our own crossing deleted by the reset before it settled: the limit was reached that
// day, so the notice is still written.
TEST_F(DaSinkTest, CrossingDeletedBeforeItSettledIsStillNotified) {
    write("limit", "2");
    auto sink = open(config());
    sink->explained(attempt("alice"));
    sink->explained(attempt("alice"));
    std::filesystem::remove(usage("alice"));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
    // A brink (limit-1) deleted before anyone crossed it: nothing to tell.
    write("limit_bob", "2");
    sink->explained(attempt("bob", "/home/bob"));
    std::filesystem::remove(usage("bob"));
    sink->settle(true);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
    EXPECT_EQ(sink->pending(), 0U);
}

// ---- exempt accounts ----------------------------------------------------------------

TEST_F(DaSinkTest, ExemptAccountsAreNotCounted) {
    write("limit", "1");
    auto sink = open(config());
    sink->explained(attempt("alice", "/root", 0));  // uid 0, whatever the account
    sink->explained(attempt("root", "/root", 1000));
    sink->explained(attempt("diradmin", "/usr/local/directadmin", 1001));
    sink->counted_only(counted("diradmin", 50, 1001));
    sink->counted_only(counted("root", 50, 0));
    sink->settle(true);
    EXPECT_FALSE(exists(root_ + "/usage"));
    EXPECT_FALSE(exists(queue_path()));
    EXPECT_EQ(sink->stats().exempt, 103U);
    EXPECT_EQ(sink->stats().attempts, 0U);
}

// ---- hostile files ------------------------------------------------------------------

TEST_F(DaSinkTest, SymlinkAtTheUsageFileIsRefused) {
    const std::string target = tmp_.write("target", "precious");
    std::filesystem::create_directories(root_ + "/usage");
    std::filesystem::create_symlink(target, usage("alice"));
    write("limit", "1");
    auto sink = open(config());
    sink->explained(attempt("alice"));
    sink->counted_only(counted("alice", 3));
    sink->settle(true);
    EXPECT_EQ(slurp(target), "precious");
    EXPECT_TRUE(std::filesystem::is_symlink(usage("alice")));
    EXPECT_EQ(sink->stats().errors, 2U);
    EXPECT_EQ(sink->stats().bytes_appended, 0U);
    EXPECT_FALSE(exists(queue_path()));
    // The attempt's line still went to its own (regular) file.
    EXPECT_EQ(lines_of(slurp(usage("alice.bytes"))).size(), 1U);
}

TEST_F(DaSinkTest, SymlinkedUsageDirectoryAndQueueAreRefused) {
    const std::string elsewhere = tmp_.path() + "/elsewhere";
    std::filesystem::create_directory(elsewhere);
    std::filesystem::create_directory_symlink(elsewhere, root_ + "/usage");
    auto sink = open(config());
    sink->explained(attempt("alice"));
    EXPECT_TRUE(std::filesystem::is_empty(elsewhere));
    EXPECT_GE(sink->stats().errors, 1U);

    std::filesystem::remove(root_ + "/usage");
    const std::string target = tmp_.write("queue-target", "");
    std::filesystem::create_symlink(target, queue_path());
    write("limit", "2");
    sink->counted_only(counted("bob", 5));  // jumps over: notice at once, refused
    EXPECT_EQ(slurp(target), "");
    EXPECT_EQ(slurp(usage("bob")), "11111");
    EXPECT_EQ(sink->stats().notifications, 0U);
}

TEST_F(DaSinkTest, HardLinkedUsageFileIsRefused) {
    const std::string other = tmp_.write("other", "keep");
    std::filesystem::create_directories(root_ + "/usage");
    std::filesystem::create_hard_link(other, usage("alice"));
    auto sink = open(config());
    sink->explained(attempt("alice"));
    EXPECT_EQ(slurp(other), "keep");
    EXPECT_EQ(sink->stats().errors, 1U);
}

TEST_F(DaSinkTest, FifoAtTheUsageFileDoesNotHang) {
    std::filesystem::create_directories(root_ + "/usage");
    ASSERT_EQ(::mkfifo(usage("alice").c_str(), 0660), 0);
    auto sink = open(config());
    sink->explained(attempt("alice"));
    EXPECT_EQ(sink->stats().errors, 1U);
}

TEST_F(DaSinkTest, WriteFailuresAreCountedNotFatal) {
    write("usage", "not a directory");
    auto sink = open(config());
    sink->explained(attempt("alice"));
    sink->counted_only(counted("alice", 2));
    EXPECT_EQ(sink->stats().errors, 3U);  // .bytes, count, count
    EXPECT_EQ(slurp(root_ + "/usage"), "not a directory");
    std::filesystem::remove_all(root_);  // the whole root gone
    sink->explained(attempt("alice"));
    EXPECT_EQ(sink->stats().errors, 5U);
}

// ---- hostile strings ----------------------------------------------------------------

// Splits a DirectAdmin line into its keys and raw values, by '&' and the first '='.
std::vector<std::pair<std::string, std::string>> parse_pairs(const std::string& text) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        std::size_t amp = text.find('&', pos);
        if (amp == std::string::npos)
            amp = text.size();
        const std::string pair = text.substr(pos, amp - pos);
        const auto eq = pair.find('=');
        out.emplace_back(pair.substr(0, eq), eq == std::string::npos ? "" : pair.substr(eq + 1));
        pos = amp + 1;
    }
    return out;
}

TEST_F(DaSinkTest, HostileWorkingDirectoryCannotEndALineOrAddAKey) {
    const std::string cwd = "/home/alice/x&action=limit&username=root\nlimit=1%0A\r"s + '\0' +
                            "end=&email=root@localhost%26"s + "\xc2\x85\x7f";
    Attempt a = attempt("alice", cwd);
    a.cmdline = "php\nx&action=block_cracking&type=script="s + '\0';
    DaSinkConfig c = config();
    c.block_cracking = true;
    c.account_home = [](const std::string&) { return std::optional<std::string>("/home/alice"); };
    auto sink = open(c);
    sink->explained(a);

    const std::string text = slurp(usage("alice.bytes"));
    ASSERT_TRUE(text.ends_with("\n"));
    const std::string line = text.substr(0, text.size() - 1);
    for (const char bad : {'\n', '\r', '\0'})
        EXPECT_EQ(line.find(bad), std::string::npos) << static_cast<int>(bad);
    for (const char c8 : line) {
        const auto u = static_cast<unsigned char>(c8);
        EXPECT_TRUE(u >= 0x20 && u < 0x7f) << "byte " << static_cast<int>(u);
    }
    ASSERT_TRUE(line.starts_with("0="));
    const auto pairs = parse_pairs(line.substr(2));
    std::vector<std::string> keys;
    for (const auto& [key, value] : pairs) {
        keys.push_back(key);
        EXPECT_EQ(value.find('='), std::string::npos) << key << "=" << value;
    }
    EXPECT_EQ(keys, (std::vector<std::string>{"type", "email", "method", "id", "authenticated_id",
                                              "sender_host_address", "log_time", "message_size",
                                              "local_part", "domain", "path"}));
    EXPECT_EQ(pairs.back().second,
              "/home/alice/x%26action%3Dlimit%26username%3Droot%0Alimit%3D1%250A%0D%00end%3D%"
              "26email%3Droot@localhost%2526%C2%85%7F");
    EXPECT_EQ(decode_da_value(pairs.back().second), cwd);
    // Such a folder is no lsearch key: not blocked, no block_cracking notice.
    EXPECT_FALSE(exists(c.blocked_script_paths));
    EXPECT_FALSE(exists(queue_path()));
}

TEST_F(DaSinkTest, HostileAccountNamesAreRefused) {
    write("limit", "1");
    auto sink = open(config());
    const std::vector<std::string> names = {"",        "../etc/passwd", "..",
                                            ".hidden", "-rf",           "a&action=limit",
                                            "a=b",     "al\nice",       "al\rice",
                                            "a b",     "a/b",           "a%41",
                                            "a\0b"s,   "caf\xc3\xa9",   std::string(33, 'a')};
    for (const std::string& name : names) {
        EXPECT_FALSE(is_da_account_name(name)) << name;
        sink->explained(attempt(name));
        sink->counted_only(counted(name, 2));
    }
    sink->settle(true);
    EXPECT_EQ(sink->stats().errors, 2 * names.size());
    EXPECT_FALSE(exists(root_ + "/usage"));
    EXPECT_FALSE(exists(queue_path()));
    EXPECT_FALSE(exists(tmp_.path() + "/etc"));
    for (const std::string name : {"alice", "web_1", "a.b-c", "Admin", "unknown", "x"})
        EXPECT_TRUE(is_da_account_name(name)) << name;
}

TEST(DaValue, EncodingIsPrintableAndReversible) {
    std::string all;
    for (int i = 0; i < 256; ++i)
        all.push_back(static_cast<char>(i));
    const std::string encoded = encode_da_value(all);
    for (std::size_t i = 0; i < encoded.size(); ++i) {
        const char c = encoded[i];
        EXPECT_TRUE(c >= 0x20 && c < 0x7f) << i;
        EXPECT_NE(c, '&');
        EXPECT_NE(c, '=');
    }
    EXPECT_EQ(decode_da_value(encoded), all);
    EXPECT_EQ(encode_da_value("/home/alice/public_html"), "/home/alice/public_html");
    EXPECT_EQ(encode_da_value("a b+c"), "a b+c");
    EXPECT_EQ(encode_da_value("%&=\n"), "%25%26%3D%0A");
}

// ---- BlockCracking ------------------------------------------------------------------

class DaBlockCrackingTest : public DaSinkTest {
  protected:
    [[nodiscard]] DaSinkConfig blocking() const {
        DaSinkConfig c = config();
        c.block_cracking = true;
        c.account_home = [](const std::string& account) -> std::optional<std::string> {
            if (account == "alice")
                return "/home/alice/";
            if (account == "bob")
                return "/home/bob";
            return std::nullopt;
        };
        return c;
    }
    [[nodiscard]] std::string blocked() const {
        return slurp(tmp_.path() + "/blocked_script_paths");
    }
};

TEST_F(DaBlockCrackingTest, ScriptPathIsBlockedOnceWithItsNotice) {
    auto sink = open(blocking());
    const std::string cwd = "/home/alice/domains/example.com/public_html/wp-content";
    sink->explained(attempt("alice", cwd));
    EXPECT_EQ(blocked(), cwd + ":1767225600\n");
    EXPECT_EQ(queue(), "action=block_cracking&type=script&authenticated_id=&script_path=" + cwd +
                           "&sender_host_address=&log_time=1767225600\n");
    sink->explained(attempt("alice", cwd));
    sink->explained(attempt("alice", cwd));
    EXPECT_EQ(lines_of(blocked()).size(), 1U);
    EXPECT_EQ(lines_of(queue()).size(), 1U);
    EXPECT_EQ(sink->stats().blocked_paths, 1U);
    // Unblocked in DirectAdmin (its line removed): blocked again at the next attempt.
    std::filesystem::resize_file(tmp_.path() + "/blocked_script_paths", 0);
    sink->explained(attempt("alice", cwd));
    EXPECT_EQ(lines_of(blocked()).size(), 1U);
    EXPECT_EQ(lines_of(queue()).size(), 2U);
}

TEST_F(DaBlockCrackingTest, OnlyPathsInsideTheAccountsHomeAreBlocked) {
    auto sink = open(blocking());
    sink->explained(attempt("alice", "/"));
    sink->explained(attempt("alice", "/tmp"));
    sink->explained(attempt("alice", "/home/alicex/public_html"));
    sink->explained(attempt("bob", "/home/alice/public_html"));
    sink->explained(attempt("carol", "/home/carol"));          // no home known
    sink->explained(attempt("alice", "/home/alice/my site"));  // no lsearch key
    sink->explained(attempt("alice", "/home/alice/a:b"));
    Attempt gone = attempt("alice", "/home/alice/x");
    gone.identified = false;
    sink->explained(gone);
    sink->counted_only(counted("alice", 3));
    EXPECT_EQ(blocked(), "<missing>");
    EXPECT_FALSE(exists(queue_path()));
    sink->explained(attempt("bob", "/home/bob"));
    EXPECT_EQ(blocked(), "/home/bob:1767225600\n");
}

TEST_F(DaBlockCrackingTest, OffByDefault) {
    DaSinkConfig c = blocking();
    c.block_cracking = false;
    auto sink = open(c);
    sink->explained(attempt("alice"));
    EXPECT_EQ(blocked(), "<missing>");
    EXPECT_FALSE(exists(queue_path()));
}

TEST_F(DaBlockCrackingTest, SymlinkedListIsRefused) {
    const std::string target = tmp_.write("target", "");
    std::filesystem::create_symlink(target, tmp_.path() + "/blocked_script_paths");
    auto sink = open(blocking());
    sink->explained(attempt("alice"));
    EXPECT_EQ(slurp(target), "");
    EXPECT_FALSE(exists(queue_path()));
    EXPECT_EQ(sink->stats().errors, 1U);
}

// ---- Exim at the same time ----------------------------------------------------------

// What exim.pl's check_limits does for each send: the count from a stat of the file,
// refuse above the limit, the notice when count == limit, then its byte. No locks.
struct EximSimulator {
    std::string usage;
    std::string queue;
    std::uint64_t limit = 0;
    std::atomic<std::uint64_t> sends{0};
    std::uint64_t notices = 0;

    // false once refused ("You (alice) have reached your daily email limit").
    bool send() {
        struct stat st {};
        const std::uint64_t size =
            ::stat(usage.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
        const std::uint64_t count = size + 1;
        if (count > limit)
            return false;
        if (count == limit) {
            exim_append(queue, exim_limit_line("alice", limit, std::time(nullptr)));
            ++notices;
        }
        exim_append(usage, "1");
        ++sends;
        return true;
    }
};

void run_concurrent_flood(const std::string& root, const DaSinkConfig& config, std::uint64_t limit,
                          int attempts) {
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(root + "/usage");
    std::ofstream(root + "/limit_alice") << limit << "\n";
    auto sink = DaSink::open(config);
    ASSERT_TRUE(sink) << sink.error().message();
    EximSimulator exim{root + "/usage/alice", root + "/mail_task.queue", limit};
    std::thread mta([&] {
        while (exim.send()) {
        }
    });
    // The flood starts once Exim is sending, so that both write around the crossing.
    while (exim.sends.load() < 10)
        std::this_thread::yield();
    for (int i = 0; i < attempts; ++i) {
        if (i % 3 == 2)
            (*sink)->counted_only(counted("alice", 1));
        else
            (*sink)->explained(attempt("alice"));
        if (i % 64 == 0)
            (*sink)->settle(false);
    }
    mta.join();
    (*sink)->settle(true);

    const std::uint64_t size = std::filesystem::file_size(root + "/usage/alice");
    EXPECT_EQ(size,
              exim.sends.load() + static_cast<std::uint64_t>(attempts) * config.attempt_weight);
    EXPECT_EQ((*sink)->stats().bytes_appended,
              static_cast<std::uint64_t>(attempts) * config.attempt_weight);
    const std::string queue = slurp(root + "/mail_task.queue");
    EXPECT_EQ(count_lines_starting(queue, "action=limit&username=alice&"), 1U)
        << queue << "exim sends " << exim.sends.load() << ", exim notices " << exim.notices;
    EXPECT_EQ(lines_of(queue).size(), 1U);
    EXPECT_EQ((*sink)->stats().errors, 0U);
}

TEST_F(DaSinkTest, ConcurrentEximAndFloodGiveExactCountAndOneNotice) {
    for (const std::uint32_t weight : {1U, 3U}) {
        for (int round = 0; round < 6; ++round) {
            SCOPED_TRACE("weight " + std::to_string(weight) + " round " + std::to_string(round));
            // The default settle delay: the flood is over long before it elapses.
            const DaSinkConfig c = config(weight);
            // The limit falls inside the flood, where Exim and the sink interleave.
            run_concurrent_flood(root_, c, 400 + 37 * static_cast<std::uint64_t>(round), 600);
        }
    }
}

// ---- configuration ------------------------------------------------------------------

TEST(DaPipeline, ResolvedWithTheReason) {
    TempDir dir;
    const std::string virt = dir.path() + "/virtual";
    auto status = resolve_da_pipeline(DaPipeline::Auto, virt);
    EXPECT_FALSE(status.enabled);
    EXPECT_EQ(status.reason, "auto: " + virt + " does not exist");
    std::filesystem::create_directory(virt);
    status = resolve_da_pipeline(DaPipeline::Auto, virt);
    EXPECT_TRUE(status.enabled);
    EXPECT_EQ(status.reason, "auto: " + virt + " exists");
    const std::string file = dir.write("plain", "");
    status = resolve_da_pipeline(DaPipeline::Auto, file);
    EXPECT_FALSE(status.enabled);
    EXPECT_EQ(status.reason, "auto: " + file + " is not a directory");
    status = resolve_da_pipeline(DaPipeline::On, virt);
    EXPECT_TRUE(status.enabled);
    EXPECT_EQ(status.reason, "DA_PIPELINE = 1");
    status = resolve_da_pipeline(DaPipeline::On, dir.path() + "/none");
    EXPECT_TRUE(status.enabled);
    EXPECT_EQ(status.reason, "DA_PIPELINE = 1 (but " + dir.path() +
                                 "/none does not exist: every write will fail)");
    status = resolve_da_pipeline(DaPipeline::Off, virt);
    EXPECT_FALSE(status.enabled);
    EXPECT_EQ(status.reason, "DA_PIPELINE = 0");
}

TEST(DaSinkOpen, RefusesABadConfiguration) {
    TempDir dir;
    DaSinkConfig c;
    c.virtual_dir = dir.path();
    c.attempt_weight = 1001;
    auto sink = DaSink::open(c);
    ASSERT_FALSE(sink);
    EXPECT_EQ(sink.error().detail, "attempt weight 1001 is above the maximum 1000");
    c.attempt_weight = 1000;
    EXPECT_TRUE(DaSink::open(c));
    c.virtual_dir = dir.path() + "/none";
    sink = DaSink::open(c);
    ASSERT_FALSE(sink);
    EXPECT_EQ(sink.error().code, ENOENT);
    c.virtual_dir = dir.write("plain", "");
    sink = DaSink::open(c);
    ASSERT_FALSE(sink);
    EXPECT_EQ(sink.error().code, ENOTDIR);
}

TEST(DaSinkConfigFromPolicy, WeightBlockCrackingOwnerAndHomes) {
    const AccountDb db = AccountDb::parse(
        "root:x:0:0:root:/root:/bin/bash\n"
        "mail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n"
        "alice:x:1000:1000::/home/alice:/bin/bash\n",
        "root:x:0:\nmail:x:12:\nalice:x:1000:\n");
    Policy p;
    p.da_attempt_weight = 3;
    p.da_block_cracking = true;
    const DaSinkConfig c = da_sink_config(p, "/srv/virtual", db);
    EXPECT_EQ(c.virtual_dir, "/srv/virtual");
    EXPECT_EQ(c.attempt_weight, 3U);
    EXPECT_TRUE(c.block_cracking);
    const FileOwner owner = c.owner.value_or(FileOwner{0, 0});
    EXPECT_EQ(owner.uid, 8U);
    EXPECT_EQ(owner.gid, 12U);  // group "mail", not the user's primary group
    ASSERT_TRUE(c.account_home);
    EXPECT_EQ(c.account_home("alice"), std::optional<std::string>("/home/alice"));
    EXPECT_EQ(c.account_home("nobody"), std::nullopt);
    EXPECT_EQ(c.blocked_script_paths, "/var/spool/exim/blocked_script_paths");

    const AccountDb no_group = AccountDb::parse("mail:x:8:9::/var/mail:/bin/false\n", "");
    EXPECT_EQ(mail_owner(no_group).value_or(FileOwner{0, 0}).gid, 9U);
    EXPECT_FALSE(mail_owner(AccountDb::parse("", "")));
}

TEST_F(DaSinkTest, NewFilesAreOwnedByTheMailOwner) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "chown needs root";
    DaSinkConfig c = config();
    c.owner = FileOwner{4242, 4343};
    write("limit", "1");
    const mode_t old_umask = ::umask(077);
    auto sink = open(c);
    sink->explained(attempt("alice"));
    sink->settle(true);
    ::umask(old_umask);
    for (const std::string& path :
         {root_ + "/usage", usage("alice"), usage("alice.bytes"), queue_path()}) {
        struct stat st {};
        ASSERT_EQ(::lstat(path.c_str(), &st), 0) << path;
        EXPECT_EQ(st.st_uid, 4242U) << path;
        EXPECT_EQ(st.st_gid, 4343U) << path;
    }
    EXPECT_EQ(mode_of(root_ + "/usage"), 0750U);
    EXPECT_EQ(mode_of(usage("alice")), 0660U);
    EXPECT_EQ(mode_of(queue_path()), 0660U);
    EXPECT_EQ(sink->stats().errors, 0U);
}

}  // namespace
}  // namespace smtpfence::nfq
