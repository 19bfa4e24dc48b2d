#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "nfq/process.h"
#include "policy/accounts.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::nfq {
namespace {

const char* const kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "bin:x:2:2:bin:/:/usr/sbin/nologin\n"
    "apache:x:48:48:Apache:/var/www:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    "webapps:x:497:497::/var/www/html/webapps:/bin/false\n"
    "ghost:x:499:499:::/bin/false\n"
    "al:x:1000:1000::/home/al:/bin/bash\n"
    "alice:x:1001:1001::/home/alice:/bin/bash\n"
    "bob:x:1002:1002::/home/bob/:/bin/bash\n"
    "carol:x:1003:1003::/home/bob/sites:/bin/bash\n"
    "dave:x:1004:1004::/home/dave:/bin/bash\n"
    "dave2:x:1005:1005::/home/dave:/bin/bash\n"
    "this line is malformed\n"
    "erin:x:1006:1006::relative/home:/bin/bash\n";

const char* const kGroup =
    "root:x:0:\n"
    "apache:x:48:\n";

class Attribution : public ::testing::Test {
  protected:
    AccountDb db = AccountDb::parse(kPasswd, kGroup);

    std::string who(std::uint32_t uid, const std::string& cwd) const {
        return attribute_account(uid, cwd, db, kDefaultWebUsers);
    }
};

TEST_F(Attribution, OrdinaryUidIsItsOwnAccountWhateverTheCwd) {
    EXPECT_EQ(who(1001, "/home/alice/domains/example.com/public_html"), "alice");
    EXPECT_EQ(who(1001, "/home/bob/public_html"), "alice");
    EXPECT_EQ(who(1001, "/tmp"), "alice");
    EXPECT_EQ(who(1001, ""), "alice");
    EXPECT_EQ(who(0, "/home/alice"), "root");
}

TEST_F(Attribution, UidWithoutAccountIsUnknown) {
    EXPECT_EQ(who(4242, "/home/alice/domains/example.com"), "unknown");
    EXPECT_EQ(who(4294967294U, "/"), "unknown");
}

TEST_F(Attribution, WebServerUidIsBilledByWorkingDirectory) {
    for (const std::uint32_t web : {48U, 65534U, 33U, 497U}) {
        EXPECT_EQ(who(web, "/home/alice/domains/example.com/public_html"), "alice") << web;
        EXPECT_EQ(who(web, "/home/alice"), "alice") << web;
        EXPECT_EQ(who(web, "/home/alice/"), "alice") << web;
    }
}

TEST_F(Attribution, HomeMatchesOnlyOnAPathBoundary) {
    EXPECT_EQ(who(48, "/home/alice/x"), "alice");  // not al
    EXPECT_EQ(who(48, "/home/al/x"), "al");
    EXPECT_EQ(who(48, "/home/al"), "al");
    EXPECT_EQ(who(48, "/home/alfred/x"), "unknown");
    EXPECT_EQ(who(48, "/home/alice2"), "unknown");
    EXPECT_EQ(who(48, "/home"), "unknown");
}

TEST_F(Attribution, LongestHomeWins) {
    // bob's home has a trailing slash; carol's lies inside it.
    EXPECT_EQ(who(48, "/home/bob/public_html"), "bob");
    EXPECT_EQ(who(48, "/home/bob"), "bob");
    EXPECT_EQ(who(48, "/home/bob/sites/shop/wp-content"), "carol");
    EXPECT_EQ(who(48, "/home/bob/sites"), "carol");
    EXPECT_EQ(who(48, "/home/bob/sitesX"), "bob");
}

TEST_F(Attribution, SameHomeTwiceFirstEntryWins) {
    EXPECT_EQ(who(48, "/home/dave/public_html"), "dave");
}

TEST_F(Attribution, UselessHomesAreSkipped) {
    // bin's "/" would hold every path, nobody's "/nonexistent" and ghost's "" nothing,
    // erin's relative home no absolute path.
    EXPECT_EQ(who(48, "/tmp"), "unknown");
    EXPECT_EQ(who(48, "/nonexistent"), "unknown");
    EXPECT_EQ(who(48, "/nonexistent/x"), "unknown");
    EXPECT_EQ(who(48, "relative/home/x"), "unknown");
    EXPECT_EQ(who(48, ""), "unknown");
    EXPECT_EQ(who(48, "/"), "unknown");
}

TEST_F(Attribution, WebServerHomesSayNothingAboutTheCustomer) {
    EXPECT_EQ(who(48, "/var/www/html"), "unknown");
    EXPECT_EQ(who(33, "/var/www/html/webapps/app"), "unknown");
}

TEST_F(Attribution, WebUserListIsAParameter) {
    EXPECT_EQ(attribute_account(48, "/home/alice/x", db, {}), "apache");
    EXPECT_EQ(attribute_account(1002, "/home/alice/x", db, {"bob"}), "alice");
    EXPECT_EQ(attribute_account(1002, "/home/bob/x", db, {"bob"}), "unknown");
    // The listed web users' own homes are skipped: /var/www is apache's and
    // www-data's, and neither is a web user here.
    EXPECT_EQ(attribute_account(65534, "/var/www/html", db, {"nobody"}), "apache");
}

TEST_F(Attribution, MalformedPasswdLinesDoNotMatter) {
    EXPECT_FALSE(db.warnings().empty());
    EXPECT_EQ(who(1006, "/anything"), "erin");
}

TEST(AttributionDuplicates, FirstEntryOfAUidNamesIt) {
    const AccountDb db = AccountDb::parse(
        "apache:x:48:48::/var/www:/sbin/nologin\n"
        "httpd:x:48:48::/srv/httpd:/sbin/nologin\n"
        "zed:x:2000:2000::/srv/httpd/zed:/bin/sh\n",
        "");
    EXPECT_EQ(attribute_account(48, "/srv/httpd/zed/x", db, kDefaultWebUsers), "zed");
    EXPECT_EQ(attribute_account(48, "/srv/httpd/other", db, kDefaultWebUsers), "httpd");
    EXPECT_EQ(attribute_account(48, "/srv/httpd/other", db, {"apache", "httpd"}), "unknown");
}

// ---------------------------------------------------------------------------------------
// find_process / read_process against a made-up /proc: directories and symlinks shaped
// like the kernel's (readlink of a /proc/PID/fd entry gives "socket:[INODE]").

class FakeProc : public ::testing::Test {
  protected:
    void SetUp() override {
        // As root, /proc/PID of a blocked user is not ours: give it to a made-up uid.
        owner_ = ::geteuid() == 0 ? 4243 : ::geteuid();
    }

