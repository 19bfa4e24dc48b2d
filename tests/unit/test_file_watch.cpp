// FileWatch against real files: each way /etc/passwd or a config file changes is seen
// once, and a file left alone is never reported.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>

#include "common/error.h"
#include "common/file_watch.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using testing::TempDir;

// Sets a file's mtime exactly (atime left alone).
void set_mtime(const std::string& path, std::time_t sec, long nsec) {
    const timespec times[2] = {{0, UTIME_OMIT}, {sec, nsec}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << errno_text(errno);
}

// Overwrites the file's bytes in place: same inode, no truncation.
void overwrite_in_place(const std::string& path, const std::string& content) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << errno_text(errno);
    EXPECT_EQ(::pwrite(fd, content.data(), content.size(), 0),
              static_cast<ssize_t>(content.size()));
    ::close(fd);
}

TEST(FileWatch, NoChangeIsNeverReported) {
    TempDir dir;
    const std::string passwd = dir.write("passwd", "root:x:0:0::/root:/bin/sh\n");
    const std::string group = dir.write("group", "root:x:0:\n");
    FileWatch watch({passwd, group, dir.path() + "/absent"});
    EXPECT_EQ(watch.paths().size(), 3U);
    for (int i = 0; i < 3; ++i)
        EXPECT_FALSE(watch.changed());
    // Reading a file is no change either.
    {
        std::ifstream in(passwd);
        std::string line;
        std::getline(in, line);
        EXPECT_EQ(line, "root:x:0:0::/root:/bin/sh");
    }
    EXPECT_FALSE(watch.changed());
}

TEST(FileWatch, ReplacementByRenameIsSeenOnce) {
    TempDir dir;
    const std::string passwd = dir.write("passwd", "root:x:0:0::/root:/bin/sh\n");
    set_mtime(passwd, 1767225600, 0);
    FileWatch watch({passwd});
    // As useradd does: a new file, same size and even the same mtime, renamed over.
    const std::string next = dir.write("passwd+", "toor:x:0:0::/root:/bin/sh\n");
    set_mtime(next, 1767225600, 0);
    ASSERT_EQ(std::rename(next.c_str(), passwd.c_str()), 0);
    EXPECT_TRUE(watch.changed());
    EXPECT_FALSE(watch.changed());  // the reference moved on
}

TEST(FileWatch, InPlaceEditOfTheSameSizeIsSeenByItsMtime) {
    TempDir dir;
    const std::string conf = dir.write("smtpfence.conf", "SMTP_ALLOWUSER = \"alice\"\n");
    set_mtime(conf, 1767225600, 100);
    FileWatch watch({conf});
    const struct stat before = [&] {
        struct stat st {};
        EXPECT_EQ(::stat(conf.c_str(), &st), 0);
        return st;
    }();
    overwrite_in_place(conf, "SMTP_ALLOWUSER = \"bobby\"\n");
    set_mtime(conf, 1767225600, 101);  // one nanosecond later, same second
    struct stat after {};
    ASSERT_EQ(::stat(conf.c_str(), &after), 0);
    ASSERT_EQ(after.st_ino, before.st_ino);
    ASSERT_EQ(after.st_size, before.st_size);
    EXPECT_TRUE(watch.changed());
    EXPECT_FALSE(watch.changed());
}

TEST(FileWatch, CreationAndDeletion) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    FileWatch watch({path});
    EXPECT_FALSE(watch.changed());
    dir.write("allow.list", "user alice\n");
    EXPECT_TRUE(watch.changed());
    EXPECT_FALSE(watch.changed());
    ASSERT_EQ(::unlink(path.c_str()), 0);
    EXPECT_TRUE(watch.changed());
    EXPECT_FALSE(watch.changed());
}

TEST(FileWatch, OneChangedFileAmongSeveral) {
    TempDir dir;
    const std::string a = dir.write("a", "1\n");
    const std::string b = dir.write("b", "2\n");
    FileWatch watch({a, b});
    ASSERT_EQ(::truncate(b.c_str(), 0), 0);
    EXPECT_TRUE(watch.changed());
    EXPECT_FALSE(watch.changed());
}

TEST(FileWatch, RearmTakesTheCurrentStateAsReference) {
    TempDir dir;
    const std::string path = dir.write("group", "mail:x:12:\n");
    FileWatch watch({path});
    dir.write("group", "mail:x:12:dave\n");
    watch.rearm();
    EXPECT_FALSE(watch.changed());
}

TEST(FileWatch, AnEmptyWatchNeverChanges) {
    FileWatch watch;
    EXPECT_FALSE(watch.changed());
    watch.rearm();
    EXPECT_FALSE(watch.changed());
}

TEST(FileStamp, EveryFieldCounts) {
    TempDir dir;
    const std::string path = dir.write("f", "x\n");
    const FileStamp s = FileStamp::of(path);
    EXPECT_TRUE(s.exists);
    EXPECT_EQ(s.size, 2);
    EXPECT_TRUE(s == FileStamp::of(path));
    EXPECT_FALSE(FileStamp::of(dir.path() + "/missing").exists);

    auto differs = [&](auto change) {
        FileStamp t = s;
        change(t);
        return !(t == s);
    };
    EXPECT_TRUE(differs([](FileStamp& t) { t.exists = false; }));
    EXPECT_TRUE(differs([](FileStamp& t) { ++t.dev; }));
    EXPECT_TRUE(differs([](FileStamp& t) { ++t.ino; }));
    EXPECT_TRUE(differs([](FileStamp& t) { ++t.size; }));
    EXPECT_TRUE(differs([](FileStamp& t) { ++t.mtime.tv_sec; }));
    EXPECT_TRUE(differs([](FileStamp& t) { t.mtime.tv_nsec ^= 1; }));
    EXPECT_TRUE(differs([](FileStamp& t) { ++t.ctime.tv_sec; }));
    EXPECT_TRUE(differs([](FileStamp& t) { t.ctime.tv_nsec ^= 1; }));
}

}  // namespace
}  // namespace smtpfence
