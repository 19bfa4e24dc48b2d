// Batch commit against a fake kernel: ACK accounting, error mapping to the object and
// to the expression inside a rule (extended ACK offsets), draining after an error,
// batch-level refusal, and a kernel that never answers.
#include <gtest/gtest.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "nft/batch.h"
#include "nft/ruleset.h"
#include "tests/unit/fake_kernel.h"

namespace smtpfence::nft {
namespace {

using smtpfence::testing::FakeKernel;

// Offset (from the message start) of the index-th expression of a NEWRULE message.
std::uint32_t expression_offset(const nlmsghdr* msg, std::size_t wanted) {
    const char* start = reinterpret_cast<const char*>(msg);
    const nlattr* attr = nullptr;
    std::size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg));
    while (off + sizeof(nlattr) <= msg->nlmsg_len) {
        attr = reinterpret_cast<const nlattr*>(start + off);
        if ((attr->nla_type & NLA_TYPE_MASK) == NFTA_RULE_EXPRESSIONS) {
            std::size_t inner = off + NLA_HDRLEN;
            for (std::size_t i = 0; inner < off + attr->nla_len; ++i) {
                const auto* elem = reinterpret_cast<const nlattr*>(start + inner);
                if (i == wanted)
                    return static_cast<std::uint32_t>(inner + NLA_HDRLEN);
                inner += NLA_ALIGN(elem->nla_len);
            }
        }
        off += NLA_ALIGN(attr->nla_len);
    }
    return 0;
}

TEST(Batch, CommitReadsEveryAck) {
    FakeKernel kernel;
    const Ruleset rs = build_ruleset(RulesetSpec{});
    Batch batch(NFPROTO_INET);
    for (const BuiltSet& s : rs.sets)
        batch.set(*s.set, Op::Create, "set " + s.name);
    for (const BuiltRule& r : rs.rules)
        batch.rule(*r.rule, Op::Create, r.text, r.expr_names);
    ASSERT_TRUE(batch.commit(kernel).has_value());
    EXPECT_EQ(kernel.sends, 1);  // one datagram: one transaction
    EXPECT_EQ(kernel.messages_seen, batch.message_count());
    EXPECT_EQ(kernel.pending_replies(), 0U);
}

TEST(Batch, ErrorNamesTheRuleAndTheExpression) {
    FakeKernel kernel;
    const Ruleset rs = build_ruleset(RulesetSpec{});
    Batch batch(NFPROTO_INET);
    // Message 0: table; then every rule. Refuse the judge's last rule's last expression.
    batch.table(*rs.table_obj, Op::Create, "create table inet smtpfence");
    const BuiltRule* judge_last = nullptr;
    std::size_t judge_last_index = 0;
    for (const BuiltRule& r : rs.rules) {
        batch.rule(*r.rule, Op::Create, "rule " + r.chain + " (" + r.text + ")", r.expr_names);
        if (r.chain == kChainJudge) {
            judge_last = &r;
            judge_last_index = batch.message_count() - 1;
        }
    }
    ASSERT_NE(judge_last, nullptr);
    const BuiltRule& last = *judge_last;
    const std::size_t last_index = judge_last_index;
    kernel.verdict = [&](std::size_t index, const nlmsghdr* msg, std::uint32_t* offset) {
        if (index != last_index)
            return 0;
        *offset = expression_offset(msg, last.expr_names.size() - 1);
        return EOPNOTSUPP;
    };
    auto r = batch.commit(kernel);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EOPNOTSUPP);
    const std::string m = r.error().message();
    EXPECT_NE(m.find("rule judge (meta l4proto tcp reject with tcp reset)"), std::string::npos)
        << m;
    EXPECT_NE(m.find("expression 3 (reject with tcp reset)"), std::string::npos) << m;
    EXPECT_NE(m.find("refused by fake kernel"), std::string::npos) << m;
    EXPECT_NE(m.find("nothing changed"), std::string::npos) << m;
    EXPECT_EQ(kernel.pending_replies(), 0U) << "every ACK must be drained, also after an error";
}

TEST(Batch, FirstOfSeveralErrorsIsReportedAndTheRestCounted) {
    FakeKernel kernel;
    const Ruleset rs = build_ruleset(RulesetSpec{});
    Batch batch(NFPROTO_INET);
    for (const BuiltSet& s : rs.sets)
        batch.set(*s.set, Op::Create, "set " + s.name);
    kernel.verdict = [](std::size_t index, const nlmsghdr*, std::uint32_t*) {
        return index >= 1 ? ENOENT : 0;
    };
    auto r = batch.commit(kernel);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().what, "set " + rs.sets[1].name);  // the first refused, not a later one
    EXPECT_NE(r.error().detail.find(std::to_string(batch.message_count() - 2) + " more refused"),
              std::string::npos)
        << r.error().detail;
}

TEST(Batch, WholeBatchRefused) {
    FakeKernel kernel;
    kernel.refuse_whole_batch = EPERM;
    Batch batch(NFPROTO_INET);
    batch.table(*build_table("t"), Op::Create, "create table inet t");
    auto r = batch.commit(kernel);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EPERM);
}

TEST(Batch, KernelThatNeverAnswersIsATimeoutNotAHang) {
    FakeKernel kernel;
    kernel.silent = true;
    Batch batch(NFPROTO_INET);
    batch.table(*build_table("t"), Op::Create, "create table inet t");
    auto r = batch.commit(kernel);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, ETIMEDOUT);
    EXPECT_NE(r.error().message().find("1 of 1 ACKs missing"), std::string::npos);
}

TEST(Batch, LargeElementListsAreSplitIntoMessages) {
    FakeKernel kernel;
    std::set<std::uint32_t> uids;
    for (std::uint32_t u = 1000; u < 11000; ++u)
        uids.insert(u);
    Batch batch(NFPROTO_INET);
    batch.set_elements("t", "allow_uid", u32_keys(uids), Op::Create, "add");
    const std::size_t expected =
        (uids.size() + Batch::kElementsPerMessage - 1) / Batch::kElementsPerMessage;
    EXPECT_EQ(batch.message_count(), expected);
    ASSERT_TRUE(batch.commit(kernel).has_value());
}

TEST(Batch, EmptyBatchSendsNothing) {
    FakeKernel kernel;
    Batch batch(NFPROTO_INET);
    ASSERT_TRUE(batch.commit(kernel).has_value());
    EXPECT_EQ(kernel.sends, 0);
}

}  // namespace
}  // namespace smtpfence::nft
