// csf.conf mapped onto the policy: CSF's reading of every SMTP setting (Perl truth,
// missing settings, whitespace, ranges), the fixes smtpfence makes and the notes that
// say so, and the full-size files of the corpus.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "csf-compat/csf_policy.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::csf {
namespace {

const std::string kCsfData = std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data/csf";

// Every SMTP setting given, at CSF's documented defaults but with blocking on.
const std::string kAllSet =
    "SMTP_BLOCK = \"1\"\n"                  // 1
    "SMTP_ALLOWLOCAL = \"1\"\n"             // 2
    "SMTP_REDIRECT = \"0\"\n"               // 3
    "SMTP_PORTS = \"25,465,587\"\n"         // 4
    "SMTP_ALLOWUSER = \"\"\n"               // 5
    "SMTP_ALLOWGROUP = \"mail,mailman\"\n"  // 6
    "IPV6 = \"1\"\n"                        // 7
    "DROP_OUT = \"REJECT\"\n"               // 8
    "DROP_LOGGING = \"1\"\n"                // 9
    "DROP_OUT_LOGGING = \"1\"\n"            // 10
    "DROP_UID_LOGGING = \"1\"\n";           // 11

// base (kAllSet) with one setting's line replaced in place (removed when line is empty).
std::string with(const std::string& key, const std::string& line,
                 const std::string& base = kAllSet) {
    std::string out;
    std::size_t pos = 0;
    while (pos < base.size()) {
        const std::size_t end = base.find('\n', pos);
        const std::string current = base.substr(pos, end - pos);
        if (current.rfind(key + " = ", 0) == 0) {
            if (!line.empty())
                out += line + "\n";
        } else {
            out += current + "\n";
        }
        pos = end + 1;
    }
    return out;
}

CsfPolicy map_ok(const std::string& text) {
    auto conf = conf::parse_conf(text, "csf.conf");
    EXPECT_TRUE(conf) << conf.error().message();
    if (!conf)
        return {};
    auto mapped = policy_from_csf(*conf);
    EXPECT_TRUE(mapped) << mapped.error().message();
    return mapped.value_or(CsfPolicy{});
}

std::string map_error(const std::string& text) {
    auto conf = conf::parse_conf(text, "csf.conf");
    EXPECT_TRUE(conf) << conf.error().message();
    if (!conf)
        return {};
    auto mapped = policy_from_csf(*conf);
    EXPECT_FALSE(mapped);
    return mapped ? "(no error)" : mapped.error().message();
}

std::vector<std::string> messages(const CsfPolicy& p) {
    std::vector<std::string> out;
    out.reserve(p.notes.size());
    for (const Note& n : p.notes)
        out.push_back(n.message());
    return out;
}

bool has_note(const CsfPolicy& p, const std::string& start, const std::string& part) {
    return std::any_of(p.notes.begin(), p.notes.end(), [&](const Note& n) {
        const std::string m = n.message();
        return m.rfind(start, 0) == 0 && m.find(part) != std::string::npos;
    });
}

const Mapped* mapped(const CsfPolicy& p, const std::string& key) {
    for (const Mapped& m : p.mapped) {
        if (m.key == key)
            return &m;
    }
    return nullptr;
}

TEST(CsfPolicy, EverySettingAtItsUsualValue) {
    const CsfPolicy p = map_ok(kAllSet);
    EXPECT_TRUE(p.policy.enabled);
    EXPECT_EQ(p.policy.ports, (std::vector<std::uint16_t>{25, 465, 587}));
    EXPECT_TRUE(p.policy.allow_users.empty());
    EXPECT_EQ(p.policy.allow_groups, (std::vector<std::string>{"mail", "mailman"}));
    EXPECT_FALSE(p.policy.allow_groups_default);
    EXPECT_TRUE(p.policy.allow_local);
    EXPECT_FALSE(p.policy.redirect);
    EXPECT_EQ(p.policy.action, BlockAction::Reject);
    EXPECT_TRUE(p.policy.log_blocked);
    EXPECT_TRUE(p.policy.log_uid);
    EXPECT_TRUE(p.policy.mta_users_auto);  // the MTA gets through by uid as well
    EXPECT_EQ(p.policy.source, "csf.conf");
    EXPECT_TRUE(p.notes.empty()) << ::testing::PrintToString(messages(p));
    EXPECT_TRUE(p.ignored.empty());
    ASSERT_EQ(p.mapped.size(), kSmtpKeys.size());
    for (std::size_t i = 0; i < kSmtpKeys.size(); ++i) {
        EXPECT_EQ(p.mapped[i].key, kSmtpKeys[i]);
        EXPECT_GT(p.mapped[i].line, 0) << p.mapped[i].key;
        EXPECT_FALSE(p.mapped[i].meaning.empty());
    }
    EXPECT_EQ(mapped(p, "SMTP_PORTS")->meaning, "ports 25, 465, 587");
    EXPECT_EQ(mapped(p, "SMTP_PORTS")->line, 4);
}

TEST(CsfPolicy, SmtpBlockZeroEnforcesNothing) {
    const CsfPolicy p = map_ok(with("SMTP_BLOCK", "SMTP_BLOCK = \"0\""));
    EXPECT_FALSE(p.policy.enabled);
    EXPECT_EQ(mapped(p, "SMTP_BLOCK")->meaning, "nothing is enforced");
    // The rest is still read, so that switching it on later does what the file says.
    EXPECT_EQ(p.policy.allow_groups, (std::vector<std::string>{"mail", "mailman"}));
}

TEST(CsfPolicy, BooleansArePerlTruth) {
    for (const char* on : {"1", "yes", "00", "0.0", " 0", "on"}) {
        const CsfPolicy p = map_ok(with("SMTP_BLOCK", std::string("SMTP_BLOCK = \"") + on + "\""));
        EXPECT_TRUE(p.policy.enabled) << on;
    }
    for (const char* off : {"0", ""}) {
        const CsfPolicy p = map_ok(with("SMTP_BLOCK", std::string("SMTP_BLOCK = \"") + off + "\""));
        EXPECT_FALSE(p.policy.enabled) << off;
    }
    const CsfPolicy yes = map_ok(with("SMTP_ALLOWLOCAL", "SMTP_ALLOWLOCAL = \"yes\""));
    EXPECT_TRUE(yes.policy.allow_local);
    EXPECT_EQ(messages(yes),
              (std::vector<std::string>{"csf.conf:2: SMTP_ALLOWLOCAL: value \"yes\" read as on, "
                                        "as CSF does (anything but \"\" and \"0\" is on)"}));
}

TEST(CsfPolicy, MissingSettingsReadAsEmptyAsInCsf) {
    const CsfPolicy p = map_ok("SMTP_BLOCK = \"1\"\nTCP_IN = \"22\"\n");
    // No ports: CSF loads no SMTP rule at all.
    EXPECT_FALSE(p.policy.enabled);
    EXPECT_TRUE(has_note(p, "csf.conf: SMTP_PORTS: not set", "nothing is enforced"));
    EXPECT_TRUE(p.policy.allow_groups.empty());
    EXPECT_TRUE(has_note(p, "csf.conf: SMTP_ALLOWGROUP: not set", "no group"));
    EXPECT_FALSE(p.policy.allow_local);
    EXPECT_TRUE(has_note(p, "csf.conf: SMTP_ALLOWLOCAL: not set", "off"));
    EXPECT_FALSE(p.policy.log_blocked);
    EXPECT_EQ(p.policy.action, BlockAction::Reject);
    EXPECT_EQ(mapped(p, "SMTP_ALLOWLOCAL")->line, 0);
    EXPECT_EQ(p.ignored, (std::vector<std::string>{"TCP_IN"}));
}

TEST(CsfPolicy, PortsLoseTheirWhitespaceAndTakeRangesAndServiceNames) {
    EXPECT_EQ(map_ok(with("SMTP_PORTS", "SMTP_PORTS = \" 25 , 5 87 \"")).policy.ports,
              (std::vector<std::uint16_t>{25, 587}));
    EXPECT_EQ(map_ok(with("SMTP_PORTS", "SMTP_PORTS = \"2525:2527,25,25\"")).policy.ports,
              (std::vector<std::uint16_t>{25, 2525, 2526, 2527}));
    EXPECT_EQ(map_ok(with("SMTP_PORTS", "SMTP_PORTS = \"smtp,submission,smtps\"")).policy.ports,
              (std::vector<std::uint16_t>{25, 465, 587}));
    EXPECT_EQ(map_ok(with("SMTP_PORTS", "SMTP_PORTS = \"25,,587,\"")).policy.ports,
              (std::vector<std::uint16_t>{25, 587}));
}

TEST(CsfPolicy, PortsCsfsIptablesRefusedAreErrorsWithTheLine) {
    EXPECT_EQ(map_error(with("SMTP_PORTS", "SMTP_PORTS = \"25,abc\"")),
              "csf.conf:4: SMTP_PORTS: bad value \"25,abc\": expected ports 1-65535 or ranges "
              "FIRST:LAST, comma-separated; \"abc\" is neither (CSF's iptables refused it too)");
    for (const char* bad : {"0", "65536", "30:20", "25:", ":25", "-1", "25;tcp"}) {
        EXPECT_NE(map_error(with("SMTP_PORTS", std::string("SMTP_PORTS = \"") + bad + "\""))
                      .find("csf.conf:4: SMTP_PORTS: bad value"),
                  std::string::npos)
            << bad;
    }
}

TEST(CsfPolicy, EmptyPortsEnforceNothing) {
    const CsfPolicy p = map_ok(with("SMTP_PORTS", "SMTP_PORTS = \" \""));
    EXPECT_FALSE(p.policy.enabled);
    EXPECT_TRUE(has_note(p, "csf.conf:4: SMTP_PORTS: empty", "nothing is enforced"));
}

TEST(CsfPolicy, AllowedNamesAsCsfSplitsThem) {
    const CsfPolicy p = map_ok(
        with("SMTP_ALLOWUSER", "SMTP_ALLOWUSER = \" bob , al ice ,1001,bad@name,,bob, cpanel\""));
    EXPECT_EQ(p.policy.allow_users, (std::vector<std::string>{"bob", "alice", "1001", "cpanel"}));
    EXPECT_TRUE(has_note(p, "csf.conf:5: SMTP_ALLOWUSER: \"al ice\" read as \"alice\"", ""));
    EXPECT_TRUE(has_note(p, "csf.conf:5: SMTP_ALLOWUSER: \"1001\" is taken as uid 1001", ""));
    EXPECT_TRUE(has_note(p, "csf.conf:5: SMTP_ALLOWUSER: \"bad@name\" is not a valid user name",
                         "skipped"));
    EXPECT_EQ(mapped(p, "SMTP_ALLOWUSER")->meaning, "users bob, alice, 1001, cpanel allowed");
}

TEST(CsfPolicy, GroupRootIsAllowedAlthoughCsfSkippedIt) {
    const CsfPolicy p = map_ok(with("SMTP_ALLOWGROUP", "SMTP_ALLOWGROUP = \"mail,root\""));
    EXPECT_EQ(p.policy.allow_groups, (std::vector<std::string>{"mail", "root"}));
    EXPECT_TRUE(has_note(p, "csf.conf:6: SMTP_ALLOWGROUP: \"root\": CSF skipped gid 0", ""));
}

TEST(CsfPolicy, Ipv6ZeroIsGuardedAllTheSameWithANote) {
    const CsfPolicy p = map_ok(with("IPV6", "IPV6 = \"0\""));
    EXPECT_TRUE(p.policy.enabled);
    EXPECT_EQ(mapped(p, "IPV6")->meaning, "IPv6 guarded all the same");
    EXPECT_EQ(messages(p), (std::vector<std::string>{
                               "csf.conf:7: IPV6: \"0\": CSF loaded no IPv6 rule, which left "
                               "SMTP over IPv6 open to every user; smtpfence guards IPv6 as "
                               "well"}));
}

TEST(CsfPolicy, RedirectAndItsInteractions) {
    const CsfPolicy p = map_ok(with("SMTP_REDIRECT", "SMTP_REDIRECT = \"1\""));
    EXPECT_TRUE(p.policy.redirect);
    EXPECT_TRUE(
        has_note(p, "csf.conf:3: SMTP_REDIRECT: redirected connections are not logged", ""));
    const CsfPolicy local = map_ok(with("SMTP_ALLOWLOCAL", "SMTP_ALLOWLOCAL = \"0\"",
                                        with("SMTP_REDIRECT", "SMTP_REDIRECT = \"1\"")));
    EXPECT_FALSE(local.policy.allow_local);
    EXPECT_TRUE(has_note(local, "csf.conf:3: SMTP_REDIRECT: with SMTP_REDIRECT on",
                         "whatever SMTP_ALLOWLOCAL says"));
}

TEST(CsfPolicy, DropOut) {
    EXPECT_EQ(map_ok(with("DROP_OUT", "DROP_OUT = \"DROP\"")).policy.action, BlockAction::Drop);
    const CsfPolicy lower = map_ok(with("DROP_OUT", "DROP_OUT = \"drop\""));
    EXPECT_EQ(lower.policy.action, BlockAction::Drop);
    EXPECT_TRUE(has_note(lower, "csf.conf:8: DROP_OUT: \"drop\" read as \"DROP\"", ""));
    EXPECT_EQ(map_error(with("DROP_OUT", "DROP_OUT = \"LOGDROP\"")),
              "csf.conf:8: DROP_OUT: bad value \"LOGDROP\": expected \"DROP\" or \"REJECT\" "
              "(the iptables targets CSF uses)");
}

TEST(CsfPolicy, LoggingNeedsDropLoggingAsInCsf) {
    const CsfPolicy off = map_ok(with("DROP_LOGGING", "DROP_LOGGING = \"0\""));
    EXPECT_FALSE(off.policy.log_blocked);
    EXPECT_TRUE(has_note(off, "csf.conf:", "DROP_OUT_LOGGING: on, but DROP_LOGGING is off"));
    const CsfPolicy no_uid = map_ok(with("DROP_UID_LOGGING", "DROP_UID_LOGGING = \"0\""));
    EXPECT_TRUE(no_uid.policy.log_blocked);
    EXPECT_FALSE(no_uid.policy.log_uid);
    const CsfPolicy no_out = map_ok(with("DROP_OUT_LOGGING", "DROP_OUT_LOGGING = \"0\""));
    EXPECT_FALSE(no_out.policy.log_blocked);
    EXPECT_TRUE(no_out.notes.empty());
}

TEST(CsfPolicy, LookalikeSettingsAreNamedNotUsed) {
    const CsfPolicy p = map_ok(kAllSet + "smtp_allowuser = \"bob\"\n\xef\xbb\xbfIPV6 = \"0\"\n");
    EXPECT_TRUE(p.policy.allow_users.empty());
    EXPECT_EQ(messages(p),
              (std::vector<std::string>{
                  "csf.conf:12: smtp_allowuser: is not SMTP_ALLOWUSER (names are exact and "
                  "case-sensitive); CSF ignored it, and so does smtpfence",
                  "csf.conf:13: \\xef\\xbb\\xbfIPV6: is not IPV6 (names are exact and "
                  "case-sensitive); CSF ignored it, and so does smtpfence"}));
}

TEST(CsfPolicy, ToLoadedPolicyCarriesEveryNote) {
    CsfPolicy p = map_ok(with("IPV6", "IPV6 = \"0\""));
    const std::vector<std::string> expected = messages(p);
    const LoadedPolicy loaded = to_loaded_policy(std::move(p));
    EXPECT_EQ(loaded.warnings, expected);
    EXPECT_TRUE(loaded.policy.enabled);
}

TEST(CsfPolicy, LoadNamesFileAndLine) {
    testing::TempDir dir;
    auto missing = load_csf_policy(dir.path() + "/csf.conf");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
    const std::string broken = dir.write("broken.conf", kAllSet + "SMTP_BLOCK = \"0\"\n");
    auto repeated = load_csf_policy(broken);
    ASSERT_FALSE(repeated);
    EXPECT_EQ(repeated.error().message(),
              broken + ":12: Setting SMTP_BLOCK is repeated (first set on line 1)");
}

// The full-size files of the corpus: only the SMTP settings are used, every other one
// is ignored without a word.
TEST(CsfPolicy, FullSizeGenericFile) {
    auto p = load_csf_policy(kCsfData + "/csf-generic.conf");
    ASSERT_TRUE(p) << p.error().message();
    EXPECT_TRUE(p->policy.enabled);
    EXPECT_EQ(p->policy.ports, (std::vector<std::uint16_t>{25, 465, 587}));
    EXPECT_EQ(p->policy.allow_users, (std::vector<std::string>{"postfix"}));
    EXPECT_EQ(p->policy.allow_groups, (std::vector<std::string>{"mail", "mailman", "postdrop"}));
    EXPECT_TRUE(p->policy.allow_local);
    EXPECT_FALSE(p->policy.redirect);
    EXPECT_EQ(p->policy.action, BlockAction::Drop);
    EXPECT_TRUE(p->policy.log_blocked);
    EXPECT_TRUE(p->policy.log_uid);
    EXPECT_EQ(p->ignored.size(), 402U - kSmtpKeys.size());
    EXPECT_EQ(
        messages(*p),
        (std::vector<std::string>{kCsfData + "/csf-generic.conf:126: IPV6: \"0\": CSF loaded no "
                                             "IPv6 rule, which left SMTP over IPv6 open to every "
                                             "user; smtpfence guards IPv6 as well"}));
}

TEST(CsfPolicy, FullSizeDirectAdminFile) {
    auto p = load_csf_policy(kCsfData + "/csf-directadmin.conf");
    ASSERT_TRUE(p) << p.error().message();
    EXPECT_TRUE(p->policy.enabled);
    EXPECT_EQ(p->policy.ports, (std::vector<std::uint16_t>{25, 465, 587}));
    EXPECT_TRUE(p->policy.allow_users.empty());
    EXPECT_EQ(p->policy.allow_groups, (std::vector<std::string>{"mail", "mailman"}));
    EXPECT_EQ(p->policy.action, BlockAction::Reject);
    EXPECT_TRUE(p->notes.empty()) << ::testing::PrintToString(messages(*p));
    EXPECT_EQ(p->ignored.size(), 411U - kSmtpKeys.size());
    EXPECT_NE(std::find(p->ignored.begin(), p->ignored.end(), "LF_DIRECTADMIN"), p->ignored.end());
}

// CSF mode over smtpfence.conf: csf.conf decides the SMTP settings, smtpfence.conf
// what only smtpfence has.
TEST(CsfMode, SmtpfenceConfGivesWhatCsfDoesNotHave) {
    testing::TempDir dir;
    const std::string csf = dir.write("csf.conf", with("IPV6", "IPV6 = \"0\""));
    const std::string own = dir.write("smtpfence.conf",
                                      "MTA_USERS = \"exim\"\n"
                                      "NFQUEUE_NUM = \"7\"\n"
                                      "SMTP_BLOCK = \"0\"\n"
                                      "DROP_OUT = \"DROP\"\n");
    auto loaded = load_csf_mode(csf, own, true);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_TRUE(loaded->policy.enabled);                    // csf.conf's SMTP_BLOCK
    EXPECT_EQ(loaded->policy.action, BlockAction::Reject);  // csf.conf's DROP_OUT
    EXPECT_EQ(loaded->policy.queue_num, 7U);                // smtpfence.conf's own
    EXPECT_EQ(loaded->policy.mta_users, (std::vector<std::string>{"exim"}));
    EXPECT_EQ(loaded->policy.source, csf);
    EXPECT_EQ(loaded->warnings,
              (std::vector<std::string>{
                  own + ":3: SMTP_BLOCK: ignored: with --csf-conf, " + csf + " decides it",
                  own + ":4: DROP_OUT: ignored: with --csf-conf, " + csf + " decides it",
                  csf + ":7: IPV6: \"0\": CSF loaded no IPv6 rule, which left SMTP over IPv6 "
                        "open to every user; smtpfence guards IPv6 as well"}));
}

TEST(CsfMode, MissingOrBrokenFiles) {
    testing::TempDir dir;
    const std::string csf = dir.write("csf.conf", kAllSet);
    auto without_own = load_csf_mode(csf, dir.path() + "/smtpfence.conf", false);
    ASSERT_TRUE(without_own) << without_own.error().message();
    EXPECT_TRUE(without_own->policy.enabled);
    EXPECT_TRUE(without_own->warnings.empty());

    auto own_required = load_csf_mode(csf, dir.path() + "/smtpfence.conf", true);
    ASSERT_FALSE(own_required);
    EXPECT_EQ(own_required.error().code, ENOENT);

    const std::string bad_own = dir.write("bad.conf", "NFQUEUE_NUM = 7\n");
    auto broken_own = load_csf_mode(csf, bad_own, false);
    ASSERT_FALSE(broken_own);
    EXPECT_EQ(broken_own.error().what, bad_own + ":1");

    auto no_csf = load_csf_mode(dir.path() + "/none.conf", dir.path() + "/smtpfence.conf", false);
    ASSERT_FALSE(no_csf);
    EXPECT_EQ(no_csf.error().code, ENOENT);
}

// smtpfence.conf knows the same three settings CSF mode maps.
TEST(SmtpfenceConf, RedirectAndLoggingSettings) {
    auto conf = conf::parse_conf(
        "SMTP_REDIRECT = \"1\"\nDROP_OUT_LOGGING = \"1\"\nDROP_UID_LOGGING = \"1\"\n", "s.conf");
    ASSERT_TRUE(conf);
    auto loaded = policy_from_conf(*conf);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_TRUE(loaded->policy.redirect);
    EXPECT_TRUE(loaded->policy.log_blocked);
    EXPECT_TRUE(loaded->policy.log_uid);
    const Policy defaults;
    EXPECT_FALSE(defaults.redirect);
    EXPECT_FALSE(defaults.log_blocked);
    EXPECT_FALSE(defaults.log_uid);
    auto bad = conf::parse_conf("SMTP_REDIRECT = \"yes\"\n", "s.conf");
    ASSERT_TRUE(bad);
    auto refused = policy_from_conf(*bad);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().message(),
              "s.conf:1: SMTP_REDIRECT: bad value \"yes\": expected \"0\" or \"1\"");
}

}  // namespace
}  // namespace smtpfence::csf
