#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>

#include "common/fd.h"
#include "common/files.h"

namespace smtpfence {
namespace {

struct Pipe {
    UniqueFd read;
    UniqueFd write;
};

Pipe make_pipe() {
    int fds[2] = {-1, -1};
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Reads fd to its end.
std::string read_to_end(int fd) {
    std::string out;
    char buf[8192];
    while (true) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return out;
        out.append(buf, static_cast<std::size_t>(n));
    }
}

std::string pattern(std::size_t size) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i)
        s[i] = static_cast<char>('a' + i % 26);
    return s;
}

TEST(WriteAll, WritesMoreThanThePipeHoldsWhole) {
    Pipe p = make_pipe();
    const std::string data = pattern(1U << 20U);  // 16 times a default pipe's 64 KiB
    std::string got;
    std::thread reader([&] { got = read_to_end(p.read.get()); });
    const auto written = write_all(p.write.get(), data);
    p.write.reset();
    reader.join();
    ASSERT_TRUE(written) << written.error().message();
    EXPECT_EQ(got, data);
}

TEST(WriteAll, NothingToWriteIsDone) {
    Pipe p = make_pipe();
    EXPECT_TRUE(write_all(p.write.get(), ""));
    p.write.reset();
    EXPECT_EQ(read_to_end(p.read.get()), "");
}

TEST(WriteAll, ErrorCarriesErrno) {
    const auto written = write_all(-1, "x");
    ASSERT_FALSE(written);
    EXPECT_EQ(written.error().code, EBADF);
    EXPECT_EQ(written.error().what, "write");
}

std::atomic<int> signals_seen{0};
void count_signal(int) {
    signals_seen.fetch_add(1);
}

// A signal whose handler is installed without SA_RESTART makes a write blocked on a
// full pipe fail with EINTR; write_all goes on and writes everything.
TEST(WriteAll, GoesOnAfterASignalInterruptsIt) {
    struct sigaction sa {};
    struct sigaction old {};
    sa.sa_handler = count_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the blocked write returns EINTR
    ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);

    Pipe p = make_pipe();
    // Fill the pipe first, so that write_all blocks before it has written a byte.
    ASSERT_EQ(::fcntl(p.write.get(), F_SETFL, O_NONBLOCK), 0);
    std::string filled;
    const std::string chunk(4096, 'f');
    while (true) {
        const ssize_t n = ::write(p.write.get(), chunk.data(), chunk.size());
        if (n <= 0)
            break;
        filled.append(chunk, 0, static_cast<std::size_t>(n));
    }
    ASSERT_EQ(errno, EAGAIN);
    ASSERT_EQ(::fcntl(p.write.get(), F_SETFL, 0), 0);

    const std::string data = pattern(256U << 10U);
    Result<void> written;
    std::atomic<bool> done{false};
    std::thread writer([&] {
        written = write_all(p.write.get(), data);
        done = true;
    });
    for (int i = 0; i < 5 && !done; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        ::pthread_kill(writer.native_handle(), SIGUSR1);
    }
    std::string got;
    std::thread reader([&] { got = read_to_end(p.read.get()); });
    writer.join();
    p.write.reset();
    reader.join();
    ::sigaction(SIGUSR1, &old, nullptr);

    EXPECT_GT(signals_seen.load(), 0);
    ASSERT_TRUE(written) << written.error().message();
    EXPECT_EQ(got, filled + data);
}

TEST(SendAll, SendsMoreThanTheSocketBufferHoldsWhole) {
    int fds[2] = {-1, -1};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    UniqueFd ours(fds[0]);
    UniqueFd theirs(fds[1]);
    const std::string data = pattern(4U << 20U);
    std::string got;
    std::thread reader([&] { got = read_to_end(theirs.get()); });
    const auto sent = send_all(ours.get(), data);
    ours.reset();
    reader.join();
    ASSERT_TRUE(sent) << sent.error().message();
    EXPECT_EQ(got, data);
}

// MSG_NOSIGNAL: a peer that has gone away is an error to handle, not SIGPIPE (which
// would end this test program).
TEST(SendAll, APeerGoneIsEpipeNotSigpipe) {
    int fds[2] = {-1, -1};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    UniqueFd ours(fds[0]);
    ::close(fds[1]);
    const auto sent = send_all(ours.get(), "request\n");
    ASSERT_FALSE(sent);
    EXPECT_EQ(sent.error().code, EPIPE);
    EXPECT_EQ(sent.error().what, "send");
}

}  // namespace
}  // namespace smtpfence
