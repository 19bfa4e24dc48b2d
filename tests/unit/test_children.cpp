// The daemon's one reaper (ctl/children.h): every child that ends goes to its owner
// with its status; the worker's supervisor takes only the worker, never another
// owner's child.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>

#include "ctl/children.h"
#include "ctl/supervisor.h"
#include "tests/support/child.h"

namespace smtpfence {
namespace {

// Waits until pid has ended, leaving it to be reaped.
bool ended_unreaped(pid_t pid) {
    return testing::wait_until(
        [&] {
            siginfo_t info{};
            return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT | WNOHANG) ==
                       0 &&
                   info.si_pid == pid;
        },
        std::chrono::seconds(5));
}

pid_t exiting_child(int code) {
    const pid_t pid = ::fork();
    if (pid == 0)
        _exit(code);
    return pid;
}

TEST(ChildrenTest, EachEndedChildGoesToItsOwnerWithItsStatus) {
    // A worker that runs until stopped (the supervisor appends --daemon-pid N: $0, $1).
    WorkerSupervisor worker({"/bin/sh", "-c", "exec sleep 30"});
    worker.start();
    const pid_t worker_pid = worker.pid();
    ASSERT_GT(worker_pid, 0);
    const pid_t query = exiting_child(3);
    const pid_t test = exiting_child(4);
    ASSERT_TRUE(ended_unreaped(query));
    ASSERT_TRUE(ended_unreaped(test));

    std::map<pid_t, int> others;
    const auto reap = [&] {
        return reap_children({[&](pid_t pid, int status) { return worker.ended(pid, status); },
                              [&](pid_t pid, int status) {
                                  if (pid != query && pid != test)
                                      return false;
                                  others[pid] = status;
                                  return true;
                              }});
    };
    (void)reap();
    ASSERT_EQ(others.size(), 2U);
    EXPECT_TRUE(WIFEXITED(others[query]) && WEXITSTATUS(others[query]) == 3);
    EXPECT_TRUE(WIFEXITED(others[test]) && WEXITSTATUS(others[test]) == 4);
    // Not the worker's: it still runs, and no restart is due.
    EXPECT_EQ(worker.pid(), worker_pid);
    EXPECT_EQ(worker.tick(), -1);

    ASSERT_EQ(::kill(worker_pid, SIGKILL), 0);
    ASSERT_TRUE(ended_unreaped(worker_pid));
    others.clear();
    (void)reap();
    EXPECT_TRUE(others.empty());
    EXPECT_EQ(worker.pid(), -1);
    EXPECT_GE(worker.tick(), 0);  // a restart is scheduled
    EXPECT_FALSE(worker.ended(worker_pid, 0));
}

TEST(ChildrenTest, AChildNoOwnerClaimsIsReapedAndCounted) {
    const pid_t stray = exiting_child(0);
    ASSERT_TRUE(ended_unreaped(stray));
    EXPECT_GE(reap_children({[](pid_t, int) { return false; }}), 1U);
    siginfo_t info{};
    EXPECT_EQ(::waitid(P_PID, static_cast<id_t>(stray), &info, WEXITED | WNOHANG), -1);
    EXPECT_EQ(errno, ECHILD);
}

}  // namespace
}  // namespace smtpfence
