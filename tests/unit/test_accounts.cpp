#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>

#include "policy/accounts.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using testing::TempDir;

const char* const kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "mail:x:8:12:mail:/var/spool/mail:/sbin/nologin\n"
    "admin:x:1000:1000:Admin User:/home/admin:/bin/bash\n"
    "bob:x:1001:1001::/home/bob:/bin/bash\n";

const char* const kGroup =
    "root:x:0:\n"
    "mail:x:12:mail,bob\n"
    "admin:x:1000:\n"
    "bob:x:1001:\n";

bool has_warning(const AccountDb& db, const std::string& start) {
    for (const std::string& w : db.warnings()) {
        if (w.rfind(start, 0) == 0)
            return true;
    }
    return false;
}

std::string all_warnings(const AccountDb& db) {
    std::string out;
    for (const std::string& w : db.warnings())
        out += w + "\n";
    return out;
}

TEST(AccountDb, ParsesPasswdAndGroup) {
    const AccountDb db = AccountDb::parse(kPasswd, kGroup);
    EXPECT_TRUE(db.warnings().empty()) << all_warnings(db);
    ASSERT_EQ(db.accounts().size(), 4U);
    const Account* admin = db.user("admin");
    ASSERT_NE(admin, nullptr);
    EXPECT_EQ(admin->name, "admin");
    EXPECT_EQ(admin->uid, 1000U);
    EXPECT_EQ(admin->gid, 1000U);
    EXPECT_EQ(admin->home, "/home/admin");
    ASSERT_NE(db.user_by_uid(8), nullptr);
    EXPECT_EQ(db.user_by_uid(8)->name, "mail");
    EXPECT_EQ(db.user("nobody"), nullptr);
    EXPECT_EQ(db.user_by_uid(4242), nullptr);

    const GroupEntry* mail = db.group("mail");
    ASSERT_NE(mail, nullptr);
    EXPECT_EQ(mail->gid, 12U);
    EXPECT_EQ(mail->members, (std::vector<std::string>{"mail", "bob"}));
    ASSERT_NE(db.group_by_gid(1000), nullptr);
    EXPECT_EQ(db.group_by_gid(1000)->name, "admin");
    EXPECT_TRUE(db.group("root")->members.empty());
    EXPECT_EQ(db.group("wheel"), nullptr);
    EXPECT_EQ(db.group_by_gid(4242), nullptr);
}

TEST(AccountDb, LookupsAreCaseSensitive) {
    const AccountDb db = AccountDb::parse(kPasswd, kGroup);
    EXPECT_EQ(db.user("Admin"), nullptr);
    EXPECT_EQ(db.group("MAIL"), nullptr);
}

TEST(AccountDb, EmptyFiles) {
    const AccountDb db = AccountDb::parse("", "");
    EXPECT_TRUE(db.accounts().empty());
    EXPECT_TRUE(db.warnings().empty());
    EXPECT_TRUE(db.uids_in_group(0).empty());
}

TEST(AccountDb, SkipsCommentsBlankAndNisLinesSilently) {
    const AccountDb db = AccountDb::parse(
        "# the passwd file\n"
        "\n"
        "   \n"
        "root:x:0:0:root:/root:/bin/bash\n"
        "  # indented comment\n"
        "+@netgroup::::::\n"
        "-baduser::::::\n"
        "+\n"
        "bob:x:1001:1001::/home/bob:/bin/sh",  // no newline at the end
        "# groups\n+:::\n-wheel:::\nusers:x:100:bob\n");
    EXPECT_TRUE(db.warnings().empty()) << all_warnings(db);
    EXPECT_EQ(db.accounts().size(), 2U);
    ASSERT_NE(db.user("bob"), nullptr);
    EXPECT_EQ(db.user("bob")->uid, 1001U);
    EXPECT_EQ(db.user("+@netgroup"), nullptr);
    ASSERT_NE(db.group("users"), nullptr);
    EXPECT_EQ(db.group("-wheel"), nullptr);
}

TEST(AccountDb, LeadingBlanksBeforeAnEntryAreSkippedAsGlibcDoes) {
    const AccountDb db = AccountDb::parse("  \tbob:x:1001:1001::/home/bob:/bin/sh\n", "");
    ASSERT_NE(db.user("bob"), nullptr);
}

