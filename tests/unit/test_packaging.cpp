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
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "policy/policy.h"
#include "tests/support/temp_dir.h"

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
    EXPECT_EQ(got.table_owner, want.table_owner) << "table_owner";
    EXPECT_EQ(got.da_attempt_weight, want.da_attempt_weight) << "da_attempt_weight";
    EXPECT_EQ(got.da_block_cracking, want.da_block_cracking) << "da_block_cracking";
    EXPECT_EQ(got.redirect, want.redirect) << "redirect";
    EXPECT_EQ(got.log_blocked, want.log_blocked) << "log_blocked";
    EXPECT_EQ(got.log_uid, want.log_uid) << "log_uid";
    EXPECT_EQ(got.allow_dest.size(), want.allow_dest.size()) << "allow_dest";
    EXPECT_EQ(got.dest_ttl_min, want.dest_ttl_min) << "dest_ttl_min";
    EXPECT_EQ(got.dest_ttl_max, want.dest_ttl_max) << "dest_ttl_max";
    EXPECT_EQ(got.dest_grace, want.dest_grace) << "dest_grace";
    EXPECT_EQ(got.alert, want.alert) << "alert";
}

// (Hand-written matching rather than std::regex: g++ 12 at -O2 with the sanitizers
// reports false maybe-uninitialized warnings inside <regex>.)

// An uppercase key ([A-Z_]+) at the start of s, removed from s.
std::optional<std::string> take_key(std::string_view& s) {
    std::size_t n = 0;
    while (n < s.size() && ((s[n] >= 'A' && s[n] <= 'Z') || s[n] == '_'))
        ++n;
    if (n == 0)
        return std::nullopt;
    std::string key(s.substr(0, n));
    s.remove_prefix(n);
    return key;
}

bool take(std::string_view& s, std::string_view prefix) {
    if (!s.starts_with(prefix))
        return false;
    s.remove_prefix(prefix.size());
    return true;
}

// A commented-out setting of the shipped file: #KEY = "value" (prose comments start
// with "# "); KEY and value, or nullopt.
std::optional<std::pair<std::string, std::string>> commented_setting(std::string_view line) {
    if (!take(line, "#"))
        return std::nullopt;
    auto key = take_key(line);
    if (!key || !take(line, " = \"") || !line.ends_with('"'))
        return std::nullopt;
    line.remove_suffix(1);
    if (line.find('"') != std::string_view::npos)
        return std::nullopt;
    return std::make_pair(*key, std::string(line));
}

// The file with every commented-out setting made active.
std::string uncommented(const std::string& text) {
    std::istringstream in(text);
    std::string out;
    for (std::string line; std::getline(in, line);) {
        out += commented_setting(line) ? line.substr(1) : line;
        out += '\n';
    }
    return out;
}

// KEY -> default value, from the commented-out settings of the shipped file.
std::map<std::string, std::string> commented_settings(const std::string& text) {
    std::istringstream in(text);
    std::map<std::string, std::string> out;
    for (std::string line; std::getline(in, line);) {
        if (auto kv = commented_setting(line)) {
            EXPECT_TRUE(out.emplace(kv->first, kv->second).second)
                << kv->first << " is listed twice";
        }
    }
    return out;
}

// KEY -> default value, from the SETTINGS section of smtpfence.conf(5):
//   .BR SMTP_PORTS " = \(dq" 25,465,587 \(dq      and     .BR SMTP_ALLOWUSER " = \(dq\(dq"
std::map<std::string, std::string> man_page_settings(const std::string& text) {
    std::istringstream in(text);
    std::map<std::string, std::string> out;
    for (std::string line; std::getline(in, line);) {
        std::string_view s(line);
        if (!take(s, ".BR "))
            continue;
        auto key = take_key(s);
        if (!key || !take(s, R"( " = \(dq)"))
            continue;
        if (s == R"(\(dq")") {
            out.emplace(*key, std::string());
        } else if (take(s, R"(" )") && s.ends_with(R"( \(dq)")) {
            s.remove_suffix(5);
            if (!s.empty() && s.find(' ') == std::string_view::npos)
                out.emplace(*key, std::string(s));
        }
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
    // 23 settings today (policy/policy.cpp's kHandlers); the manual page's markup
    // changed if none are found.
    ASSERT_GE(manual.size(), 23U) << "smtpfence.conf(5): settings not found in " << kManPage;
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
