// The fixture of the history's read-side tests (test_history_query.cpp) and of the
// daemon's query children (test_history_child.cpp): a history.db built with plain SQL
// on the schema, and the usual records in it.
#pragma once

#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

#include "common/local_time.h"
#include "nfq/history_query.h"
#include "tests/support/history_rows.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::htest {

using nfq::AttemptQuery;
using nfq::HistoryReader;
using nlohmann::json;
using testing::HistoryFile;
using testing::HistoryRow;
using testing::TempDir;

constexpr std::uint32_t kAlice = 1001, kBob = 1002, kWww = 33;

class HistoryQueryTest : public ::testing::Test {
  protected:
    HistoryQueryTest() : file(HistoryFile::create(dir.path()).value()) {}

    // Ten local days ago at midnight, and the seconds into that day.
    static std::int64_t day0(std::int64_t seconds = 0) {
        return local_midnight(std::time(nullptr), -10) + seconds;
    }
    static std::int64_t day(int n, std::int64_t seconds = 0) {
        return local_midnight(static_cast<std::time_t>(day0()), n) + seconds;
    }

    static HistoryRow alice(std::int64_t epoch) {
        return {.epoch = epoch,
                .uid = kAlice,
                .gid = kAlice,
                .user = "alice",
                .account = "alice",
                .pid = 4242,
                .exe = "/usr/bin/php",
                .cwd = "/home/alice/site",
                .cmdline = "php mailer.php"};
    }
    static HistoryRow bob(std::int64_t epoch, std::uint64_t counted = 0) {
        HistoryRow r{.epoch = epoch, .uid = kBob, .gid = kBob, .user = "bob", .account = "shop"};
        r.count = counted;
        if (counted == 0) {
            r.exe = "/usr/bin/perl";
            r.cwd = "/home/bob";
            r.cmdline = "perl spam.pl";
            r.dst = "198.51.100.7";
            r.dport = 587;
        }
        return r;
    }
    // The web server's uid, billed to alice's account by its folder; unidentified.
    static HistoryRow www(std::int64_t epoch) {
        return {.epoch = epoch, .uid = kWww, .gid = kWww, .user = "www-data", .account = "alice"};
    }

    // The usual history: 3 days of alice, bob in between, the web server once.
    void add_usual() {
        HistoryRow v6 = alice(day0(7200));
        v6.family = 6;
        v6.src = "2001:db8::5";
        v6.dst = "2001:db8::1";
        for (const HistoryRow& r : {alice(day0(3600)), www(day0(4000)), bob(day0(5000)),
                                    bob(day0(6000), 5), v6, alice(day(1, 100))}) {
            ASSERT_TRUE(file.add(r).has_value());
        }
    }

    nfq::AttemptPage attempts(AttemptQuery q) {
        auto reader = HistoryReader::open(dir.path());
        EXPECT_TRUE(reader.has_value()) << reader.error().message();
        auto page = reader->attempts(q);
        EXPECT_TRUE(page.has_value()) << page.error().message();
        return page.value_or(nfq::AttemptPage{});
    }
    std::vector<std::int64_t> epochs(const AttemptQuery& q) {
        std::vector<std::int64_t> out;
        for (const json& j : attempts(q).records)
            out.push_back(j.at("epoch").get<std::int64_t>() - day0());
        return out;
    }
    json top(nfq::TopQuery q) {
        auto reader = HistoryReader::open(dir.path());
        EXPECT_TRUE(reader.has_value()) << reader.error().message();
        auto rows = reader->top(q);
        EXPECT_TRUE(rows.has_value()) << rows.error().message();
        return rows.value_or(json::array());
    }

    TempDir dir;
    HistoryFile file;
};

}  // namespace smtpfence::htest
