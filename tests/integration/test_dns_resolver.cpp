// DnsResolver against a real DNS server: Debian's dnsmasq on the loopback of a
// namespace the test creates, its records written by the test (and changed while it
// runs). The resolver is driven through poll() as the daemon's loop drives it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ctl/dns_resolver.h"
#include "policy/name_cache.h"
#include "tests/integration/harness.h"
#include "tests/support/dnsmasq.h"
#include "tests/support/ip_address.h"

namespace smtpfence::itest {
namespace {

using std::chrono::steady_clock;
using Addresses = std::set<IpAddress>;

using testing::ips;

std::string describe(const DnsAnswer& a) {
    std::string out = std::string(dns_status_name(a.status)) + " \"" + a.message + "\" ttl " +
                      std::to_string(a.ttl) + ":";
    for (const auto& address : a.addresses)
        out += " " + address.text();
    return out;
}

// One round of the daemon's loop: poll the resolver's sockets until I/O or its
// timeout (at most max_wait), then let it process what is ready.
void poll_once(DnsResolver& resolver, Millis max_wait) {
    std::vector<pollfd> fds = resolver.poll_fds();
    Millis wait = std::min(resolver.timeout().value_or(max_wait), max_wait);
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    ASSERT_GE(n, 0) << errno_text(errno);
    resolver.process(fds);
}

// The server the resolver asks (127.0.0.1), besides the hosts file the tests rewrite.
const char* const kRecords[] = {
    // Several A and AAAA records for one name, TTL 300.
    "--host-record=multi.test,192.0.2.1,2001:db8::1,300",
    "--host-record=multi.test,192.0.2.2,2001:db8::2,300",
    "--host-record=multi.test,192.0.2.3,300",
    // CNAMEs to it: one with a shorter TTL than the records, one with a longer.
    "--cname=short-alias.test,multi.test,120",
    "--cname=long-alias.test,multi.test,900",
    // A name with a TXT record only: it exists, without A or AAAA.
    "--txt-record=text-only.test,hello",
    // Authoritative for test.: an unknown name there is NXDOMAIN.
    "--local=/test/",
    // Forwarded to the upstream, which refuses it: REFUSED.
    "--server=/refused.test/127.0.0.2",
    // Forwarded to a closed port: dnsmasq never answers at all.
    "--server=/silent.test/127.0.0.1#1",
    // Everything else goes to the upstream and is DNSSEC-validated against the real
    // root's trust anchor, which the upstream's unsigned answers cannot satisfy: SERVFAIL.
    "--server=127.0.0.2",
    "--dnssec",
    "--trust-anchor=.,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
};

// The upstream (127.0.0.2): an unsigned answer for the name that fails validation;
// anything else is REFUSED (no servers of its own).
const char* const kUpstreamRecords[] = {
    "--host-record=relay.bogus.example,192.0.2.5,2001:db8::5",
};

class DnsResolverTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (auto why = skip_reason())
            GTEST_SKIP() << *why;
        auto ns = Netns::create();
        ASSERT_TRUE(ns) << ns.error().message();
        ns_ = std::make_unique<Netns>(std::move(*ns));
        const RunResult up = run(*ns_, {"ip", "link", "set", "lo", "up"});
        ASSERT_EQ(up.exit_code, 0) << up.describe();
        auto dir = TempDir::create({.prefix = "sft-dns"});
        ASSERT_TRUE(dir) << dir.error().message();
        dir_ = std::make_unique<TempDir>(std::move(*dir));
        write_hosts("192.0.2.10 moving.test\n");
        resolv_conf_ = dir_->write("resolv.conf", "search test\nnameserver 127.0.0.1\n");
        std::vector<std::string> upstream(std::begin(kUpstreamRecords), std::end(kUpstreamRecords));
        ASSERT_NO_FATAL_FAILURE(start_dnsmasq(upstream_, "127.0.0.2", "upstream", upstream));
        // Records from the hosts file get TTL 1 s; SIGHUP re-reads the file.
        std::vector<std::string> records = {"--addn-hosts=" + hosts_, "--local-ttl=1"};
        records.insert(records.end(), std::begin(kRecords), std::end(kRecords));
        ASSERT_NO_FATAL_FAILURE(start_dnsmasq(dnsmasq_, "127.0.0.1", "dnsmasq", records));
        // From here on the test thread lives in the namespace: c-ares opens its sockets
        // in the namespace of the thread that sends the query.
        auto entry = testing::NetnsEntry::enter(*ns_);
        ASSERT_TRUE(entry) << entry.error().message();
        entry_.emplace(std::move(*entry));
    }

    void write_hosts(const std::string& content) { hosts_ = dir_->write("hosts", content); }