    void add_process(int pid, const std::vector<std::pair<std::string, std::string>>& fds,
                     const std::string& exe, const std::string& cwd, const std::string& cmdline) {
        const std::filesystem::path dir = root_ / std::to_string(pid);
        std::filesystem::create_directories(dir / "fd");
        for (const auto& [fd, target] : fds)
            std::filesystem::create_symlink(target, dir / "fd" / fd);
        if (!exe.empty())
            std::filesystem::create_symlink(exe, dir / "exe");
        if (!cwd.empty())
            std::filesystem::create_symlink(cwd, dir / "cwd");
        std::ofstream(dir / "cmdline", std::ios::binary) << cmdline;
        if (::geteuid() == 0) {
            ASSERT_EQ(::chown(dir.c_str(), owner_, owner_), 0);
        }
    }

    [[nodiscard]] std::string proc() const { return root_.string(); }

    testing::TempDir dir_;
    std::filesystem::path root_ = dir_.path();
    std::uint32_t owner_ = 0;
};

using namespace std::string_literals;

TEST_F(FakeProc, FindsTheHolderOfTheSocket) {
    add_process(100, {{"0", "/dev/null"}, {"1", "socket:[777]"}}, "/usr/sbin/php-fpm", "/",
                "php-fpm: pool www\0"s);
    add_process(
        123,
        {{"0", "/dev/null"}, {"3", "pipe:[777]"}, {"4", "socket:[7777]"}, {"5", "socket:[777]"}},
        "/usr/bin/php8.2", "/home/alice/domains/example.com/public_html",
        "php\0-f\0/home/alice/mailer.php\0"s);
    // Things that are not processes: a symlink like /proc/self, names with other
    // characters, a leading zero.
    std::filesystem::create_directories(root_ / "sys");
    std::filesystem::create_symlink("123", root_ / "self");
    std::filesystem::create_directories(root_ / "12a" / "fd");
    std::filesystem::create_directories(root_ / "0123" / "fd");

    const auto found = find_process(7777, owner_, proc());
    ASSERT_TRUE(found);
    EXPECT_EQ(found->pid, 123);
    EXPECT_EQ(found->exe, "/usr/bin/php8.2");
    EXPECT_EQ(found->cwd, "/home/alice/domains/example.com/public_html");
    EXPECT_EQ(found->cmdline, "php -f /home/alice/mailer.php");
    EXPECT_FALSE(found->truncated_cmdline);

    // "socket:[777]" is held by two processes: either is an honest answer.
    const auto either = find_process(777, owner_, proc());
    ASSERT_TRUE(either);
    EXPECT_TRUE(either->pid == 100 || either->pid == 123) << either->pid;

    EXPECT_FALSE(find_process(77, owner_, proc()));
    EXPECT_FALSE(find_process(0, owner_, proc()));
    EXPECT_FALSE(find_process(7777, owner_ + 1, proc()));
    EXPECT_FALSE(find_process(7777, owner_, proc() + "/missing"));
}

TEST_F(FakeProc, ReadProcessBoundsTheCommandLine) {
    std::string huge(3 * kMaxCmdline, 'A');
    huge[10] = '\0';
    add_process(200, {}, "/usr/bin/perl", "/tmp", huge);
    const auto info = read_process(200, proc());
    ASSERT_TRUE(info);
    EXPECT_EQ(info->pid, 200);
    EXPECT_TRUE(info->truncated_cmdline);
    ASSERT_EQ(info->cmdline.size(), kMaxCmdline);
    EXPECT_EQ(info->cmdline[10], ' ');
    EXPECT_EQ(info->cmdline.find('\0'), std::string::npos);

    std::string exact(kMaxCmdline, 'B');
    add_process(201, {}, "/bin/sh", "/", exact);
    const auto at_limit = read_process(201, proc());
    ASSERT_TRUE(at_limit);
    EXPECT_FALSE(at_limit->truncated_cmdline);
    EXPECT_EQ(at_limit->cmdline, exact);
}

TEST_F(FakeProc, ReadProcessOfAKernelThreadOrAGoneProcess) {
    add_process(2, {}, "", "", "");  // kthreadd: no exe, no cwd, empty cmdline
    const auto kthread = read_process(2, proc());
    ASSERT_TRUE(kthread);
    EXPECT_EQ(kthread->exe, "");
    EXPECT_EQ(kthread->cwd, "");
    EXPECT_EQ(kthread->cmdline, "");
    EXPECT_FALSE(read_process(3, proc()));
    EXPECT_FALSE(read_process(0, proc()));
    EXPECT_FALSE(read_process(-1, proc()));
}

TEST_F(FakeProc, SymlinkedDirectoriesAreNotFollowed) {
    // A /proc/PID/fd that is a symlink (impossible in the real /proc) is refused rather
    // than followed somewhere else.
    const std::filesystem::path elsewhere = root_ / "elsewhere";
    std::filesystem::create_directories(elsewhere);
    std::filesystem::create_symlink("socket:[999]", elsewhere / "3");
    std::filesystem::create_directories(root_ / "300");
    std::filesystem::create_symlink(elsewhere, root_ / "300" / "fd");
    if (::geteuid() == 0) {
        ASSERT_EQ(::chown((root_ / "300").c_str(), owner_, owner_), 0);
    }
    EXPECT_FALSE(find_process(999, owner_, proc()));
}

TEST(RealProc, ReadsItself) {
    const auto self = read_process(::getpid());
    ASSERT_TRUE(self);
    EXPECT_EQ(self->exe, std::filesystem::read_symlink("/proc/self/exe").string());
    EXPECT_EQ(self->cwd, std::filesystem::current_path().string());
    EXPECT_FALSE(self->cmdline.empty());
}

}  // namespace
}  // namespace smtpfence::nfq
