// The local threshold alert's decisions (ctl/local_alerts.h AlertWindow), fed samples
// and a clock of its own; its environment and mail (ctl/local_alert_child.h,
// ctl/local_alert_mail.h) with hostile folder names. The daemon, the command and a real
// MTA: tests/integration/test_local_alerts.cpp.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "ctl/local_alert_child.h"
#include "ctl/local_alert_mail.h"
#include "ctl/local_alerts.h"

namespace smtpfence {
namespace {

using namespace std::chrono_literals;
using Totals = std::map<std::uint32_t, std::uint64_t>;
using Clock = AlertWindow::Clock;

// A window of threshold 10 per 600 s, fed every 5 s from t0.
class Window : public ::testing::Test {
  protected:
    Window() { window.configure(10, 600s); }

    std::vector<FiredAlert> at(std::chrono::seconds t, const Totals& totals) {
        return window.feed(totals, t0 + t);
    }

    AlertWindow window;
    const Clock::time_point t0 = Clock::time_point() + 1000h;
};

TEST_F(Window, FiresWhenTheThresholdIsReachedWithinTheInterval) {
    EXPECT_TRUE(at(0s, {}).empty());
    EXPECT_TRUE(at(5s, {{1002, 9}}).empty());  // new since the last feed: 9 in the window
    EXPECT_EQ(at(10s, {{1002, 10}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, DoesNotFireJustUnderTheThreshold) {
    EXPECT_TRUE(at(0s, {}).empty());
    // 9 attempts in every 600 s: 9 at t=5, 9 more at t=610 (the first 9 left the window
    // at t=605), 9 more at t=1215.
    EXPECT_TRUE(at(5s, {{1002, 9}}).empty());
    for (auto t = 10s; t < 610s; t += 5s)
        EXPECT_TRUE(at(t, {{1002, 9}}).empty()) << t.count();
    EXPECT_TRUE(at(610s, {{1002, 18}}).empty());
    EXPECT_TRUE(at(1215s, {{1002, 27}}).empty());
}

TEST_F(Window, OldAttemptsLeaveTheWindow) {
    EXPECT_TRUE(at(0s, {}).empty());
    EXPECT_TRUE(at(5s, {{1002, 6}}).empty());
    // 6 at t=5 and 4 at t=610: never 10 within 600 s.
    EXPECT_TRUE(at(610s, {{1002, 10}}).empty());
    // 4 more at t=700: 8 since t=610.
    EXPECT_TRUE(at(700s, {{1002, 14}}).empty());
    // And 2 more at t=800: 10 within [200, 800].
    EXPECT_EQ(at(800s, {{1002, 16}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, FiresOncePerIntervalWhileTheAccountKeepsGoing) {
    EXPECT_TRUE(at(0s, {}).empty());
    std::vector<std::chrono::seconds> fired_at;
    std::uint64_t total = 0;
    for (auto t = 5s; t <= 1800s; t += 5s) {
        total += 5;  // one attempt a second, 60 times the threshold per interval
        for (const FiredAlert& a : at(t, {{1002, total}})) {
            EXPECT_EQ(a.uid, 1002U);
            fired_at.push_back(t);
        }
    }
    // At 10 attempts (t=10), then an interval later each time, counting only what
    // came after the previous alert.
    EXPECT_EQ(fired_at, (std::vector<std::chrono::seconds>{10s, 610s, 1210s}));
}

TEST_F(Window, TheNextAlertCountsOnlyAttemptsAfterThePrevious) {
    EXPECT_TRUE(at(0s, {}).empty());
    EXPECT_EQ(at(5s, {{1002, 50}}), (std::vector<FiredAlert>{{1002, 50}}));
    // Quiet until 605: the next interval starts with nothing new.
    EXPECT_TRUE(at(605s, {{1002, 50}}).empty());
    EXPECT_TRUE(at(700s, {{1002, 59}}).empty());
    EXPECT_EQ(at(705s, {{1002, 60}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, AccountsAreSeparate) {
    EXPECT_TRUE(at(0s, {{1001, 100}, {1002, 100}}).empty());  // the baseline
    EXPECT_EQ(at(5s, {{1001, 105}, {1002, 110}, {1003, 3}}), (std::vector<FiredAlert>{{1002, 10}}));
    EXPECT_EQ(at(10s, {{1001, 110}, {1002, 200}, {1003, 13}}),
              (std::vector<FiredAlert>{{1001, 10}, {1003, 13}}));
    EXPECT_TRUE(at(15s, {{1001, 500}, {1002, 500}, {1003, 500}}).empty());
}

TEST_F(Window, WhatTheCountersHeldAtTheFirstFeedIsNotAnAlert) {
    EXPECT_TRUE(at(0s, {{1002, 5000}}).empty());
    EXPECT_TRUE(at(5s, {{1002, 5009}}).empty());
    EXPECT_EQ(at(10s, {{1002, 5010}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, ACounterThatStartsAgainIsCarried) {
    EXPECT_TRUE(at(0s, {{1002, 400}}).empty());
    EXPECT_TRUE(at(5s, {{1002, 405}}).empty());
    // The set element was re-added (the table rebuilt): the kernel counts from 0 again.
    // 4 attempts since: 9 in the window, not 405 less.
    EXPECT_TRUE(at(10s, {{1002, 4}}).empty());
    EXPECT_EQ(at(15s, {{1002, 5}}), (std::vector<FiredAlert>{{1002, 10}}));
    // Gone from the set for a while, then back from 0.
    EXPECT_TRUE(at(20s, {}).empty());
    EXPECT_TRUE(at(700s, {{1002, 3}}).empty());
    EXPECT_EQ(at(705s, {{1002, 10}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, IdleAccountsGoneFromTheSetAreForgotten) {
    EXPECT_TRUE(at(0s, {}).empty());
    EXPECT_EQ(at(5s, {{1002, 10}, {1003, 1}}).size(), 1U);
    EXPECT_EQ(window.tracked(), 2U);
    EXPECT_TRUE(at(700s, {}).empty());
    EXPECT_EQ(window.tracked(), 0U);
    // Still in the set: kept, so that its total does not look new.
    EXPECT_TRUE(at(705s, {{1003, 9}}).empty());
    EXPECT_TRUE(at(2000s, {{1003, 9}}).empty());
    EXPECT_EQ(window.tracked(), 1U);
}

TEST_F(Window, ThresholdZeroIsOffAndForgets) {
    EXPECT_TRUE(at(0s, {}).empty());
    window.configure(0, 600s);
    EXPECT_TRUE(at(5s, {{1002, 1000}}).empty());
    EXPECT_EQ(window.tracked(), 0U);
    window.configure(10, 600s);
    EXPECT_TRUE(at(10s, {{1002, 1000}}).empty());  // a new baseline
    EXPECT_EQ(at(15s, {{1002, 1010}}), (std::vector<FiredAlert>{{1002, 10}}));
}

TEST_F(Window, ALongIntervalKeepsFewSamplesPerAccount) {
    window.configure(1000000, 86400s);
    std::uint64_t total = 0;
    for (auto t = 0s; t <= 86400s * 2; t += 5s)
        EXPECT_TRUE(at(t, {{1002, total += 7}}).empty());
    // 7 attempts every 5 s is 120,960 a day; the window counts at most a 64th less.
    window.configure(120960 - 120960 / 64, 86400s);
    EXPECT_EQ(at(86400s * 2 + 5s, {{1002, total + 7}}).size(), 1U);
}

AlertFacts hostile_facts() {
    return AlertFacts{.uid = 1002,
                      .count = 42,
                      .interval = 600s,
                      .account = "bob",
                      .user = "bob",
                      .pid = 4242,
                      .last_epoch = 1700000000,
                      .exe = "/usr/bin/perl",
                      .cwd = "/home/bob/x\"y\nSubject: injected\r\n.\r\nRCPT TO:<a@b>",
                      .cmdline = "perl -e 'print \"\\n\"'"};
}

TEST(AlertEnvironment, CarriesTheValuesAsTheyAre) {
    const auto env = alert_environment(hostile_facts());
    const auto has = [&](const std::string& e) {
        return std::find(env.begin(), env.end(), e) != env.end();
    };
    EXPECT_TRUE(has("SMTPFENCE_ACCOUNT=bob"));
    EXPECT_TRUE(has("SMTPFENCE_UID=1002"));
    EXPECT_TRUE(has("SMTPFENCE_COUNT=42"));
    EXPECT_TRUE(has("SMTPFENCE_INTERVAL=600"));
    EXPECT_TRUE(has("SMTPFENCE_PID=4242"));
    EXPECT_TRUE(has("SMTPFENCE_EXE=/usr/bin/perl"));
    EXPECT_TRUE(has("SMTPFENCE_CWD=/home/bob/x\"y\nSubject: injected\r\n.\r\nRCPT TO:<a@b>"));
    EXPECT_TRUE(has("SMTPFENCE_CMDLINE=perl -e 'print \"\\n\"'"));
    EXPECT_TRUE(has("PATH=/usr/sbin:/usr/bin:/sbin:/bin"));
    EXPECT_EQ(env.size(), 10U);
}

TEST(AlertMail, AHostileFolderNameStaysOneEscapedBodyLine) {
    const std::string m = alert_message(hostile_facts(), "root@localhost", "mx1", 1700000000);
    const auto body_at = m.find("\r\n\r\n");
    ASSERT_NE(body_at, std::string::npos);
    const std::string headers = m.substr(0, body_at + 2);
    // One header a line, each "Name: value", none injected.
    std::size_t subjects = 0, lines = 0;
    for (std::size_t start = 0; start < headers.size();) {
        const auto end = headers.find("\r\n", start);
        const std::string line = headers.substr(start, end - start);
        EXPECT_NE(line.find(": "), std::string::npos) << line;
        subjects += line.starts_with("Subject:") ? 1 : 0;
        ++lines;
        start = end + 2;
    }
    EXPECT_EQ(subjects, 1U);
    EXPECT_EQ(lines, 8U);
    EXPECT_NE(headers.find("Subject: smtpfence: bob made 42 SMTP attempts in 600 s on mx1\r\n"),
              std::string::npos)
        << headers;
    // Only CRLF line ends, ASCII only, the folder on one line, escaped.
    for (std::size_t i = 0; i < m.size(); ++i) {
        EXPECT_TRUE(static_cast<unsigned char>(m[i]) < 0x80) << i;
        if (m[i] == '\n') {
            EXPECT_EQ(m[i - 1], '\r') << i;
        }
        if (m[i] == '\r') {
            EXPECT_EQ(m[i + 1], '\n') << i;
        }
    }
    EXPECT_NE(m.find("  folder:  /home/bob/x\"y\\x0aSubject: injected\\x0d\\x0a.\\x0d\\x0aRCPT "
                     "TO:<a@b>\r\n"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("  program: /usr/bin/perl\r\n"), std::string::npos);
    EXPECT_NE(m.find("  pid:     4242\r\n"), std::string::npos);
}

TEST(AlertMail, ABareLocalPartIsQualified) {
    EXPECT_EQ(alert_recipient("root"), "root@localhost");
    EXPECT_EQ(alert_recipient("admin@example.com"), "admin@example.com");
}

// A scripted SMTP server on the loopback (one connection): answers each command with
// the reply its script gives for the command's first word, and keeps what DATA carried.
class ScriptedSmtp {
  public:
    explicit ScriptedSmtp(std::map<std::string, std::string> replies)
        : replies_(std::move(replies)) {
        listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!listener_.valid()) {
            ADD_FAILURE() << "socket: " << errno_text(errno);
            return;
        }
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), len), 0);
        EXPECT_EQ(::listen(listener_.get(), 1), 0);
        EXPECT_EQ(::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
        port_ = ntohs(a.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~ScriptedSmtp() {
        ::shutdown(listener_.get(), SHUT_RDWR);
        if (thread_.joinable())
            thread_.join();
    }
    [[nodiscard]] std::uint16_t port() const { return port_; }
    [[nodiscard]] const std::vector<std::string>& commands() const { return commands_; }
    [[nodiscard]] const std::string& data() const { return data_; }

  private:
    void serve() {
        const UniqueFd c(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c.valid())
            return;
        const auto say = [&](const std::string& text) {
            (void)::send(c.get(), text.data(), text.size(), MSG_NOSIGNAL);
        };
        say("220-smtp.test ESMTP\r\n220 scripted\r\n");
        std::string in;
        bool in_data = false;
        char buf[4096];
        while (true) {
            const auto end = in.find(in_data ? "\r\n.\r\n" : "\r\n");
            if (end == std::string::npos) {
                const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
                if (n <= 0)
                    return;
                in.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            if (in_data) {
                data_ = in.substr(0, end + 2);
                in.erase(0, end + 5);
                in_data = false;
                say(replies_["."]);
                continue;
            }
            const std::string line = in.substr(0, end);
            in.erase(0, end + 2);
            commands_.push_back(line);
            const std::string verb = line.substr(0, line.find_first_of(" :"));
            say(replies_.contains(verb) ? replies_[verb] : "500 unknown\r\n");
            in_data = verb == "DATA" && replies_[verb].starts_with("354");
            if (verb == "QUIT")
                return;
        }
    }

    std::map<std::string, std::string> replies_;
    UniqueFd listener_;
    std::uint16_t port_ = 0;
    std::thread thread_;
    std::vector<std::string> commands_;
    std::string data_;
};

std::map<std::string, std::string> accepting() {
    return {{"EHLO", "502 no EHLO here\r\n"}, {"HELO", "250 hello\r\n"},
            {"MAIL", "250 ok\r\n"},           {"RCPT", "250 ok\r\n"},
            {"DATA", "354 go on\r\n"},        {".", "250-queued\r\n250 as 1\r\n"},
            {"QUIT", "221 bye\r\n"}};
}

TEST(AlertMail, SpeaksSmtpFallsBackToHeloAndDotStuffs) {
    std::string sent;
    {
        ScriptedSmtp server(accepting());
        const auto r = send_mail({.addresses = {"127.0.0.1"}, .port = server.port()},
                                 "root@localhost", "Subject: x\r\n\r\n.hidden\r\nend", "mx1");
        EXPECT_TRUE(r) << r.error().message();
        sent = server.data();
        EXPECT_EQ(server.commands(),
                  (std::vector<std::string>{"EHLO mx1", "HELO mx1", "MAIL FROM:<>",
                                            "RCPT TO:<root@localhost>", "DATA", "QUIT"}));
    }
    EXPECT_EQ(sent, "Subject: x\r\n\r\n..hidden\r\nend\r\n");
}

TEST(AlertMail, ARefusalNamesTheStepAndTheReply) {
    auto replies = accepting();
    replies["RCPT"] = "550 5.1.1 no such user\r\n";
    ScriptedSmtp server(replies);
    const auto r = send_mail({.addresses = {"127.0.0.1"}, .port = server.port()},
                             "nobody@localhost", "Subject: x\r\n\r\nbody", "mx1");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(), "SMTP to 127.0.0.1 port " + std::to_string(server.port()) +
                                       ": RCPT TO: refused: 550 5.1.1 no such user");
}

TEST(AlertMail, NoListenerOnEitherAddressIsAnError) {
    // A port nobody listens on: bound, never listening.
    const UniqueFd held(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(held.valid()) << errno_text(errno);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ASSERT_EQ(::bind(held.get(), reinterpret_cast<sockaddr*>(&a), len), 0);
    ASSERT_EQ(::getsockname(held.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    const auto r = send_mail({.addresses = {"127.0.0.1", "::1"}, .port = ntohs(a.sin_port)},
                             "root@localhost", "x", "mx1");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("SMTP to "), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace smtpfence