    void start_dnsmasq(std::optional<testing::Dnsmasq>& server, const std::string& address,
                       const std::string& log_name, const std::vector<std::string>& records) {
        auto started =
            testing::Dnsmasq::start(*ns_, address, dir_->path() + "/" + log_name + ".log", records);
        ASSERT_TRUE(started) << started.error().message();
        server.emplace(std::move(*started));
    }

    DnsResolver make_resolver(const std::string& resolv_conf) {
        auto r = DnsResolver::create({resolv_conf, Millis{300}, 2});
        EXPECT_TRUE(r) << r.error().message();
        if (!r)
            std::abort();
        return std::move(*r);
    }

    // One lookup, driven to its answer through poll().
    DnsAnswer lookup(const std::string& name, const std::string& resolv_conf = {}) {
        DnsResolver resolver = make_resolver(resolv_conf.empty() ? resolv_conf_ : resolv_conf);
        std::optional<DnsAnswer> answer;
        resolver.resolve(name, [&](DnsAnswer a) { answer = std::move(a); });
        const auto deadline = steady_clock::now() + 10s;
        while (!answer && steady_clock::now() < deadline)
            poll_once(resolver, 1000ms);
        EXPECT_TRUE(answer) << name << ": no answer in 10 s";
        EXPECT_EQ(resolver.pending(), 0u);
        return answer.value_or(DnsAnswer{});
    }

    std::string log() const { return read_file(dir_->path() + "/dnsmasq.log"); }

    std::unique_ptr<Netns> ns_;
    std::unique_ptr<TempDir> dir_;
    std::string hosts_;
    std::string resolv_conf_;
    std::optional<testing::Dnsmasq> upstream_;
    std::optional<testing::Dnsmasq> dnsmasq_;
    std::optional<testing::NetnsEntry> entry_;
};

TEST_F(DnsResolverTest, SeveralAAndAaaaRecordsWithTheirTtl) {
    const DnsAnswer a = lookup("multi.test");
    EXPECT_EQ(a.status, DnsStatus::Ok) << describe(a);
    EXPECT_EQ(a.addresses,
              ips({"192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2"}))
        << describe(a);
    EXPECT_EQ(a.ttl, 300u) << describe(a);
}

TEST_F(DnsResolverTest, ANameBehindACnameTakesTheLeastTtl) {
    const DnsAnswer shorter = lookup("short-alias.test");
    EXPECT_EQ(shorter.status, DnsStatus::Ok) << describe(shorter);
    EXPECT_EQ(shorter.addresses.size(), 5u) << describe(shorter);
    EXPECT_EQ(shorter.ttl, 120u) << "the CNAME's TTL: " << describe(shorter);
    const DnsAnswer longer = lookup("long-alias.test");
    EXPECT_EQ(longer.addresses, shorter.addresses) << describe(longer);
    EXPECT_EQ(longer.ttl, 300u) << "the address records' TTL: " << describe(longer);
}

TEST_F(DnsResolverTest, AnUnknownNameIsNotFound) {
    const DnsAnswer a = lookup("nowhere.test");
    EXPECT_EQ(a.status, DnsStatus::NotFound) << describe(a);
    EXPECT_TRUE(a.addresses.empty());
    EXPECT_FALSE(a.message.empty());
}

TEST_F(DnsResolverTest, ANameWithoutAddressRecordsIsNotFound) {
    const DnsAnswer a = lookup("text-only.test");
    EXPECT_EQ(a.status, DnsStatus::NotFound) << describe(a);
    EXPECT_TRUE(a.addresses.empty());
}

TEST_F(DnsResolverTest, SearchDomainsAreNotApplied) {
    // resolv.conf says "search test": "multi" would be multi.test through the system's
    // resolver, never for an exception.
    const DnsAnswer a = lookup("multi");
    EXPECT_NE(a.status, DnsStatus::Ok) << describe(a);
}

// dnsmasq answers SERVFAIL (it cannot validate the upstream's unsigned answer); c-ares
// 1.18 tries the next server, finds none and says "Could not contact DNS servers".
TEST_F(DnsResolverTest, AnAnswerThatFailsValidationIsServFail) {
    const DnsAnswer a = lookup("relay.bogus.example");
    EXPECT_EQ(a.status, DnsStatus::ServFail) << describe(a) << "\n" << log();
    EXPECT_TRUE(a.addresses.empty());
    EXPECT_FALSE(a.message.empty());
}

TEST_F(DnsResolverTest, ARefusingUpstreamIsAFailure) {
    // c-ares 1.18 (Debian 12) reports a REFUSED answer as it reports SERVFAIL, once no
    // server is left to try; later versions keep the answer's code.
    const DnsAnswer a = lookup("relay.refused.test");
    EXPECT_TRUE(a.status == DnsStatus::ServFail || a.status == DnsStatus::Refused)
        << describe(a) << "\n"
        << log();
    EXPECT_TRUE(a.addresses.empty());
}