TEST(AccountDb, WrongFieldCountIsSkippedWithWarning) {
    const AccountDb db = AccountDb::parse(
        "root:x:0:0:root:/root:/bin/bash\n"
        "short:$6$secrethash:1002:1002\n"
        "long:x:1003:1003:gecos:/home/long:/bin/sh:extra\n"
        "::1004:1004:::\n"
        "alice:x:1005:1005::/home/alice:/bin/sh\n",
        "mail:x:12\n"
        "users:x:100:a:b\n"
        ":x:5:\n"
        "ok:x:7:\n");
    EXPECT_EQ(db.accounts().size(), 2U);
    EXPECT_EQ(db.user("short"), nullptr);
    EXPECT_EQ(db.user("long"), nullptr);
    EXPECT_EQ(db.user_by_uid(1004), nullptr);
    ASSERT_NE(db.user("alice"), nullptr);
    EXPECT_EQ(db.group("mail"), nullptr);
    EXPECT_EQ(db.group("users"), nullptr);
    EXPECT_EQ(db.group_by_gid(5), nullptr);
    ASSERT_NE(db.group("ok"), nullptr);

    ASSERT_EQ(db.warnings().size(), 6U) << all_warnings(db);
    EXPECT_EQ(db.warnings()[0],
              "passwd:2: malformed passwd entry \"short\" (4 fields, expected 7: "
              "name:password:uid:gid:gecos:home:shell); skipped");
    EXPECT_TRUE(has_warning(db, "passwd:3: malformed passwd entry \"long\" (8 fields"));
    EXPECT_TRUE(has_warning(db, "passwd:4: malformed passwd entry (empty name); skipped"));
    EXPECT_TRUE(has_warning(db, "group:1: malformed group entry \"mail\" (3 fields"));
    EXPECT_TRUE(has_warning(db, "group:2: malformed group entry \"users\" (5 fields"));
    EXPECT_TRUE(has_warning(db, "group:3: malformed group entry (empty name)"));
    // The password field never reaches a log.
    EXPECT_EQ(all_warnings(db).find("secrethash"), std::string::npos);
}

TEST(AccountDb, BadIdsAreSkippedWithWarning) {
    const AccountDb db = AccountDb::parse(
        "a:x:abc:100::/:/bin/sh\n"
        "b:x:-1:100::/:/bin/sh\n"
        "c:x:4294967295:100::/:/bin/sh\n"
        "d:x:99999999999999999999:100::/:/bin/sh\n"
        "e:x::100::/:/bin/sh\n"
        "f:x:1:1x::/:/bin/sh\n"
        "g:x: 7:100::/:/bin/sh\n"
        "h:x:4294967294:4294967294::/:/bin/sh\n"
        "i:x:007:0100::/:/bin/sh\n",
        "g1:x:x12:\n"
        "g2:x:4294967295:\n"
        "g3:x:4294967294:\n");
    EXPECT_EQ(db.accounts().size(), 2U);
    ASSERT_NE(db.user("h"), nullptr);
    EXPECT_EQ(db.user("h")->uid, 4294967294U);
    ASSERT_NE(db.user("i"), nullptr);
    EXPECT_EQ(db.user("i")->uid, 7U);
    EXPECT_EQ(db.user("i")->gid, 100U);
    ASSERT_EQ(db.warnings().size(), 9U) << all_warnings(db);
    EXPECT_EQ(db.warnings()[0],
              "passwd:1: user \"a\": uid \"abc\" is not a number from 0 to 4294967294; skipped");
    EXPECT_TRUE(has_warning(db, "passwd:2: user \"b\": uid \"-1\""));
    EXPECT_TRUE(has_warning(db, "passwd:3: user \"c\": uid \"4294967295\""));
    EXPECT_TRUE(has_warning(db, "passwd:4: user \"d\": uid"));
    EXPECT_TRUE(has_warning(db, "passwd:5: user \"e\": uid \"\""));
    EXPECT_TRUE(has_warning(db, "passwd:6: user \"f\": gid \"1x\""));
    EXPECT_TRUE(has_warning(db, "passwd:7: user \"g\": uid \" 7\""));
    EXPECT_EQ(db.warnings()[7],
              "group:1: group \"g1\": gid \"x12\" is not a number from 0 to 4294967294; skipped");
    EXPECT_TRUE(has_warning(db, "group:2: group \"g2\": gid \"4294967295\""));
    ASSERT_NE(db.group("g3"), nullptr);
}

