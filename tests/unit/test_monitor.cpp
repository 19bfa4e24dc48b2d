// The nftables event filter: which of the kernel's event messages are someone else's
// change to our table, and how the daemon describes them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <cstddef>
#include <string>
#include <vector>

#include "nft/monitor.h"

namespace smtpfence::nft {
namespace {

constexpr std::uint32_t kOurs = 1000;
constexpr std::uint32_t kTheirs = 4242;

// Event datagrams built the way the kernel builds them: nlmsghdr, nfgenmsg, attributes.
class Datagram {
  public:
    // msg: NFT_MSG_*; name_attr/name: the object's name attribute, if any.
    Datagram& object(std::uint16_t msg, std::uint32_t portid, const char* table,
                     std::uint8_t family = NFPROTO_INET, std::uint16_t name_attr = 0,
                     const char* name = nullptr) {
        nlmsghdr* nlh = start(msg, portid, family);
        mnl_attr_put_strz(nlh, 1, table);
        if (name != nullptr)
            mnl_attr_put_strz(nlh, name_attr, name);
        return end(nlh);
    }
    Datagram& newgen(std::uint32_t portid, std::uint32_t pid, const char* prog) {
        nlmsghdr* nlh = start(NFT_MSG_NEWGEN, portid, NFPROTO_UNSPEC);
        mnl_attr_put_u32(nlh, NFTA_GEN_ID, htonl(7));
        mnl_attr_put_u32(nlh, NFTA_GEN_PROC_PID, htonl(pid));
        mnl_attr_put_strz(nlh, NFTA_GEN_PROC_NAME, prog);
        return end(nlh);
    }
    [[nodiscard]] std::span<const std::byte> bytes() const {
        return std::as_bytes(std::span(buf_.data(), used_));
    }

