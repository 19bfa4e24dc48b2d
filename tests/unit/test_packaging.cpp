// What the packages install besides the programs (packaging/):
//  - the default configuration, /etc/smtpfence/smtpfence.conf: as shipped it loads to
//    exactly the built-in defaults, and so does every setting in it once uncommented; it
//    lists every setting of smtpfence.conf(5) with the default the manual page gives;
//  - the systemd unit: its CapabilityBoundingSet= is the daemon's own bounding set
//    (common/privileges.h), which the daemon and its worker drop to at start; anything
//    less and they refuse to start, anything more is never used.
// (tests/packaging/ checks the unit with systemd-analyze and the packages themselves.)
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "policy/policy.h"
#include "tests/unit/temp_dir.h"

#if __has_include("common/privileges.h")
#include "common/privileges.h"
#define SMTPFENCE_HAVE_PRIVILEGES 1
#endif

namespace smtpfence {
namespace {

using testing::TempDir;

const std::string kPackagedConf = std::string(SMTPFENCE_SOURCE_DIR) + "/packaging/smtpfence.conf";
const std::string kManPage = std::string(SMTPFENCE_SOURCE_DIR) + "/man/smtpfence.conf.5";
const std::string kUnit =
    std::string(SMTPFENCE_SOURCE_DIR) + "/packaging/systemd/smtpfenced.service";

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in) << "cannot read " << path;
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

// Every field of Policy but source (the file it came from). A field added to Policy
// belongs here too.
void expect_same_policy(const Policy& got, const Policy& want) {
    EXPECT_EQ(got.enabled, want.enabled) << "enabled";
    EXPECT_EQ(got.ports, want.ports) << "ports";
    EXPECT_EQ(got.allow_users, want.allow_users) << "allow_users";
    EXPECT_EQ(got.allow_groups, want.allow_groups) << "allow_groups";
    EXPECT_EQ(got.allow_groups_default, want.allow_groups_default) << "allow_groups_default";
    EXPECT_EQ(got.mta_users, want.mta_users) << "mta_users";
    EXPECT_EQ(got.mta_users_auto, want.mta_users_auto) << "mta_users_auto";
    EXPECT_EQ(got.allow_local, want.allow_local) << "allow_local";
    EXPECT_EQ(got.action, want.action) << "action";
    EXPECT_EQ(got.queue_num, want.queue_num) << "queue_num";
    EXPECT_EQ(got.observe_rate, want.observe_rate) << "observe_rate";
    EXPECT_EQ(got.observe_burst, want.observe_burst) << "observe_burst";
    EXPECT_EQ(got.control_admin_group, want.control_admin_group) << "control_admin_group";
    EXPECT_EQ(got.control_read_all, want.control_read_all) << "control_read_all";
    EXPECT_EQ(got.da_pipeline, want.da_pipeline) << "da_pipeline";
    EXPECT_EQ(got.da_attempt_weight, want.da_attempt_weight) << "da_attempt_weight";
    EXPECT_EQ(got.da_block_cracking, want.da_block_cracking) << "da_block_cracking";
    EXPECT_EQ(got.redirect, want.redirect) << "redirect";
    EXPECT_EQ(got.log_blocked, want.log_blocked) << "log_blocked";
    EXPECT_EQ(got.log_uid, want.log_uid) << "log_uid";
}

// A commented-out setting of the shipped file: "#KEY = "value"" (prose comments start
// with "# ").
const std::regex kCommentedSetting(R"re(^#([A-Z_]+ = "[^"]*")$)re");

// The file with every commented-out setting made active.
std::string uncommented(const std::string& text) {
    std::istringstream in(text);
    std::string out;
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        out += std::regex_match(line, m, kCommentedSetting) ? m[1].str() : line;
        out += '\n';
    }
    return out;
}

