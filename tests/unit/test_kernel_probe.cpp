// The daemon's kernel probe (probe_kernel) against a fake kernel that refuses what
// Linux 5.10 refuses: the set expression flag (NFT_SET_EXPR, Linux 5.11) and the
// table ownership flags. What the daemon then programs and says: the ruleset whose
// rules carry `blocked`'s counters, a start log line and a status line naming the
// missing feature. The real Linux 5.10 does the same in vm-tests' bookworm-5.10 cell.
#include <gtest/gtest.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter/nf_tables.h>

#include <cerrno>
#include <memory>
#include <string>

#include "ctl/daemon.h"
#include "nft/engine.h"
#include "nft/ruleset.h"
#include "tests/unit/daemon_fixture.h"
#include "tests/unit/fake_kernel.h"

namespace smtpfence {
namespace {

using nlohmann::json;
using testing::DaemonPartsTest;
using testing::FakeKernel;

// The flags of a NEWSET or NEWTABLE batch message; nullopt for any other message.
std::optional<std::uint32_t> new_object_flags(const nlmsghdr* msg) {
    const unsigned type = msg->nlmsg_type & 0xffU;
    if (type == NFT_MSG_NEWSET) {
        std::unique_ptr<nftnl_set, decltype(&nftnl_set_free)> s(nftnl_set_alloc(), nftnl_set_free);
        if (nftnl_set_nlmsg_parse(msg, s.get()) < 0 || !nftnl_set_is_set(s.get(), NFTNL_SET_FLAGS))
            return 0U;
        return nftnl_set_get_u32(s.get(), NFTNL_SET_FLAGS);
    }
    if (type == NFT_MSG_NEWTABLE) {
        std::unique_ptr<nftnl_table, decltype(&nftnl_table_free)> t(nftnl_table_alloc(),
                                                                    nftnl_table_free);
        if (nftnl_table_nlmsg_parse(msg, t.get()) < 0 ||
            !nftnl_table_is_set(t.get(), NFTNL_TABLE_FLAGS))
            return 0U;
        return nftnl_table_get_u32(t.get(), NFTNL_TABLE_FLAGS);
    }
    return std::nullopt;
}

// As Linux 5.10 answers: a set flag it does not know (NFT_SET_EXPR) is EOPNOTSUPP, a
// table flag other than dormant EOPNOTSUPP too; set_refusal instead for the set flag.
void behave_as_linux_5_10(FakeKernel& kernel, int set_refusal = EOPNOTSUPP) {
    kernel.verdict = [set_refusal](std::size_t, const nlmsghdr* msg, std::uint32_t*) {
        const auto flags = new_object_flags(msg);
        if (!flags)
            return 0;
        if ((msg->nlmsg_type & 0xffU) == NFT_MSG_NEWSET)
            return (*flags & NFT_SET_EXPR) != 0 ? set_refusal : 0;
        return (*flags & nft::kTableFlagsOwned) != 0 ? EOPNOTSUPP : 0;
    };
}

TEST(KernelProbe, Linux510HasNeitherSetExpressionsNorOwnedTablesAndNothingIsLeft) {
    FakeKernel kernel;
    kernel.keeps_tables = true;
    behave_as_linux_5_10(kernel);
    nft::Engine engine(kernel);
    auto f = probe_kernel(engine, "smtpfence");
    ASSERT_TRUE(f.has_value()) << f.error().message();
    EXPECT_FALSE(f->set_expressions);
    EXPECT_FALSE(f->ownership);
    EXPECT_EQ(f->queue, nft::QueueMode::Native);
    EXPECT_TRUE(kernel.tables.empty()) << "a probe table was left behind";
    EXPECT_EQ(describe_kernel(*f),
              "queue support: native; owned tables: no (Linux 6.9: the table is restored "
              "after foreign changes instead); set expressions: no (Linux 5.11: the rules "
              "count blocked SYNs per uid instead)");
}

TEST(KernelProbe, AKernelThatTakesBothHasBoth) {
    FakeKernel kernel;
    kernel.keeps_tables = true;
    nft::Engine engine(kernel);
    auto f = probe_kernel(engine, "smtpfence");
    ASSERT_TRUE(f.has_value()) << f.error().message();
    EXPECT_TRUE(f->set_expressions);
    EXPECT_TRUE(f->ownership);
    EXPECT_TRUE(kernel.tables.empty()) << "a probe table was left behind";
    EXPECT_EQ(describe_kernel(*f),
              "queue support: native; owned tables: yes; set expressions: yes");
}

// A refusal that is no answer about the feature (no permission) fails the probe, and
// with it the daemon's start (open_kernel_session): it does not guess.
TEST(KernelProbe, ARefusalThatIsNoAnswerFailsTheProbeNamingIt) {
    FakeKernel kernel;
    kernel.keeps_tables = true;
    behave_as_linux_5_10(kernel, EPERM);
    nft::Engine engine(kernel);
    auto f = probe_kernel(engine, "smtpfence");
    ASSERT_FALSE(f.has_value());
    EXPECT_NE(f.error().message().find("probe the kernel's set expressions"), std::string::npos)
        << f.error().message();
    EXPECT_TRUE(nft::kernel_lacks_feature(EOPNOTSUPP));
    EXPECT_TRUE(nft::kernel_lacks_feature(EINVAL));
    EXPECT_FALSE(nft::kernel_lacks_feature(EPERM));
    EXPECT_FALSE(nft::kernel_lacks_feature(ENOENT));
}

// The daemon on Linux 5.10: what the probe found goes into the ruleset (the 5.10 kernel
// takes it: no NFT_SET_EXPR anywhere), the status line says what is done instead.
class Linux510DaemonTest : public DaemonPartsTest {
  protected:
    Linux510DaemonTest() {
        behave_as_linux_5_10(kernel);
        features.set_expressions = false;
    }
};

TEST_F(Linux510DaemonTest, TheRulesCountPerUidAndStatusSaysWhy) {
    ASSERT_NO_FATAL_FAILURE(load());
    ASSERT_TRUE(state.current.has_value());
    EXPECT_FALSE(state.current->spec.set_expressions);
    ASSERT_NE(table(), nullptr) << "the 5.10 ruleset was not applied";
    EXPECT_EQ(table()->sets.at(nft::kSetBlocked).flags & NFT_SET_EXPR, 0U);

    const Answer a = ask(ctl::Command::Status);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->at("enforcing"), true);
    const std::string summary = a->at("summary").get<std::string>();
    EXPECT_NE(summary.find("kernel without set expressions (Linux 5.11): blocked SYNs counted "
                           "per uid by the rules"),
              std::string::npos)
        << summary;
    EXPECT_NE(state.status_line().find("kernel without set expressions"), std::string::npos);
}

TEST_F(Linux510DaemonTest, AKernelWithSetExpressionsSaysNothingOfThem) {
    features.set_expressions = true;
    kernel.verdict = [](std::size_t, const nlmsghdr*, std::uint32_t*) { return 0; };
    ASSERT_NO_FATAL_FAILURE(load());
    EXPECT_EQ(state.status_line().find("set expressions"), std::string::npos);
}

}  // namespace
}  // namespace smtpfence
