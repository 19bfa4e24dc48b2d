// read_queue_proc_stats against files written exactly as the kernel's seq_show in
// net/netfilter/nfnetlink_queue.c prints them: "%5u %6u %5u %1u %5u %5u %5u %8u %2d\n".
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "nfq/proc_queue.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

using testing::TempDir;

struct Line {
    unsigned queue, portid, waiting, mode, range, queue_dropped, user_dropped, id_sequence;
};

std::string kernel_format(const Line& l) {
    char buf[128];
    const int n = std::snprintf(buf, sizeof buf, "%5u %6u %5u %1u %5u %5u %5u %8u %2d\n", l.queue,
                                l.portid, l.waiting, l.mode, l.range, l.queue_dropped,
                                l.user_dropped, l.id_sequence, 1);
    EXPECT_GT(n, 0);
    return buf;
}

TEST(ProcQueue, FindsTheQueueAmongOthers) {
    TempDir dir;
    const std::string path = dir.write(
        "nfnetlink_queue", kernel_format({0, 3001, 0, 2, 65531, 0, 0, 12}) +
                               kernel_format({2525, 4294962173U, 3, 2, 128, 17, 4096, 987654321}) +
                               kernel_format({65535, 1, 0, 1, 0, 0, 0, 0}));
    const auto s = read_queue_proc_stats(2525, path);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->portid, 4294962173U);  // an autobound port id: negative as a pid_t
    EXPECT_EQ(s->waiting, 3U);
    EXPECT_EQ(s->queue_dropped, 17U);
    EXPECT_EQ(s->user_dropped, 4096U);
    EXPECT_EQ(s->id_sequence, 987654321U);

    const auto first = read_queue_proc_stats(0, path);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(first->portid, 3001U);
    EXPECT_EQ(first->id_sequence, 12U);

    const auto last = read_queue_proc_stats(65535, path);
    ASSERT_TRUE(last.has_value());
    EXPECT_EQ(last->portid, 1U);
}

TEST(ProcQueue, LargeCountersAndSequence) {
    TempDir dir;
    const std::string path =
        dir.write("nfnetlink_queue",
                  kernel_format({2525, 77, 1024, 2, 0, 4000000000U, 4294967295U, 4294967295U}));
    const auto s = read_queue_proc_stats(2525, path);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->waiting, 1024U);
    EXPECT_EQ(s->queue_dropped, 4000000000U);
    EXPECT_EQ(s->user_dropped, 4294967295U);
    EXPECT_EQ(s->id_sequence, 4294967295U);
}

TEST(ProcQueue, UnboundQueueIsNullopt) {
    TempDir dir;
    const std::string path =
        dir.write("nfnetlink_queue", kernel_format({0, 3001, 0, 2, 65531, 0, 0, 12}));
    EXPECT_FALSE(read_queue_proc_stats(2525, path).has_value());
    EXPECT_FALSE(read_queue_proc_stats(2525, dir.write("empty", "")).has_value());
    // No nfnetlink_queue module loaded: no file at all.
    EXPECT_FALSE(read_queue_proc_stats(2525, dir.path() + "/missing").has_value());
}

}  // namespace
}  // namespace smtpfence::nfq