  private:
    nlmsghdr* start(std::uint16_t msg, std::uint32_t portid, std::uint8_t family) {
        nlmsghdr* nlh = mnl_nlmsg_put_header(buf_.data() + used_);
        nlh->nlmsg_type = static_cast<std::uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | msg);
        nlh->nlmsg_pid = portid;
        auto* gen = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
        gen->nfgen_family = family;
        return nlh;
    }
    Datagram& end(nlmsghdr* nlh) {
        used_ += NLMSG_ALIGN(nlh->nlmsg_len);
        return *this;
    }
    std::vector<char> buf_ = std::vector<char>(8192);
    std::size_t used_ = 0;
};

TEST(EventFilter, AForeignDeleteOfOurTableIsReportedWithItsRequester) {
    EventFilter f("smtpfence", kOurs);
    Datagram d;
    d.object(NFT_MSG_DELRULE, kTheirs, "smtpfence", NFPROTO_INET, NFTA_RULE_CHAIN, "judge")
        .object(NFT_MSG_DELCHAIN, kTheirs, "smtpfence", NFPROTO_INET, NFTA_CHAIN_NAME, "judge")
        .object(NFT_MSG_DELTABLE, kTheirs, "smtpfence")
        .newgen(kTheirs, 31337, "nft");
    f.feed(d.bytes());
    auto change = f.take();
    ASSERT_TRUE(change);
    EXPECT_EQ(change->what, (std::vector<std::string>{"delete rule from chain judge",
                                                      "delete chain judge", "delete table"}));
    EXPECT_EQ(change->who, "pid 31337 (nft)");
    EXPECT_FALSE(change->events_lost);
    EXPECT_FALSE(f.take()) << "reported twice";
}

TEST(EventFilter, OurOwnTransactionsOtherTablesAndFamiliesAreIgnored) {
    EventFilter f("smtpfence", kOurs);
    Datagram d;
    d.object(NFT_MSG_NEWSETELEM, kOurs, "smtpfence", NFPROTO_INET, NFTA_SET_ELEM_LIST_SET,
             "allow_uid")
        .newgen(kOurs, 1, "smtpfenced")
        .object(NFT_MSG_DELTABLE, kTheirs, "filter")
        .object(NFT_MSG_DELTABLE, kTheirs, "smtpfence", NFPROTO_IPV4)
        .object(NFT_MSG_DELTABLE, kTheirs, "smtpfence-probe")
        .newgen(kTheirs, 2, "nft");
    f.feed(d.bytes());
    EXPECT_FALSE(f.take());
}

TEST(EventFilter, AChangeIsReportedOnlyOnceItsTransactionEnded) {
    EventFilter f("smtpfence", kOurs);
    Datagram first;
    first.object(NFT_MSG_NEWSETELEM, kTheirs, "smtpfence", NFPROTO_INET, NFTA_SET_ELEM_LIST_SET,
                 "allow_uid");
    f.feed(first.bytes());
    EXPECT_FALSE(f.take()) << "reported before the transaction's NEWGEN";
    Datagram second;
    second.newgen(kTheirs, 99, "iptables-nft");
    f.feed(second.bytes());
    auto change = f.take();
    ASSERT_TRUE(change);
    EXPECT_EQ(change->what, std::vector<std::string>{"add elements to set allow_uid"});
    EXPECT_EQ(change->who, "pid 99 (iptables-nft)");
}

TEST(EventFilter, RepeatedChangesAreListedOnceAndRequestersAccumulate) {
    EventFilter f("smtpfence", kOurs);
    Datagram d;
    for (int i = 0; i < 3; ++i) {
        d.object(NFT_MSG_DELSETELEM, kTheirs, "smtpfence", NFPROTO_INET, NFTA_SET_ELEM_LIST_SET,
                 "allow_uid");
    }
    d.newgen(kTheirs, 10, "nft").object(NFT_MSG_DELTABLE, kTheirs + 1, "smtpfence");
    d.newgen(kTheirs + 1, 11, "firewalld");
    f.feed(d.bytes());
    auto change = f.take();
    ASSERT_TRUE(change);
    EXPECT_EQ(change->what,
              (std::vector<std::string>{"delete elements from set allow_uid", "delete table"}));
    EXPECT_EQ(change->who, "pid 10 (nft), pid 11 (firewalld)");
}

TEST(EventFilter, LostEventsAreReportedAsSuch) {
    EventFilter f("smtpfence", kOurs);
    f.lost_events();
    auto change = f.take();
    ASSERT_TRUE(change);
    EXPECT_TRUE(change->events_lost);
    EXPECT_TRUE(change->what.empty());
}

TEST(EventFilter, MalformedDatagramsAreSkipped) {
    EventFilter f("smtpfence", kOurs);
    // Truncated headers, a length running past the end, garbage, a message without
    // its nfgenmsg, a table name without its terminating NUL.
    std::vector<std::byte> junk(64, std::byte{0xff});
    f.feed(junk);
    f.feed(std::span<const std::byte>(junk.data(), 3));
    std::vector<char> buf(256);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
    nlh->nlmsg_type = static_cast<std::uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE);
    nlh->nlmsg_pid = kTheirs;
    f.feed(std::as_bytes(std::span(buf.data(), nlh->nlmsg_len)));
    nlh->nlmsg_len = 200;  // claims more than is there below
    f.feed(std::as_bytes(std::span(buf.data(), 40)));
    Datagram unterminated;
    unterminated.object(NFT_MSG_DELTABLE, kTheirs, "smtpfence");
    std::vector<std::byte> bytes(unterminated.bytes().begin(), unterminated.bytes().end());
    bytes[bytes.size() - 3] = std::byte{'x'};  // overwrite the NUL and padding
    bytes[bytes.size() - 2] = std::byte{'x'};
    bytes[bytes.size() - 1] = std::byte{'x'};
    f.feed(bytes);
    Datagram gen;
    gen.newgen(kTheirs, 1, "nft");
    f.feed(gen.bytes());
    EXPECT_FALSE(f.take());
}

}  // namespace
}  // namespace smtpfence::nft