TEST(AccountDb, FirstEntryOfANameWins) {
    const AccountDb db = AccountDb::parse(
        "bob:x:1001:1001::/home/bob:/bin/sh\n"
        "bob:x:2001:2001::/home/bob2:/bin/sh\n",
        "staff:x:50:bob\n"
        "staff:x:60:\n");
    ASSERT_NE(db.user("bob"), nullptr);
    EXPECT_EQ(db.user("bob")->uid, 1001U);
    // The second line is still an account for its uid, as getpwuid(2001) finds it.
    ASSERT_NE(db.user_by_uid(2001), nullptr);
    EXPECT_EQ(db.user_by_uid(2001)->home, "/home/bob2");
    EXPECT_EQ(db.group("staff")->gid, 50U);
    ASSERT_EQ(db.warnings().size(), 2U) << all_warnings(db);
    EXPECT_EQ(db.warnings()[0],
              "passwd:2: user \"bob\" repeated (first on line 1); lookups by name use the first");
    EXPECT_EQ(db.warnings()[1],
              "group:2: group \"staff\" repeated (first on line 1); lookups by name use the first");
}

TEST(AccountDb, MemberListsAreTrimmedAndEmptyItemsDropped) {
    const AccountDb db = AccountDb::parse("", "mail:x:12: a , b,,c,\n");
    ASSERT_NE(db.group("mail"), nullptr);
    EXPECT_EQ(db.group("mail")->members, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(AccountDb, UidsInGroupJoinsPrimaryAndSupplementaryMembers) {
    const AccountDb db = AccountDb::parse(
        "mail:x:8:12::/:/sbin/nologin\n"
        "carol:x:1002:12::/home/carol:/bin/sh\n"
        "dave:x:1003:1003::/home/dave:/bin/sh\n"
        "bob:x:1001:1001::/home/bob:/bin/sh\n"
        "erin:x:1004:1004::/home/erin:/bin/sh\n",
        "mail:x:12:dave,ghost,bob,mail,dave\n"
        "mail2:x:12:erin\n"
        "other:x:13:carol\n");
    EXPECT_EQ(db.uids_in_group(12), (std::vector<std::uint32_t>{8, 1001, 1002, 1003, 1004}));
    EXPECT_EQ(db.uids_in_group(13), (std::vector<std::uint32_t>{1002}));
    EXPECT_EQ(db.uids_in_group(1003), (std::vector<std::uint32_t>{1003}));
    EXPECT_TRUE(db.uids_in_group(999).empty());
}

TEST(AccountDb, UidsInGroupWithoutAGroupEntry) {
    // A primary gid with no line in /etc/group still groups its accounts.
    const AccountDb db = AccountDb::parse(
        "x:x:2001:3000::/:/bin/sh\n"
        "y:x:2000:3000::/:/bin/sh\n",
        "");
    EXPECT_EQ(db.uids_in_group(3000), (std::vector<std::uint32_t>{2000, 2001}));
}

TEST(AccountDb, LoadReadsFilesAndNamesThemInWarnings) {
    TempDir dir;
    const std::string passwd = dir.write("passwd", std::string(kPasswd) + "broken\n");
    const std::string group = dir.write("group", kGroup);
    auto db = AccountDb::load(passwd, group);
    ASSERT_TRUE(db) << db.error().message();
    EXPECT_EQ(db->accounts().size(), 4U);
    ASSERT_NE(db->group("mail"), nullptr);
    ASSERT_EQ(db->warnings().size(), 1U);
    EXPECT_EQ(db->warnings()[0].rfind(passwd + ":5: malformed passwd entry \"broken\"", 0), 0U)
        << db->warnings()[0];
}

TEST(AccountDb, LoadFailsWhenAFileCannotBeRead) {
    TempDir dir;
    const std::string passwd = dir.write("passwd", kPasswd);
    const std::string group = dir.write("group", kGroup);
    auto no_passwd = AccountDb::load(dir.path() + "/missing", group);
    ASSERT_FALSE(no_passwd);
    EXPECT_EQ(no_passwd.error().code, ENOENT);
    EXPECT_EQ(no_passwd.error().what, dir.path() + "/missing");
    auto no_group = AccountDb::load(passwd, dir.path() + "/missing");
    ASSERT_FALSE(no_group);
    EXPECT_EQ(no_group.error().what, dir.path() + "/missing");
    auto dir_group = AccountDb::load(passwd, dir.path());
    ASSERT_FALSE(dir_group);
    EXPECT_EQ(dir_group.error().code, EISDIR);
}

TEST(AccountDb, GarbageDoesNotCrash) {
    std::string garbage;
    for (int i = 0; i < 4096; ++i)
        garbage.push_back(static_cast<char>((i * 131 + 7) & 0xff));
    const AccountDb db = AccountDb::parse(garbage, garbage);
    for (const std::string& w : db.warnings()) {
        for (const char c : w) {
            EXPECT_TRUE(c >= 0x20 && c < 0x7f) << w;
        }
    }
}

}  // namespace
}  // namespace smtpfence
