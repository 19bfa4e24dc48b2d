// Golden tests of the rule builder: the exact bytecode and nft text each policy shape
// produces. The same text is compared with the kernel's own listing by the root
// integration tests, so golden text, bytecode and kernel state are tied together.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "nft/ruleset.h"

namespace smtpfence::nft {
namespace {

std::string golden_path(const std::string& name) {
    return std::string(SMTPFENCE_SOURCE_DIR) + "/tests/golden/" + name;
}

// Compares with the golden file; SMTPFENCE_UPDATE_GOLDEN=1 rewrites it instead (then
// review the diff by hand before committing).
void expect_golden(const std::string& name, const std::string& actual) {
    const std::string path = golden_path(name);
    if (std::getenv("SMTPFENCE_UPDATE_GOLDEN") != nullptr) {  // NOLINT(concurrency-mt-unsafe)
        std::ofstream(path) << actual;
        return;
    }
    std::ifstream in(path);
    ASSERT_TRUE(in.good()) << "missing golden file " << path;
    std::stringstream expected;
    expected << in.rdbuf();
    EXPECT_EQ(actual, expected.str()) << "golden file " << path;
}

RulesetSpec default_spec() {
    RulesetSpec spec;
    spec.table = "smtpfence";
    spec.allow_uids = {0, 8, 101};
    spec.allow_gids = {8, 38};
    spec.queue = QueueMode::Xt;
    return spec;
}

TEST(Ruleset, DefaultPolicyBytecode) {
    expect_golden("default-xt.bytecode", render_bytecode(build_ruleset(default_spec())));
}

TEST(Ruleset, DefaultPolicyNftText) {
    expect_golden("default-xt.nft", render_nft(build_ruleset(default_spec())));
}

TEST(Ruleset, NativeQueueDropNoLocal) {
    RulesetSpec spec = default_spec();
    spec.queue = QueueMode::Native;
    spec.verdict = Verdict::Drop;
    spec.allow_local = false;
    spec.ports = {2525, 25};
    spec.queue_num = 7;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("native-drop-nolocal.bytecode", render_bytecode(rs));
    expect_golden("native-drop-nolocal.nft", render_nft(rs));
}

TEST(Ruleset, NoQueueSupportHasNoObserveChain) {
    RulesetSpec spec = default_spec();
    spec.queue = QueueMode::None;
    const Ruleset rs = build_ruleset(spec);
    for (const BuiltChain& c : rs.chains)
        EXPECT_NE(c.name, kChainObserve);
    for (const BuiltSet& s : rs.sets)
        EXPECT_NE(s.name, kSetObserveRate);
    // Enforcement does not depend on the worker: enforce + judge are all there.
    const std::string text = render_nft(rs);
    EXPECT_NE(text.find("chain enforce"), std::string::npos);
    EXPECT_NE(text.find("meta l4proto tcp reject with tcp reset"), std::string::npos);
    EXPECT_EQ(text.find("queue"), std::string::npos);
    // With no observe chain, judge is where blocked SYNs are counted.
    EXPECT_NE(text.find("update @blocked { meta skuid }"), std::string::npos);
}

TEST(Ruleset, PortsSortedAndUniqueInNetworkOrder) {
    RulesetSpec spec = default_spec();
    spec.ports = {587, 25, 587, 465};
    const Ruleset rs = build_ruleset(spec);
    const auto it = std::find_if(rs.sets.begin(), rs.sets.end(),
                                 [](const BuiltSet& s) { return s.name == kSetPorts; });
    ASSERT_NE(it, rs.sets.end());
    const BuiltSet& ports = *it;
    EXPECT_EQ(ports.elements, (std::vector<std::string>{"25", "465", "587"}));
    ASSERT_EQ(ports.keys.size(), 3U);
    EXPECT_EQ(ports.keys[0], (ElementKey{0x00, 0x19}));  // 25, big-endian
}

TEST(Ruleset, UidKeysAreHostOrder) {
    const auto keys = u32_keys({1, 0x01020304});
    ASSERT_EQ(keys.size(), 2U);
    std::uint32_t v = 0;
    std::memcpy(&v, keys[1].data(), sizeof v);
    EXPECT_EQ(v, 0x01020304U);
}

// CSF's DROP_OUT_LOGGING with DROP_UID_LOGGING: a rate-limited log rule per family
// before the verdict.
TEST(Ruleset, CsfLoggingWithUid) {
    RulesetSpec spec = default_spec();
    spec.log_blocked = true;
    spec.log_uid = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-log-uid-xt.bytecode", render_bytecode(rs));
    expect_golden("csf-log-uid-xt.nft", render_nft(rs));
}

// CSF's SMTP_REDIRECT: the nat chain takes the judge's decision first and redirects.
TEST(Ruleset, CsfRedirect) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-redirect-xt.bytecode", render_bytecode(rs));
    expect_golden("csf-redirect-xt.nft", render_nft(rs));
}

// Redirect without allow-local, without queue support, dropping and logging without
// the uid: the nat rule redirects local SMTP too, lo still passes the filter chains,
// and the judge counts what reaches it.
TEST(Ruleset, CsfRedirectNoLocalNoQueueDropLogging) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    spec.allow_local = false;
    spec.queue = QueueMode::None;
    spec.verdict = Verdict::Drop;
    spec.log_blocked = true;
    const Ruleset rs = build_ruleset(spec);
    expect_golden("csf-redirect-nolocal-none.bytecode", render_bytecode(rs));
    expect_golden("csf-redirect-nolocal-none.nft", render_nft(rs));
}

TEST(Ruleset, NatChainOnlyWithRedirectAndListedLast) {
    for (const bool redirect : {false, true}) {
        RulesetSpec spec = default_spec();
        spec.redirect = redirect;
        const Ruleset rs = build_ruleset(spec);
        const bool has = std::any_of(rs.chains.begin(), rs.chains.end(),
                                     [](const BuiltChain& c) { return c.name == kChainToMta; });
        EXPECT_EQ(has, redirect);
        if (redirect) {
            EXPECT_EQ(rs.chains.back().name, kChainToMta);
        }
        const std::string text = render_nft(rs);
        EXPECT_EQ(text.find("redirect") != std::string::npos, redirect);
        EXPECT_EQ(text.find("log prefix"), std::string::npos);
    }
}

TEST(Ruleset, EveryRuleHasAnExpressionLabelPerExpression) {
    RulesetSpec spec = default_spec();
    spec.redirect = true;
    spec.log_blocked = true;
    spec.log_uid = true;
    const Ruleset rs = build_ruleset(spec);
    for (const BuiltRule& r : rs.rules) {
        std::size_t count = 0;
        nftnl_expr_iter* it = nftnl_expr_iter_create(r.rule.get());
        while (nftnl_expr_iter_next(it) != nullptr)
            ++count;
        nftnl_expr_iter_destroy(it);
        EXPECT_EQ(count, r.expr_names.size()) << r.text;
    }
}

}  // namespace
}  // namespace smtpfence::nft
