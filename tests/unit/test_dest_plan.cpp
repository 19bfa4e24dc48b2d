// Relay exceptions planned as set elements: who maps to which set and id, names to
// their addresses, and overlapping wishes of one id made disjoint, with the exceptions
// each range serves.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "policy/dest_plan.h"

namespace smtpfence {
namespace {

using nft::DestRange;
using nft::DestSet;
using Covers = std::vector<std::size_t>;

const char* const kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "alice:x:1001:2000:Alice:/home/alice:/bin/bash\n"   // primary group webmail
    "bob:x:1002:1002:Bob:/home/bob:/bin/bash\n"         // webmail as a supplementary group
    "carol:x:1003:1003:Carol:/home/carol:/bin/bash\n";  // not a member
const char* const kGroup =
    "root:x:0:\n"
    "webmail:x:2000:bob\n"
    "bob:x:1002:\n"
    "carol:x:1003:\n";

AccountDb db() {
    return AccountDb::parse(kPasswd, kGroup);
}

Network net(std::string_view text) {
    auto n = parse_network(text);
    EXPECT_TRUE(n) << text << ": " << (n ? "" : n.error().message());
    return n.value_or(Network{});
}

DestException ex(SubjectKind kind, std::string name, std::string_view dest) {
    auto d = parse_destination(dest);
    EXPECT_TRUE(d) << dest << ": " << (d ? "" : d.error().message());
    return DestException{{kind, std::move(name)}, d.value_or(Destination{}), "test.conf:1"};
}

DestException user(std::string name, std::string_view dest) {
    return ex(SubjectKind::User, std::move(name), dest);
}

// Names resolve through a fixed table; every query is counted.
struct FakeDns {
    std::map<std::string, std::vector<Network>> records;
    std::map<std::string, int> queries;

    AddressesOf fn() {
        return [this](const std::string& name) {
            ++queries[name];
            const auto it = records.find(name);
            return it == records.end() ? std::vector<Network>{} : it->second;
        };
    }
};

DestPlan plan(const std::vector<DestException>& exceptions, FakeDns& dns) {
    return plan_destinations(exceptions, db(), dns.fn());
}

DestPlan plan(const std::vector<DestException>& exceptions) {
    FakeDns dns;
    return plan(exceptions, dns);
}

DestRange range(DestSet set, std::uint32_t id, std::string_view lo, std::string_view hi,
                std::uint16_t port_lo, std::uint16_t port_hi) {
    return DestRange{set, id, net(lo).addr, net(hi).addr, port_lo, port_hi};
}

// The plan's ranges with their covers, for one comparison.
std::map<DestRange, Covers> served(const DestPlan& p) {
    EXPECT_EQ(p.ranges.size(), p.covers.size());
    std::map<DestRange, Covers> out;
    for (const DestRange& r : p.ranges) {
        const auto it = p.covers.find(r);
        out[r] = it == p.covers.end() ? Covers{} : it->second;
    }
    return out;
}

TEST(DestPlan, UserToANameWithAPort) {
    FakeDns dns;
    dns.records["smtp.sendgrid.net"] = {net("192.0.2.1"), net("2001:db8::1")};
    const DestPlan p = plan({user("alice", "smtp.sendgrid.net:587")}, dns);
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 587, 587), {0}},
                  {range(DestSet::Uid6, 1001, "2001:db8::1", "2001:db8::1", 587, 587), {0}},
              }));
    EXPECT_TRUE(p.warnings.empty());
}

TEST(DestPlan, NoPortIsEveryPortAndIpv6Networks) {
    const DestPlan p = plan({user("alice", "2001:db8::/32"), user("1005", "198.51.100.0/24")});
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid6, 1001,
                         "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 0, 65535),
                   {0}},
                  // a numeric uid needs no account, as in the allowlist
                  {range(DestSet::Uid4, 1005, "198.51.100.0", "198.51.100.255", 0, 65535), {1}},
              }));
}

TEST(DestPlan, OverlappingNetworksOfOneUserAreMadeDisjoint) {
    const DestPlan p = plan({user("alice", "10.0.0.0/8:25"), user("alice", "10.1.0.0/16:25")});
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid4, 1001, "10.0.0.0", "10.0.255.255", 25, 25), {0}},
                  {range(DestSet::Uid4, 1001, "10.1.0.0", "10.1.255.255", 25, 25), {0, 1}},
                  {range(DestSet::Uid4, 1001, "10.2.0.0", "10.255.255.255", 25, 25), {0}},
              }));
}

TEST(DestPlan, AnAddressInsideANetworkWithAnotherPort) {
    const DestPlan p =
        plan({user("alice", "198.51.100.0/24:25"), user("alice", "198.51.100.7:587")});
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid4, 1001, "198.51.100.0", "198.51.100.6", 25, 25), {0}},
                  {range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 25, 25), {0}},
                  {range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 587, 587), {1}},
                  {range(DestSet::Uid4, 1001, "198.51.100.8", "198.51.100.255", 25, 25), {0}},
              }));
}

