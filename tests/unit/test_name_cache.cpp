// NameCache on a fake clock: the TTL floor and ceiling, the grace of addresses that
// left the answer, the last good set kept on failure, the retry backoff, and which
// names are due.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "policy/name_cache.h"
#include "tests/support/ip_address.h"

namespace smtpfence {
namespace {

using std::chrono::seconds;
using TimePoint = NameCache::TimePoint;
using Addresses = std::set<IpAddress>;

using testing::ip;
using testing::ips;

DnsAnswer ok(Addresses addresses, std::uint32_t ttl) {
    return DnsAnswer{DnsStatus::Ok, "", std::move(addresses), ttl};
}

DnsAnswer failed(DnsStatus status, std::string message) {
    return DnsAnswer{status, std::move(message), {}, 0};
}

class NameCacheTest : public ::testing::Test {
  protected:
    // ttl_min 30, ttl_max 3600, grace 900.
    NameCache cache{NameCacheConfig{}};
    TimePoint t0 = TimePoint{} + seconds{1000};

    TimePoint at(int s) const { return t0 + seconds{s}; }
    // A query of name started and answered at time s.
    void answer(const std::string& name, const DnsAnswer& a, int s) {
        cache.started(name, at(s));
        cache.on_answer(name, a, at(s));
    }
    std::vector<std::string> due(int s) const { return cache.due(at(s)); }
    using Names = std::vector<std::string>;
};

TEST_F(NameCacheTest, NewNamesAreDueAtOnceAndNotQueriedTwice) {
    cache.set_names({"b.example", "a.example"});
    EXPECT_EQ(due(0), (Names{"a.example", "b.example"}));
    ASSERT_TRUE(cache.next_deadline());
    EXPECT_LE(*cache.next_deadline(), at(0));
    cache.started("a.example", at(0));
    EXPECT_EQ(due(0), (Names{"b.example"}));
    // Still in flight a long time later: never due twice.
    EXPECT_EQ(due(100000), (Names{"b.example"}));
    cache.started("b.example", at(0));
    EXPECT_TRUE(due(100000).empty());
    EXPECT_FALSE(cache.next_deadline()) << "names in flight wait for their answer";
    EXPECT_TRUE(cache.status("a.example", at(0))->querying);
}

TEST_F(NameCacheTest, AnswerKeptForItsTtl) {
    cache.set_names({"relay.example"});
    answer("relay.example", ok(ips({"192.0.2.1", "192.0.2.2", "2001:db8::1"}), 300), 0);
    EXPECT_EQ(cache.addresses("relay.example", at(0)),
              ips({"192.0.2.1", "192.0.2.2", "2001:db8::1"}));
    EXPECT_TRUE(due(299).empty());
    EXPECT_EQ(due(300), (Names{"relay.example"}));
    EXPECT_EQ(cache.next_deadline(), at(300));
    auto st = cache.status("relay.example", at(100));
    ASSERT_TRUE(st);
    EXPECT_TRUE(st->resolved);
    EXPECT_EQ(st->refresh_in, seconds{200});
    EXPECT_EQ(st->ttl, 300u);
    EXPECT_EQ(st->addresses.size(), 3u);
    EXPECT_FALSE(st->error);
}

TEST_F(NameCacheTest, TtlBelowTheFloorIsRaised) {
    cache.set_names({"short.example"});
    answer("short.example", ok(ips({"192.0.2.1"}), 0), 0);
    EXPECT_TRUE(due(29).empty());
    EXPECT_EQ(due(30), (Names{"short.example"}));
    answer("short.example", ok(ips({"192.0.2.1"}), 5), 30);
    EXPECT_EQ(cache.next_deadline(), at(60));
    EXPECT_EQ(cache.status("short.example", at(30))->ttl, 5u) << "the TTL as received";
}

TEST_F(NameCacheTest, TtlAboveTheCeilingIsLowered) {
    cache.set_names({"long.example"});
    answer("long.example", ok(ips({"192.0.2.1"}), 86400), 0);
    EXPECT_TRUE(due(3599).empty());
    EXPECT_EQ(due(3600), (Names{"long.example"}));
    EXPECT_EQ(cache.next_deadline(), at(3600));
}

TEST_F(NameCacheTest, AnAddressThatLeftStaysAllowedForTheGrace) {
    cache.set_names({"relay.example"});
    answer("relay.example", ok(ips({"192.0.2.1", "192.0.2.2"}), 60), 0);
    answer("relay.example", ok(ips({"192.0.2.2", "192.0.2.3"}), 60), 60);
    EXPECT_EQ(cache.addresses("relay.example", at(60)),
              ips({"192.0.2.1", "192.0.2.2", "192.0.2.3"}));
    auto st = cache.status("relay.example", at(100));
    ASSERT_EQ(st->addresses.size(), 3u);
    EXPECT_EQ(st->addresses[0].address, ip("192.0.2.1"));
    EXPECT_EQ(st->addresses[0].grace_left, seconds{860});
    EXPECT_FALSE(st->addresses[1].grace_left);
    EXPECT_FALSE(st->addresses[2].grace_left);
    // Refreshes do not extend the grace of an address that stays away.
    answer("relay.example", ok(ips({"192.0.2.2", "192.0.2.3"}), 60), 120);
    EXPECT_EQ(cache.addresses("relay.example", at(959)),
              ips({"192.0.2.1", "192.0.2.2", "192.0.2.3"}));
    EXPECT_EQ(cache.addresses("relay.example", at(960)), ips({"192.0.2.2", "192.0.2.3"}));
}

TEST_F(NameCacheTest, GraceEndIsADeadlineAndChangesTheVersion) {
    cache.set_names({"relay.example"});
    answer("relay.example", ok(ips({"192.0.2.1"}), 3600), 0);
    answer("relay.example", ok(ips({"192.0.2.2"}), 3600), 100);
    // The refresh is at 3700, the grace of 192.0.2.1 ends at 1000: that comes first.
    EXPECT_EQ(cache.next_deadline(), at(1000));
    const auto before = cache.version();
    cache.expire(at(999));
    EXPECT_EQ(cache.version(), before);
    cache.expire(at(1000));
    EXPECT_NE(cache.version(), before);
    EXPECT_EQ(cache.addresses("relay.example", at(1000)), ips({"192.0.2.2"}));
    EXPECT_EQ(cache.next_deadline(), at(3700));
}

TEST_F(NameCacheTest, AnAddressReturningWithinTheGraceIsCurrentAgain) {
    cache.set_names({"relay.example"});
    answer("relay.example", ok(ips({"192.0.2.1", "192.0.2.2"}), 60), 0);
    answer("relay.example", ok(ips({"192.0.2.2"}), 60), 60);
    const auto before = cache.version();
    answer("relay.example", ok(ips({"192.0.2.1", "192.0.2.2"}), 60), 120);
    EXPECT_EQ(cache.version(), before) << "the allowed set did not change";
    auto st = cache.status("relay.example", at(120));
    ASSERT_EQ(st->addresses.size(), 2u);
    EXPECT_FALSE(st->addresses[0].grace_left);
    // The old grace end (960) is gone: the address stays while it is in the answer.
    EXPECT_EQ(cache.next_deadline(), at(180));
    EXPECT_EQ(cache.addresses("relay.example", at(2000)), ips({"192.0.2.1", "192.0.2.2"}));
}

TEST_F(NameCacheTest, VersionMovesOnlyWhenTheAllowedAddressesChange) {
    cache.set_names({"relay.example"});
    auto v = cache.version();
    answer("relay.example", ok(ips({"192.0.2.1"}), 60), 0);
    EXPECT_NE(cache.version(), v);
    v = cache.version();
    answer("relay.example", ok(ips({"192.0.2.1"}), 60), 60);
    EXPECT_EQ(cache.version(), v) << "same answer";
    answer("relay.example", failed(DnsStatus::ServFail, "Server failed"), 120);
    EXPECT_EQ(cache.version(), v) << "a failure keeps the set";
    answer("relay.example", ok(ips({"192.0.2.9"}), 60), 150);
    EXPECT_NE(cache.version(), v) << "a new address";
}

// NXDOMAIN, SERVFAIL and timeouts alike: the last good set stays, expired or not.
TEST_F(NameCacheTest, FailuresKeepTheLastGoodAddresses) {
    for (auto status : {DnsStatus::NotFound, DnsStatus::ServFail, DnsStatus::Timeout}) {
        SCOPED_TRACE(std::string(dns_status_name(status)));
        NameCache c{NameCacheConfig{}};
        c.set_names({"relay.example"});
        c.started("relay.example", at(0));
        c.on_answer("relay.example", ok(ips({"192.0.2.1", "2001:db8::1"}), 60), at(0));
        c.started("relay.example", at(60));
        c.on_answer("relay.example", failed(status, "why"), at(60));
        EXPECT_EQ(c.addresses("relay.example", at(5000)), ips({"192.0.2.1", "2001:db8::1"}));
        auto st = c.status("relay.example", at(70));
        ASSERT_TRUE(st->error);
        EXPECT_EQ(st->error->text, std::string(dns_status_name(status)) + ": why");
        EXPECT_EQ(st->error->since, seconds{10});
        EXPECT_TRUE(st->resolved);
    }
}

TEST_F(NameCacheTest, FailureBackoffDoublesUpToTheCeilingAndResetsOnSuccess) {
    cache = NameCache{NameCacheConfig{seconds{30}, seconds{200}, seconds{900}}};
    cache.set_names({"relay.example"});
    int t = 0;
    for (int wait : {30, 60, 120, 200, 200}) {
        answer("relay.example", failed(DnsStatus::Timeout, "Timeout while contacting DNS servers"),
               t);
        EXPECT_EQ(cache.next_deadline(), at(t + wait));
        EXPECT_TRUE(due(t + wait - 1).empty());
        t += wait;
        EXPECT_EQ(due(t), (Names{"relay.example"}));
    }
    // "since" counts from the first failure of the run.
    EXPECT_EQ(cache.status("relay.example", at(t))->error->since, seconds{t});
    EXPECT_FALSE(cache.status("relay.example", at(t))->resolved);
    answer("relay.example", ok(ips({"192.0.2.1"}), 100), t);
    EXPECT_FALSE(cache.status("relay.example", at(t))->error);
    answer("relay.example", failed(DnsStatus::ServFail, ""), t + 100);
    EXPECT_EQ(cache.next_deadline(), at(t + 130)) << "the backoff starts again";
    auto st = cache.status("relay.example", at(t + 100));
    EXPECT_EQ(st->error->text, "SERVFAIL");
    EXPECT_EQ(st->error->since, seconds{0});
}

TEST_F(NameCacheTest, AnEmptyGoodAnswerIsAFailure) {
    cache.set_names({"relay.example"});
    answer("relay.example", ok(ips({"192.0.2.1"}), 60), 0);
    answer("relay.example", ok({}, 60), 60);
    EXPECT_EQ(cache.addresses("relay.example", at(60)), ips({"192.0.2.1"}));
    EXPECT_EQ(cache.status("relay.example", at(60))->error->text, "no addresses");
}

TEST_F(NameCacheTest, NeverResolvedNameShowsNoAddresses) {
    cache.set_names({"relay.example"});
    auto st = cache.status("relay.example", at(0));
    ASSERT_TRUE(st);
    EXPECT_FALSE(st->resolved);
    EXPECT_TRUE(st->addresses.empty());
    EXPECT_FALSE(st->error);
    EXPECT_EQ(st->refresh_in, seconds{0});
    answer("relay.example", failed(DnsStatus::NotFound, "Domain name not found"), 0);
    EXPECT_TRUE(cache.addresses("relay.example", at(0)).empty());
    EXPECT_EQ(cache.status("relay.example", at(0))->error->text,
              "not found: Domain name not found");
}

TEST_F(NameCacheTest, DroppedNamesAreForgottenAndTheirAnswersIgnored) {
    cache.set_names({"a.example", "b.example"});
    answer("a.example", ok(ips({"192.0.2.1"}), 60), 0);
    cache.started("b.example", at(0));
    auto v = cache.version();
    cache.set_names({"b.example", "c.example"});
    EXPECT_NE(cache.version(), v) << "a.example's addresses are no longer allowed";
    EXPECT_EQ(cache.names(), (Names{"b.example", "c.example"}));
    EXPECT_FALSE(cache.status("a.example", at(0)));
    EXPECT_TRUE(cache.addresses("a.example", at(0)).empty());
    // b.example kept its state (still in flight); c.example is new and due.
    EXPECT_EQ(due(0), (Names{"c.example"}));
    cache.on_answer("a.example", ok(ips({"192.0.2.7"}), 60), at(1));
    EXPECT_FALSE(cache.status("a.example", at(1)));
    v = cache.version();
    cache.set_names({"b.example", "c.example"});
    EXPECT_EQ(cache.version(), v) << "same names";
}

}  // namespace
}  // namespace smtpfence
