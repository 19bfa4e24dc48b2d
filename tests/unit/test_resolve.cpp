#include <gtest/gtest.h>

#include <string>

#include "policy/resolve.h"

namespace smtpfence {
namespace {

// A DirectAdmin-like server: Exim runs as mail (uid 8, group mail 12); carol's primary
// group is mail; dave is a supplementary member of mail; bob of webmasters.
const char* const kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "mail:x:8:12:mail:/var/spool/mail:/sbin/nologin\n"
    "postfix:x:89:89::/var/spool/postfix:/sbin/nologin\n"
    "admin:x:1000:1000::/home/admin:/bin/bash\n"
    "bob:x:1001:1001::/home/bob:/bin/bash\n"
    "carol:x:1002:12::/home/carol:/bin/bash\n"
    "dave:x:1003:1003::/home/dave:/bin/bash\n"
    "erin:x:1004:3000::/home/erin:/bin/bash\n";

const char* const kGroup =
    "root:x:0:\n"
    "mail:x:12:mail,dave,ghost\n"
    "postfix:x:89:\n"
    "mailman:x:41:\n"
    "admin:x:1000:\n"
    "webmasters:x:2000:bob\n";

const AccountDb& db() {
    static const AccountDb accounts = AccountDb::parse(kPasswd, kGroup);
    return accounts;
}

Policy nothing_allowed() {
    Policy p;
    p.allow_users.clear();
    p.allow_groups.clear();
    p.allow_groups_default = false;
    p.mta_users.clear();
    p.mta_users_auto = false;
    return p;
}

TEST(Resolve, RootIsAlwaysAllowed) {
    const Allowlist a = resolve_allowlist(nothing_allowed(), AccountDb::parse("", ""));
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0}));
    EXPECT_TRUE(a.gids.empty());
    EXPECT_EQ(a.uid_reasons.at(0), "root (always allowed)");
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, DefaultPolicy) {
    const Allowlist a = resolve_allowlist(Policy{}, db());
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 8, 89, 1002, 1003}));
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{12, 41}));
    EXPECT_EQ(a.uid_reasons.at(0), "root (always allowed)");
    // mail is an MTA user and a member of mail: the MTA reason stays.
    EXPECT_EQ(a.uid_reasons.at(8), "MTA user mail");
    EXPECT_EQ(a.uid_reasons.at(89), "MTA user postfix");
    EXPECT_EQ(a.uid_reasons.at(1002), "member of allowed group mail");
    EXPECT_EQ(a.uid_reasons.at(1003), "member of allowed group mail");
    EXPECT_EQ(a.gid_reasons.at(12), "SMTP_ALLOWGROUP mail");
    EXPECT_EQ(a.gid_reasons.at(41), "SMTP_ALLOWGROUP mailman");
    EXPECT_EQ(a.uid_reasons.size(), a.uids.size());
    EXPECT_EQ(a.gid_reasons.size(), a.gids.size());
    // Debian-exim, mailnull and exim are missing, but the auto list never warns.
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, ExplicitMtaUsersWarnWhenMissing) {
    Policy p = nothing_allowed();
    p.mta_users = {"exim", "mail", "89"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 8, 89}));
    EXPECT_EQ(a.uid_reasons.at(8), "MTA user mail");
    EXPECT_EQ(a.uid_reasons.at(89), "MTA user uid 89");
    ASSERT_EQ(a.warnings.size(), 1U);
    EXPECT_EQ(a.warnings[0],
              "MTA_USERS: unknown user \"exim\" (skipped; it will be resolved again when "
              "/etc/passwd changes)");
}

TEST(Resolve, AllowUsersByNameAndNumber) {
    Policy p = nothing_allowed();
    p.allow_users = {"admin", "5000", "1001", "nobody_here"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1000, 1001, 5000}));
    EXPECT_EQ(a.uid_reasons.at(1000), "SMTP_ALLOWUSER admin");
    EXPECT_EQ(a.uid_reasons.at(5000), "SMTP_ALLOWUSER uid 5000");  // no account needed
    EXPECT_EQ(a.uid_reasons.at(1001), "SMTP_ALLOWUSER uid 1001");
    ASSERT_EQ(a.warnings.size(), 1U);
    EXPECT_EQ(a.warnings[0],
              "SMTP_ALLOWUSER: unknown user \"nobody_here\" (skipped; it will be resolved again "
              "when /etc/passwd changes)");
}

TEST(Resolve, RootListedAgainKeepsItsReason) {
    Policy p = nothing_allowed();
    p.allow_users = {"root", "0"};
    p.allow_groups = {"root"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0}));
    EXPECT_EQ(a.uid_reasons.at(0), "root (always allowed)");
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{0}));
}