TEST(DestPlan, EveryPortAndOnePortOnTheSameAddress) {
    const DestPlan p = plan({user("alice", "192.0.2.1"), user("alice", "192.0.2.1:587")});
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 0, 586), {0}},
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 587, 587), {0, 1}},
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 588, 65535), {0}},
              }));
}

TEST(DestPlan, TheSameAddressFromTwoNames) {
    FakeDns dns;
    dns.records["a.example"] = {net("192.0.2.1")};
    dns.records["b.example"] = {net("192.0.2.1"), net("192.0.2.2")};
    const DestPlan p = plan({user("alice", "a.example:587"), user("alice", "b.example:587"),
                             user("alice", "a.example:25")},
                            dns);
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 25, 25), {2}},
                  {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.1", 587, 587), {0, 1}},
                  {range(DestSet::Uid4, 1001, "192.0.2.2", "192.0.2.2", 587, 587), {1}},
              }));
    EXPECT_EQ(dns.queries, (std::map<std::string, int>{{"a.example", 1}, {"b.example", 1}}));
}

TEST(DestPlan, NeighbouringAddressesOfOneExceptionAreOneRange) {
    FakeDns dns;
    dns.records["relay.example"] = {net("192.0.2.2"), net("192.0.2.1"), net("192.0.2.3"),
                                    net("192.0.2.9")};
    const DestPlan p = plan({user("alice", "relay.example:587")}, dns);
    EXPECT_EQ(served(p), (std::map<DestRange, Covers>{
                             {range(DestSet::Uid4, 1001, "192.0.2.1", "192.0.2.3", 587, 587), {0}},
                             {range(DestSet::Uid4, 1001, "192.0.2.9", "192.0.2.9", 587, 587), {0}},
                         }));
}

TEST(DestPlan, AGroupIsItsGidAndItsPrimaryAndSupplementaryMembers) {
    const DestPlan p = plan({ex(SubjectKind::Group, "webmail", "198.51.100.7:587")});
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::Gid4, 2000, "198.51.100.7", "198.51.100.7", 587, 587), {0}},
                  {range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 587, 587), {0}},
                  {range(DestSet::Uid4, 1002, "198.51.100.7", "198.51.100.7", 587, 587), {0}},
              }));
    // By gid, with the same members.
    EXPECT_EQ(plan({ex(SubjectKind::Group, "2000", "198.51.100.7:587")}).ranges, p.ranges);
}

TEST(DestPlan, AUserAndTheirGroupOverlap) {
    const DestPlan p =
        plan({user("alice", "198.51.100.7:25"), ex(SubjectKind::Group, "webmail", "198.51.100.7")});
    const auto s = served(p);
    // In alice's uid the group's every-port wish and her own port 25 are cut apart.
    EXPECT_EQ(s.at(range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 0, 24)), Covers{1});
    EXPECT_EQ(s.at(range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 25, 25)),
              (Covers{0, 1}));
    EXPECT_EQ(s.at(range(DestSet::Uid4, 1001, "198.51.100.7", "198.51.100.7", 26, 65535)),
              Covers{1});
    // The gid set is separate: only the group's own wish.
    EXPECT_EQ(s.at(range(DestSet::Gid4, 2000, "198.51.100.7", "198.51.100.7", 0, 65535)),
              Covers{1});
    EXPECT_EQ(s.size(), 5U);  // and bob's uid
}

TEST(DestPlan, EveryoneIsTheAllSets) {
    FakeDns dns;
    dns.records["smtp.example-relay.net"] = {net("192.0.2.25"), net("2001:db8::25")};
    const DestPlan p = plan({ex(SubjectKind::Everyone, "", "smtp.example-relay.net:587")}, dns);
    EXPECT_EQ(served(p),
              (std::map<DestRange, Covers>{
                  {range(DestSet::All4, 0, "192.0.2.25", "192.0.2.25", 587, 587), {0}},
                  {range(DestSet::All6, 0, "2001:db8::25", "2001:db8::25", 587, 587), {0}},
              }));
}

TEST(DestPlan, UnknownAccountsAreWarningsWithoutRanges) {
    const DestPlan p =
        plan({user("mallory", "192.0.2.1:25"), ex(SubjectKind::Group, "nogroup", "192.0.2.1:25"),
              user("alice", "192.0.2.1:25")});
    EXPECT_EQ(p.ranges.size(), 1U);
    EXPECT_EQ(p.warnings,
              (std::vector<std::string>{
                  "test.conf:1: \"mallory to 192.0.2.1:25\": unknown user \"mallory\" (skipped; "
                  "it will be resolved again when /etc/passwd changes)",
                  "test.conf:1: \"group nogroup to 192.0.2.1:25\": unknown group \"nogroup\" "
                  "(skipped; it will be resolved again when /etc/group changes)",
              }));
}

TEST(DestPlan, ANameWithoutAddressesYetHasNoRanges) {
    FakeDns dns;
    const DestPlan p = plan({user("alice", "unresolved.example:587")}, dns);
    EXPECT_TRUE(p.ranges.empty());
    EXPECT_TRUE(p.warnings.empty());
    EXPECT_EQ(dns.queries["unresolved.example"], 1);
}

