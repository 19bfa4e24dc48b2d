// The daemon's query children (ctl/history_child.h): the answer's line, streamed; its
// deadline; its memory at 100,000 records; the slots kept for admins.
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

// ---- the daemon's children ----------------------------------------------------------

ctl::Request history_request(ctl::Command command) {
    ctl::Request r;
    r.command = command;
    return r;
}

// The line answer_history() writes, read while it is written.
std::string answer_line(const std::string& dir, const ctl::Request& r,
                        std::optional<std::uint32_t> only_uid,
                        std::chrono::steady_clock::time_point deadline) {
    std::array<int, 2> fds{};
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()), 0);
    UniqueFd reader(fds[0]);
    std::thread writer([&, fd = UniqueFd(fds[1])] {
        const auto written = answer_history(fd.get(), dir, r, only_uid, deadline);
        EXPECT_TRUE(written.has_value()) << written.error().message();
    });
    std::string line;
    std::array<char, 65536> buf{};
    ssize_t n = 0;
    while ((n = ::recv(reader.get(), buf.data(), buf.size(), 0)) > 0)
        line.append(buf.data(), static_cast<std::size_t>(n));
    writer.join();
    return line;
}

// The result of an answer, or its error message as {"error": message}.
json answer_of(const std::string& dir, const ctl::Request& r, std::optional<std::uint32_t> only_uid,
               std::chrono::steady_clock::time_point deadline) {
    const json j = json::parse(answer_line(dir, r, only_uid, deadline));
    if (j.at("ok") == true)
        return j.at("result");
    return {{"error", j.at("error").at("message")}, {"code", j.at("error").at("code")}};
}

TEST_F(HistoryQueryTest, AnswersSayWhatWasShownAndTheScope) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    const auto in = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    ctl::Request r = history_request(ctl::Command::Attempts);
    r.limit = 2;
    const json a = answer_of(dir.path(), r, std::nullopt, in);
    EXPECT_EQ(a.at("shown"), 2) << a.dump();
    EXPECT_EQ(a.at("more"), true);
    EXPECT_EQ(a.at("store"), dir.path() + "/history.db");
    EXPECT_FALSE(a.contains("only_uid"));
    const json mine = answer_of(dir.path(), r, kBob, in);
    EXPECT_EQ(mine.at("only_uid"), kBob) << mine.dump();
    EXPECT_EQ(mine.at("more"), false);

    const json today = answer_of(dir.path(), history_request(ctl::Command::Top), std::nullopt, in);
    EXPECT_EQ(today.at("since"), local_midnight(std::time(nullptr))) << today.dump();
    EXPECT_EQ(today.at("accounts"), json::array());  // all ten days ago
    // Over more than a day, top counts whole days: since is that day's midnight, and
    // the ten-day-old records are in the ranking from `daily`.
    ctl::Request month = history_request(ctl::Command::Top);
    const std::time_t now = std::time(nullptr);
    month.since = now - 30 * 86400 + 3600;
    const json m = answer_of(dir.path(), month, std::nullopt, in);
    EXPECT_EQ(m.at("since"), local_midnight(static_cast<std::time_t>(*month.since))) << m.dump();
    EXPECT_FALSE(m.at("accounts").empty()) << m.dump();
    // Within the last day it is exact.
    ctl::Request hours = history_request(ctl::Command::Top);
    hours.since = now - 5 * 3600;
    EXPECT_EQ(answer_of(dir.path(), hours, std::nullopt, in).at("since"), *hours.since);

    r.dst = "not-an-address";
    const json bad = answer_of(dir.path(), r, std::nullopt, in);
    EXPECT_EQ(bad.at("code"), "invalid_argument") << bad.dump();
    EXPECT_EQ(bad.at("error"), "dst \"not-an-address\": not an IPv4 or IPv6 address");
}

// Written record by record, the line is the one encode_ok() makes of the whole answer,
// byte for byte (smtpfencectl and scripts parse it).
TEST_F(HistoryQueryTest, TheStreamedLineIsTheLineOfTheWholeAnswer) {
    ASSERT_NO_FATAL_FAILURE(add_usual());
    for (int i = 0; i < 2000; ++i) {  // several chunks
        HistoryRow r = alice(day(2, i));
        r.cmdline = "php \"quoted\" \xff\xfe not UTF-8 " + std::to_string(i);
        ASSERT_TRUE(file.add(r).has_value());
    }
    const auto in = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (const std::uint32_t limit : {1U, 6U, 1500U, 3000U}) {
        for (const std::optional<std::uint32_t> only_uid :
             {std::optional<std::uint32_t>(), std::optional<std::uint32_t>(kBob)}) {
            ctl::Request r = history_request(ctl::Command::Attempts);
            r.limit = limit;
            const auto page = attempts({.limit = limit, .only_uid = only_uid});
            json whole = {{"records", page.records},
                          {"shown", page.records.size()},
                          {"more", page.more},
                          {"store", dir.path() + "/history.db"}};
            if (only_uid)
                whole["only_uid"] = *only_uid;
            EXPECT_EQ(answer_line(dir.path(), r, only_uid, in), ctl::encode_ok(whole))
                << "limit " << limit;
        }
    }
}