TEST(Resolve, NamedUserReasonIsNotOverwrittenByGroup) {
    Policy p = nothing_allowed();
    p.allow_users = {"carol"};
    p.allow_groups = {"mail"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.uid_reasons.at(1002), "SMTP_ALLOWUSER carol");
    EXPECT_EQ(a.uid_reasons.at(1003), "member of allowed group mail");
    // uid 8 is in the group as its primary and as a listed member, once.
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 8, 1002, 1003}));
    EXPECT_EQ(a.uid_reasons.at(8), "member of allowed group mail");
}

TEST(Resolve, SupplementaryMembersAreAllowedByUid) {
    Policy p = nothing_allowed();
    p.allow_groups = {"webmasters"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{2000}));
    EXPECT_EQ(a.gid_reasons.at(2000), "SMTP_ALLOWGROUP webmasters");
    // bob's primary group is 1001: meta skgid would never match him, so his uid is added.
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1001}));
    EXPECT_EQ(a.uid_reasons.at(1001), "member of allowed group webmasters");
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, NumericGroups) {
    Policy p = nothing_allowed();
    p.allow_groups = {"2000", "3000", "4000"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{2000, 3000, 4000}));
    EXPECT_EQ(a.gid_reasons.at(2000), "SMTP_ALLOWGROUP gid 2000");
    EXPECT_EQ(a.gid_reasons.at(3000), "SMTP_ALLOWGROUP gid 3000");
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1001, 1004}));
    EXPECT_EQ(a.uid_reasons.at(1001), "member of allowed group webmasters");
    // erin's primary gid 3000 has no group entry.
    EXPECT_EQ(a.uid_reasons.at(1004), "member of allowed group gid 3000");
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, UnknownGroupIsAWarning) {
    Policy p = nothing_allowed();
    p.allow_groups = {"mailman", "nogroup_here"};
    const Allowlist a = resolve_allowlist(p, db());
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{41}));
    ASSERT_EQ(a.warnings.size(), 1U);
    EXPECT_EQ(a.warnings[0],
              "SMTP_ALLOWGROUP: unknown group \"nogroup_here\" (skipped; it will be resolved "
              "again when /etc/group changes)");
}

TEST(Resolve, DefaultPolicyOnABareSystem) {
    const Allowlist a =
        resolve_allowlist(Policy{}, AccountDb::parse("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n"));
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0}));
    EXPECT_TRUE(a.gids.empty());
    // The built-in groups are a default, not the admin's words: their absence is no news.
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, ConfiguredGroupsThatDoNotExistAreWarnedAbout) {
    Policy p;
    p.allow_groups_default = false;  // as when SMTP_ALLOWGROUP is in the config
    const Allowlist a =
        resolve_allowlist(p, AccountDb::parse("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n"));
    ASSERT_EQ(a.warnings.size(), 2U);
    EXPECT_NE(a.warnings[0].find("unknown group \"mail\""), std::string::npos);
    EXPECT_NE(a.warnings[1].find("unknown group \"mailman\""), std::string::npos);
}

TEST(Resolve, NamesInWarningsAreEscaped) {
    Policy p = nothing_allowed();
    p.allow_users = {std::string("x\x1b[2Jy")};
    const Allowlist a = resolve_allowlist(p, db());
    ASSERT_EQ(a.warnings.size(), 1U);
    EXPECT_NE(a.warnings[0].find("\"x\\x1b[2Jy\""), std::string::npos) << a.warnings[0];
}

// The whole path: a config file's names through a passwd/group pair.
TEST(Resolve, FromConfigText) {
    auto conf = conf::parse_conf(
        "SMTP_ALLOWUSER = \"admin,4242\"\nSMTP_ALLOWGROUP = \"webmasters\"\nMTA_USERS = "
        "\"postfix\"\n",
        "smtpfence.conf");
    ASSERT_TRUE(conf) << conf.error().message();
    auto loaded = policy_from_conf(*conf);
    ASSERT_TRUE(loaded) << loaded.error().message();
    const Allowlist a = resolve_allowlist(loaded->policy, db());
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 89, 1000, 1001, 4242}));
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{2000}));
    EXPECT_TRUE(a.warnings.empty());
}

