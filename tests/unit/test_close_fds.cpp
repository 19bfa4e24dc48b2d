// close_fds: the range closed, the rest open, by close_range(2) and by the /proc
// fallback (EL8's kernel has no close_range).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/close_fds.h"

namespace smtpfence {
namespace {

bool is_open(int fd) {
    return ::fcntl(fd, F_GETFD) != -1;
}

// In a forked child (the tests' own descriptors stay open): opens five descriptors,
// closes the middle three with how, and exits 0 only when exactly those are closed.
void expect_middle_closed(void (*how)(unsigned, unsigned)) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        std::array<int, 5> fds{};
        for (int& fd : fds) {
            fd = ::open("/dev/null", O_RDONLY);
            if (fd < 0)
                ::_exit(10);
        }
        // open() hands out the lowest free numbers: not always consecutive.
        std::vector<int> sorted(fds.begin(), fds.end());
        std::sort(sorted.begin(), sorted.end());
        how(static_cast<unsigned>(sorted[1]), static_cast<unsigned>(sorted[3]));
        for (int fd = sorted[1]; fd <= sorted[3]; ++fd) {
            if (is_open(fd))
                ::_exit(11);
        }
        if (!is_open(sorted[0]) || !is_open(sorted[4]) || !is_open(STDERR_FILENO))
            ::_exit(12);
        how(static_cast<unsigned>(sorted[4]), ~0U);  // to the end, as the callers do
        ::_exit(is_open(sorted[4]) || !is_open(sorted[0]) ? 13 : 0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(CloseFds, ClosesTheRangeAndNothingElse) {
    expect_middle_closed(close_fds);
}

TEST(CloseFds, TheFallbackWithoutCloseRangeDoesTheSame) {
    expect_middle_closed(close_fds_one_by_one);
}

TEST(CloseFds, AnEmptyRangeClosesNothing) {
    const int fd = ::open("/dev/null", O_RDONLY);
    ASSERT_GE(fd, 0);
    close_fds(static_cast<unsigned>(fd) + 1, static_cast<unsigned>(fd));
    close_fds_one_by_one(static_cast<unsigned>(fd) + 1, static_cast<unsigned>(fd));
    EXPECT_TRUE(is_open(fd));
    ::close(fd);
}

}  // namespace
}  // namespace smtpfence