TEST_F(HistoryQueryTest, AQueryPastItsDeadlineStopsWithAClearError) {
    // Far more than the 1000 steps between two looks at the clock.
    ASSERT_TRUE(file.add_copies(bob(day0()), 20000, 1).has_value());
    ctl::Request r = history_request(ctl::Command::Attempts);
    r.limit = HistoryReader::kMaxLimit;
    const json late = answer_of(dir.path(), r, std::nullopt, std::chrono::steady_clock::now());
    EXPECT_EQ(late.at("code"), "failed") << late.dump();
    EXPECT_NE(late.at("error").get<std::string>().find("the query ran past its time limit"),
              std::string::npos)
        << late.dump();
}

// Peak memory of a child answering `attempts --limit 100000` from 100,000 records: the
// issue's bound for the daemon's side is 32 MiB. Without AddressSanitizer: the growth of
// the child's resident set (ru_maxrss from wait4, its high-water mark reset at the
// start). With it, freed memory waits in its quarantine (256 MiB) and would read as
// growth, so: the peak of the heap in use, from its malloc and free hooks.
#ifdef __SANITIZE_ADDRESS__
extern "C" {
int __sanitizer_install_malloc_and_free_hooks(void (*)(const volatile void*, std::size_t),
                                              void (*)(const volatile void*));
std::size_t __sanitizer_get_allocated_size(const volatile void*);
}
std::atomic<std::int64_t> g_heap{0}, g_heap_peak{0};
void on_malloc(const volatile void*, std::size_t size) {
    const std::int64_t now = g_heap += static_cast<std::int64_t>(size);
    std::int64_t peak = g_heap_peak.load();
    while (now > peak && !g_heap_peak.compare_exchange_weak(peak, now)) {
    }
}
void on_free(const volatile void* p) {
    g_heap -= static_cast<std::int64_t>(__sanitizer_get_allocated_size(p));
}
#endif

long status_kib(const char* key) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with(key))
            return std::stol(line.substr(std::strlen(key)));
    }
    return -1;
}

TEST_F(HistoryQueryTest, AChildAnswersAHundredThousandRecordsInLittleMemory) {
    constexpr std::uint32_t kRecords = 100000;
    ASSERT_TRUE(file.add_copies(alice(day0()), kRecords, 1).has_value());
    std::array<int, 2> answer{}, growth{};
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, answer.data()), 0);
    ASSERT_EQ(::pipe2(growth.data(), O_CLOEXEC), 0);
    UniqueFd answer_in(answer[0]), growth_in(growth[0]);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::close(answer[0]);
        std::ofstream("/proc/self/clear_refs") << "5";  // the high-water mark: from here
        long start = status_kib("VmRSS:");
#ifdef __SANITIZE_ADDRESS__
        __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
        start = 0;
#endif
        ctl::Request r = history_request(ctl::Command::Attempts);
        r.limit = HistoryReader::kMaxLimit;
        const bool ok = answer_history(answer[1], dir.path(), r, std::nullopt,
                                       std::chrono::steady_clock::now() + std::chrono::minutes(2))
                            .has_value();
        long peak = 0;
#ifdef __SANITIZE_ADDRESS__
        peak = static_cast<long>(g_heap_peak.load() / 1024);