TEST(DestPlan, TheLastAddressesOfTheSpace) {
    const DestPlan p = plan({user("alice", "255.255.255.0/24:25"), user("alice", "255.255.255.255"),
                             user("alice", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120")});
    EXPECT_EQ(
        served(p),
        (std::map<DestRange, Covers>{
            {range(DestSet::Uid4, 1001, "255.255.255.0", "255.255.255.254", 25, 25), {0}},
            {range(DestSet::Uid4, 1001, "255.255.255.255", "255.255.255.255", 0, 24), {1}},
            {range(DestSet::Uid4, 1001, "255.255.255.255", "255.255.255.255", 25, 25), {0, 1}},
            {range(DestSet::Uid4, 1001, "255.255.255.255", "255.255.255.255", 26, 65535), {1}},
            {range(DestSet::Uid6, 1001, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00",
                   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0, 65535),
             {2}},
        }));
}

// Every (address, port) of a small space: the plan's ranges of one id never overlap,
// and the one containing a point serves exactly the exceptions whose wish contains it.
TEST(DestPlan, RangesAreDisjointAndServeExactlyTheWishesContainingThem) {
    std::vector<DestException> wishes;
    const char* const dests[] = {"10.0.0.0/28:25", "10.0.0.4/30",    "10.0.0.5:587",
                                 "10.0.0.8/29:25", "10.0.0.6/31:25", "10.0.0.0/29:587",
                                 "10.0.0.15",      "10.0.0.5:25"};
    for (const char* d : dests)
        wishes.push_back(user("alice", d));
    const DestPlan p = plan(wishes);
    for (std::uint8_t last = 0; last < 20; ++last) {
        for (const int port : {0, 24, 25, 26, 586, 587, 588, 65535}) {
            Network point = net("10.0.0.0");
            point.addr[3] = last;
            Covers expected;
            for (std::size_t i = 0; i < wishes.size(); ++i) {
                const Destination& to = wishes[i].to;
                if (point.addr >= to.network->first() && point.addr <= to.network->last() &&
                    (!to.port || *to.port == port)) {
                    expected.push_back(i);
                }
            }
            int containing = 0;
            Covers got;
            for (const DestRange& r : p.ranges) {
                if (point.addr >= r.addr_lo && point.addr <= r.addr_hi && port >= r.port_lo &&
                    port <= r.port_hi) {
                    ++containing;
                    got = p.covers.at(r);
                }
            }
            EXPECT_EQ(containing, expected.empty() ? 0 : 1) << point.text() << " port " << port;
            EXPECT_EQ(got, expected) << point.text() << " port " << port;
        }
    }
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(DestPlan, TenThousandUsersWithOneAddressEach) {
    std::string passwd;
    std::vector<DestException> wishes;
    for (std::uint32_t i = 0; i < 10000; ++i) {
        const std::string name = "u" + std::to_string(i);
        passwd += name + ":x:" + std::to_string(10000 + i) + ":100::/home/" + name + ":/bin/sh\n";
        Network n = net("10.0.0.0");
        n.addr[2] = static_cast<std::uint8_t>(i / 256);
        n.addr[3] = static_cast<std::uint8_t>(i % 256);
        wishes.push_back(DestException{{SubjectKind::User, name}, {n.text(), n, 587}, ""});
    }
    const AccountDb accounts = AccountDb::parse(passwd, "users:x:100:\n");
    const auto start = std::chrono::steady_clock::now();
    const DestPlan p = plan_destinations(wishes, accounts,
                                         [](const std::string&) { return std::vector<Network>{}; });
    const double took = seconds_since(start);
    EXPECT_EQ(p.ranges.size(), 10000U);
    EXPECT_LT(took, 1.0);
    RecordProperty("seconds", std::to_string(took));
}

TEST(DestPlan, AGroupOfAThousandMembersToFiveAddresses) {
    std::string passwd;
    std::string members;
    for (std::uint32_t i = 0; i < 1000; ++i) {
        const std::string name = "m" + std::to_string(i);
        // half by primary group, half as supplementary members
        passwd += name + ":x:" + std::to_string(20000 + i) + ":" + (i % 2 == 0 ? "3000" : "100") +
                  "::/home/" + name + ":/bin/sh\n";
        if (i % 2 == 1)
            members += (members.empty() ? "" : ",") + name;
    }
    const AccountDb accounts =
        AccountDb::parse(passwd, "users:x:100:\nrelayers:x:3000:" + members + "\n");
    std::vector<Network> addresses;
    for (std::uint8_t i = 1; i <= 5; ++i)
        addresses.push_back(ipv4_address({192, 0, 2, static_cast<std::uint8_t>(i * 2)}));
    const auto start = std::chrono::steady_clock::now();
    const DestPlan p = plan_destinations(
        {DestException{{SubjectKind::Group, "relayers"}, {"relay.example", std::nullopt, 587}, ""}},
        accounts, [&](const std::string&) { return addresses; });
    const double took = seconds_since(start);
    EXPECT_EQ(p.ranges.size(), (1000U + 1U) * 5U);
    EXPECT_LT(took, 1.0);
}

}  // namespace
}  // namespace smtpfence