// KEY -> default value, from the commented-out settings of the shipped file.
std::map<std::string, std::string> commented_settings(const std::string& text) {
    static const std::regex key_value(R"re(^#([A-Z_]+) = "([^"]*)"$)re");
    std::istringstream in(text);
    std::map<std::string, std::string> out;
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (std::regex_match(line, m, key_value)) {
            EXPECT_TRUE(out.emplace(m[1], m[2]).second) << m[1] << " is listed twice";
        }
    }
    return out;
}

// KEY -> default value, from the SETTINGS section of smtpfence.conf(5):
//   .BR SMTP_PORTS " = \(dq" 25,465,587 \(dq      and     .BR SMTP_ALLOWUSER " = \(dq\(dq"
std::map<std::string, std::string> man_page_settings(const std::string& text) {
    static const std::regex setting(R"re(^\.BR ([A-Z_]+) " = \\\(dq(?:" (\S+) \\\(dq|\\\(dq")$)re");
    std::istringstream in(text);
    std::map<std::string, std::string> out;
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (std::regex_match(line, m, setting))
            out.emplace(m[1], m[2].matched ? m[2].str() : std::string());
    }
    return out;
}

TEST(PackagedConf, AsShippedLoadsToTheDefaultsWithoutWarnings) {
    auto loaded = load_policy(kPackagedConf, /*missing_ok=*/false);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_TRUE(loaded->warnings.empty()) << loaded->warnings.front();
    EXPECT_EQ(loaded->policy.source, kPackagedConf);
    expect_same_policy(loaded->policy, Policy{});
}

// The values shown are the defaults: uncommenting any of them changes nothing (but that
// SMTP_ALLOWGROUP, once given, warns about groups that do not exist).
TEST(PackagedConf, EverySettingUncommentedLoadsToTheDefaultsWithoutWarnings) {
    const TempDir dir;
    const std::string text = uncommented(slurp(kPackagedConf));
    const std::string path = dir.write("smtpfence.conf", text);
    auto loaded = load_policy(path, /*missing_ok=*/false);
    ASSERT_TRUE(loaded) << loaded.error().message() << "\n" << text;
    EXPECT_TRUE(loaded->warnings.empty()) << loaded->warnings.front();
    Policy want;
    want.allow_groups_default = false;
    expect_same_policy(loaded->policy, want);
}

TEST(PackagedConf, ListsEverySettingOfTheManualPageWithItsDefault) {
    const auto shipped = commented_settings(slurp(kPackagedConf));
    const auto manual = man_page_settings(slurp(kManPage));
    // 18 settings today (policy/policy.cpp's kHandlers); the manual page's markup
    // changed if none are found.
    ASSERT_GE(manual.size(), 18U) << "smtpfence.conf(5): settings not found in " << kManPage;
    EXPECT_EQ(shipped, manual);
}

// The space-separated values of every KEY= line of the unit (comments are whole lines).
std::vector<std::string> unit_values(const std::string& text, const std::string& key) {
    std::istringstream in(text);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(key + "=", 0) != 0)
            continue;
        std::istringstream words(line.substr(key.size() + 1));
        for (std::string w; words >> w;)
            out.push_back(w);
    }
    return out;
}

TEST(PackagedUnit, CapabilityBoundingSetIsTheDaemonsBoundingSet) {
#ifdef SMTPFENCE_HAVE_PRIVILEGES
    const auto names = unit_values(slurp(kUnit), "CapabilityBoundingSet");
    ASSERT_FALSE(names.empty()) << kUnit << ": no CapabilityBoundingSet=";
    CapabilitySet unit;
    for (const std::string& name : names) {
        const auto cap = capability_from_name(name);
        ASSERT_TRUE(cap.has_value()) << kUnit << ": unknown capability " << name;
        unit = unit | CapabilitySet{*cap};
    }
    EXPECT_EQ(unit, kDaemonBoundingSet)
        << "the unit's CapabilityBoundingSet= lacks " << (kDaemonBoundingSet - unit).to_string()
        << " and has " << (unit - kDaemonBoundingSet).to_string() << " beyond it";
#else
    GTEST_SKIP() << "common/privileges.h is not there";
#endif
}

}  // namespace
}  // namespace smtpfence