#endif
        const long grown = peak - start;  // without ASan: finished by ru_maxrss below
        (void)!::write(growth[1], &grown, sizeof grown);
        _exit(ok ? 0 : 1);
    }
    ::close(answer[1]);
    ::close(growth[1]);
    std::size_t bytes = 0;
    std::string tail;
    std::array<char, 65536> buf{};
    ssize_t n = 0;
    while ((n = ::recv(answer_in.get(), buf.data(), buf.size(), 0)) > 0) {
        bytes += static_cast<std::size_t>(n);
        tail = (tail + std::string(buf.data(), static_cast<std::size_t>(n)));
        tail.erase(0, tail.size() > 200 ? tail.size() - 200 : 0);
    }
    long grown = 0;
    ASSERT_EQ(::read(growth_in.get(), &grown, sizeof grown), static_cast<ssize_t>(sizeof grown));
    int status = 0;
    rusage usage{};
    ASSERT_EQ(::wait4(pid, &status, 0, &usage), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
#ifndef __SANITIZE_ADDRESS__
    grown += usage.ru_maxrss;  // KiB on Linux
#endif
    EXPECT_NE(tail.find("],\"shown\":100000,\"store\":"), std::string::npos) << tail;
    EXPECT_GT(bytes, std::size_t{kRecords} * 100);
    EXPECT_LT(grown, 32 * 1024) << "KiB";
    std::cout << "[ note ] " << bytes << " bytes answered; child peak grew by " << grown
              << " KiB\n";
}

// Children answer on their socket. A uid that is not an admin runs at most two at once,
// and all such uids together leave two of the eight to root and the admins.
TEST_F(HistoryQueryTest, QueryChildrenAnswerAndOrdinaryUsersLeaveRoomForAdmins) {
    // Enough records that an answer outgrows a small socket buffer: each child blocks in
    // its write until the test reads.
    for (int i = 0; i < 300; ++i) {
        ASSERT_TRUE(file.add(alice(day0(i))).has_value());
        ASSERT_TRUE(file.add(bob(day0(i), 1)).has_value());
    }
    HistoryQueries queries(dir.path());
    std::vector<std::array<UniqueFd, 2>> sockets;
    ctl::Request r = history_request(ctl::Command::Attempts);
    r.limit = 300;
    const auto start = [&](HistoryPeer who) {
        std::array<int, 2> fds{};
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds.data()), 0);
        const int small = 4096;
        ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        auto started = queries.start(r, who, fds[1]);
        ::close(fds[1]);  // the child holds its copy
        if (started)
            sockets.push_back({UniqueFd(fds[0]), UniqueFd()});
        else
            ::close(fds[0]);
        return started;
    };
    const HistoryPeer bob_peer{.uid = kBob}, alice_peer{.uid = kAlice}, root{.admin = true};
    ASSERT_TRUE(start(bob_peer).has_value());
    ASSERT_TRUE(start(bob_peer).has_value());
    const auto third = start(bob_peer);
    ASSERT_FALSE(third.has_value());
    EXPECT_EQ(third.error().message,
              "busy: your 2 history queries are still running; read their answers first");
    ASSERT_TRUE(start(alice_peer).has_value());
    ASSERT_TRUE(start(alice_peer).has_value());
    ASSERT_TRUE(start({.uid = kWww}).has_value());
    ASSERT_TRUE(start({.uid = kWww}).has_value());
    const auto seventh = start({.uid = 4242});
    ASSERT_FALSE(seventh.has_value());
    EXPECT_EQ(seventh.error().message,
              "busy: 6 history queries of other users are running; try again");
    ASSERT_TRUE(start(root).has_value());
    ASSERT_TRUE(start({.uid = 1500, .admin = true}).has_value());
    EXPECT_EQ(queries.running(), HistoryQueries::kMaxRunning);
    const auto busy = start(root);
    ASSERT_FALSE(busy.has_value());
    EXPECT_EQ(busy.error().message, "busy: 8 history queries are running; try again");

    for (std::size_t i = 0; i < sockets.size(); ++i) {
        std::string line;
        std::array<char, 65536> buf{};
        ssize_t n = 0;
        while ((n = ::recv(sockets[i][0].get(), buf.data(), buf.size(), 0)) > 0)
            line.append(buf.data(), static_cast<std::size_t>(n));
        const json j = json::parse(line, nullptr, false);
        ASSERT_TRUE(j.is_object()) << line.substr(0, 200);
        EXPECT_EQ(j.value("ok", false), true) << line.substr(0, 200);
        // bob's, alice's, the web server's (none), the admins' (all of them).
        EXPECT_EQ(j["result"]["shown"], i == 4 || i == 5 ? 0 : 300) << i;
        if (i < 2) {
            for (const json& record : j["result"]["records"])
                ASSERT_EQ(record.at("uid"), kBob);
        }
        EXPECT_EQ(j["result"].contains("only_uid"), i < 6) << i;
    }
    testing::wait_until(
        [&] {
            (void)reap_children({[&](pid_t pid, int) { return queries.ended(pid); }});
            return queries.running() == 0;
        },
        std::chrono::seconds(5));
    EXPECT_EQ(queries.running(), 0U);
}

}  // namespace
}  // namespace smtpfence