// The names added with `smtpfencectl allow`.
TEST(Resolve, ManagedUsersAndGroupsAreAllowed) {
    ManagedAllow managed;
    managed.users = {"admin", "4242"};
    managed.groups = {"webmasters", "3000"};
    const Allowlist a = resolve_allowlist(nothing_allowed(), db(), managed);
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1000, 1001, 1004, 4242}));
    EXPECT_EQ(a.gids, (std::set<std::uint32_t>{2000, 3000}));
    EXPECT_EQ(a.uid_reasons.at(1000), "smtpfencectl allow admin");
    EXPECT_EQ(a.uid_reasons.at(4242), "smtpfencectl allow uid 4242");
    EXPECT_EQ(a.uid_reasons.at(1001), "member of allowed group webmasters");
    EXPECT_EQ(a.uid_reasons.at(1004), "member of allowed group gid 3000");
    EXPECT_EQ(a.gid_reasons.at(2000), "smtpfencectl allow --group webmasters");
    EXPECT_EQ(a.gid_reasons.at(3000), "smtpfencectl allow --group gid 3000");
    EXPECT_TRUE(a.warnings.empty());
}

TEST(Resolve, TheConfigFilesReasonComesFirst) {
    Policy p = nothing_allowed();
    p.allow_users = {"admin"};
    p.allow_groups = {"webmasters"};
    ManagedAllow managed;
    managed.users = {"admin", "bob"};
    managed.groups = {"webmasters"};
    const Allowlist a = resolve_allowlist(p, db(), managed);
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1000, 1001}));
    EXPECT_EQ(a.uid_reasons.at(1000), "SMTP_ALLOWUSER admin");
    // Named by the admin with smtpfencectl: that is more specific than group membership.
    EXPECT_EQ(a.uid_reasons.at(1001), "smtpfencectl allow bob");
    EXPECT_EQ(a.gid_reasons.at(2000), "SMTP_ALLOWGROUP webmasters");
}

TEST(Resolve, UnknownManagedNamesAreWarningsNotErrors) {
    Policy p = nothing_allowed();
    p.allow_groups_default = true;  // quiet about the default groups, never about managed ones
    ManagedAllow managed;
    managed.users = {"ghost", "admin"};
    managed.groups = {"nogroup_here"};
    const Allowlist a = resolve_allowlist(p, db(), managed);
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0, 1000}));
    EXPECT_TRUE(a.gids.empty());
    ASSERT_EQ(a.warnings.size(), 2U);
    EXPECT_EQ(a.warnings[0],
              "smtpfencectl allow: unknown user \"ghost\" (skipped; it will be resolved again "
              "when /etc/passwd changes)");
    EXPECT_EQ(a.warnings[1],
              "smtpfencectl allow --group: unknown group \"nogroup_here\" (skipped; it will be "
              "resolved again when /etc/group changes)");
}

// alice was allowed, then deleted; useradd gave her uid (and gid) to mallory. The list
// holds names, so mallory is not allowed by alice's entry.
TEST(Resolve, AReusedUidIsNotAllowedByTheOldName) {
    ManagedAllow managed;
    managed.users = {"alice"};
    managed.groups = {"alicegrp"};

    const AccountDb before =
        AccountDb::parse("root:x:0:0::/root:/bin/sh\nalice:x:1005:1005::/home/alice:/bin/sh\n",
                         "root:x:0:\nalicegrp:x:1005:\n");
    const Allowlist was = resolve_allowlist(nothing_allowed(), before, managed);
    EXPECT_EQ(was.uids, (std::set<std::uint32_t>{0, 1005}));
    EXPECT_EQ(was.uid_reasons.at(1005), "smtpfencectl allow alice");
    EXPECT_EQ(was.gids, (std::set<std::uint32_t>{1005}));

    const AccountDb after =
        AccountDb::parse("root:x:0:0::/root:/bin/sh\nmallory:x:1005:1005::/home/mallory:/bin/sh\n",
                         "root:x:0:\nmallory:x:1005:\n");
    const Allowlist now = resolve_allowlist(nothing_allowed(), after, managed);
    EXPECT_EQ(now.uids, (std::set<std::uint32_t>{0}));
    EXPECT_TRUE(now.gids.empty());
    EXPECT_FALSE(now.uid_reasons.contains(1005));
    ASSERT_EQ(now.warnings.size(), 2U);
    EXPECT_EQ(now.warnings[0],
              "smtpfencectl allow: unknown user \"alice\" (skipped; it will be resolved again "
              "when /etc/passwd changes)");
    EXPECT_EQ(now.warnings[1],
              "smtpfencectl allow --group: unknown group \"alicegrp\" (skipped; it will be "
              "resolved again when /etc/group changes)");
}

TEST(Resolve, ManagedListDefaultsToEmpty) {
    const Allowlist a = resolve_allowlist(nothing_allowed(), db());
    const Allowlist b = resolve_allowlist(nothing_allowed(), db(), ManagedAllow{});
    EXPECT_EQ(a.uids, b.uids);
    EXPECT_EQ(a.uids, (std::set<std::uint32_t>{0}));
    EXPECT_TRUE(b.warnings.empty());
}

}  // namespace
}  // namespace smtpfence