TEST_F(DnsResolverTest, AFailingServerIsFollowedByTheNext) {
    // The upstream refuses multi.test; the next server in resolv.conf answers it.
    const std::string conf =
        dir_->write("two.conf", "nameserver 127.0.0.2\nnameserver 127.0.0.1\n");
    const DnsAnswer a = lookup("multi.test", conf);
    EXPECT_EQ(a.status, DnsStatus::Ok) << describe(a);
    EXPECT_EQ(a.addresses.size(), 5u) << describe(a);
}

TEST_F(DnsResolverTest, AnUpstreamThatNeverAnswersIsATimeout) {
    const auto start = steady_clock::now();
    const DnsAnswer a = lookup("relay.silent.test");
    EXPECT_EQ(a.status, DnsStatus::Timeout) << describe(a) << "\n" << log();
    // Two tries, of 300 ms then 600 ms: about a second.
    EXPECT_LT(steady_clock::now() - start, 5s);
}

TEST_F(DnsResolverTest, ManyNamesAtOnceEachGetTheirAnswer) {
    DnsResolver resolver = make_resolver(resolv_conf_);
    std::map<std::string, DnsAnswer> answers;
    const std::vector<std::string> names = {"multi.test", "short-alias.test", "nowhere.test",
                                            "moving.test", "text-only.test"};
    for (const auto& name : names)
        resolver.resolve(name, [&answers, name](DnsAnswer a) { answers[name] = std::move(a); });
    EXPECT_EQ(resolver.pending(), names.size());
    const auto deadline = steady_clock::now() + 10s;
    while (answers.size() < names.size() && steady_clock::now() < deadline)
        poll_once(resolver, 1000ms);
    ASSERT_EQ(answers.size(), names.size());
    EXPECT_EQ(resolver.pending(), 0u);
    EXPECT_FALSE(resolver.timeout()) << "nothing pending, nothing to wake for";
    EXPECT_EQ(answers["multi.test"].addresses.size(), 5u);
    EXPECT_EQ(answers["moving.test"].addresses, ips({"192.0.2.10"}));
    EXPECT_EQ(answers["nowhere.test"].status, DnsStatus::NotFound);
}

// The daemon's loop in small: the cache says what is due, the resolver asks, the answer
// goes back into the cache; the record moves while it runs.
TEST_F(DnsResolverTest, AChangedRecordIsSeenWithinItsTtl) {
    DnsResolver resolver = make_resolver(resolv_conf_);
    NameCache cache(NameCacheConfig{std::chrono::seconds{1}, std::chrono::seconds{60},
                                    std::chrono::seconds{2}});
    cache.set_names({"moving.test"});
    auto step = [&] {
        const auto now = steady_clock::now();
        cache.expire(now);
        for (const auto& name : cache.due(now)) {
            cache.started(name, now);
            resolver.resolve(name, [&cache, name](const DnsAnswer& a) {
                cache.on_answer(name, a, steady_clock::now());
            });
        }
        Millis wait = 1000ms;
        if (auto deadline = cache.next_deadline())
            wait = std::clamp(std::chrono::ceil<Millis>(*deadline - now), 0ms, wait);
        poll_once(resolver, wait);
    };
    auto run_until = [&](const Addresses& want, std::chrono::seconds limit) {
        const auto deadline = steady_clock::now() + limit;
        while (steady_clock::now() < deadline) {
            if (cache.addresses("moving.test", steady_clock::now()) == want)
                return true;
            step();
        }
        return false;
    };
    ASSERT_TRUE(run_until(ips({"192.0.2.10"}), 5s));
    EXPECT_EQ(cache.status("moving.test", steady_clock::now())->ttl, 1u);

    write_hosts("192.0.2.11 moving.test\n");
    dnsmasq_->reload();
    const auto moved = steady_clock::now();
    // TTL 1 s: the new address within TTL + a second, the old one still in its grace.
    ASSERT_TRUE(run_until(ips({"192.0.2.10", "192.0.2.11"}), 2s)) << log();
    EXPECT_LE(steady_clock::now() - moved, 2s);
    // The grace (2 s) ends: only the new address is left.
    ASSERT_TRUE(run_until(ips({"192.0.2.11"}), 4s));

    // The name stops resolving: the last good address stays, the error is shown.
    write_hosts("");
    dnsmasq_->reload();
    const bool failing = wait_until(
        [&] {
            step();
            auto st = cache.status("moving.test", steady_clock::now());
            return st && st->error.has_value();
        },
        4000ms, 0ms);
    ASSERT_TRUE(failing);
    EXPECT_EQ(cache.addresses("moving.test", steady_clock::now()), ips({"192.0.2.11"}));
    EXPECT_NE(cache.status("moving.test", steady_clock::now())->error->text.find("not found"),
              std::string::npos);
}

}  // namespace
}  // namespace smtpfence::itest
