// The managed allowlist file: its syntax, its errors (path:line), and its changes under
// the lock, including several processes changing it at once.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "policy/allow_store.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using testing::TempDir;
using Names = std::vector<std::string>;

const std::string kAllowed = " (allowed: letters, digits, '.', '_', '-', a final '$')";

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return "<missing>";
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

struct stat stat_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path << ": " << errno_text(errno);
    return st;
}

// The file's entry lines (comments left out), in order.
Names entries(const std::string& text) {
    Names out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.front() != '#')
            out.push_back(line);
    }
    return out;
}

std::string parse_error(std::string_view text) {
    auto r = parse_managed_allow(text, "/etc/smtpfence/allow.list");
    if (r) {
        ADD_FAILURE() << "accepted: " << text;
        return "<accepted>";
    }
    EXPECT_EQ(r.error().code, 0);
    return r.error().message();
}

TEST(ParseManagedAllow, UsersAndGroupsInFileOrder) {
    auto r = parse_managed_allow(
        "# smtpfence managed allowlist\n"
        "\n"
        "user alice\n"
        "   # an indented comment\n"
        "group webmail\n"
        "user\tbob\n"
        "  user   carol  \n"
        "\t\n"
        "group 2000\n"
        "user WS01$\n"
        "user 1001",  // no final newline
        "allow.list");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->users, (Names{"alice", "bob", "carol", "WS01$", "1001"}));
    EXPECT_EQ(r->groups, (Names{"webmail", "2000"}));
}

TEST(ParseManagedAllow, EmptyAndCommentOnlyTextIsAnEmptyList) {
    for (const std::string_view text : {"", "\n\n", "# nothing here\n", "\r\n  \r\n"}) {
        auto r = parse_managed_allow(text, "allow.list");
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_TRUE(r->users.empty());
        EXPECT_TRUE(r->groups.empty());
    }
}

TEST(ParseManagedAllow, CrlfLineEndings) {
    auto r = parse_managed_allow("# edited on Windows\r\nuser alice\r\ngroup mail\r\n\r\n",
                                 "allow.list");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->users, (Names{"alice"}));
    EXPECT_EQ(r->groups, (Names{"mail"}));
}

TEST(ParseManagedAllow, DuplicatesAreKeptOnceAtTheirFirstPlace) {
    auto r = parse_managed_allow(
        "user alice\nuser bob\nuser alice\ngroup mail\ngroup mail\nuser bob\ngroup alice\n",
        "allow.list");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->users, (Names{"alice", "bob"}));
    // A user and a group may share a name: they are different lists.
    EXPECT_EQ(r->groups, (Names{"mail", "alice"}));
}

TEST(ParseManagedAllow, ErrorsNamePathAndLine) {
    EXPECT_EQ(
        parse_error("user alice\n\nfriend bob\n"),
        "/etc/smtpfence/allow.list:3: unknown entry \"friend\" (expected user, group or everyone)");
    EXPECT_EQ(
        parse_error("User alice\n"),
        "/etc/smtpfence/allow.list:1: unknown entry \"User\" (expected user, group or everyone)");
    EXPECT_EQ(parse_error("# c\nuser\n"),
              "/etc/smtpfence/allow.list:2: expected \"user NAME\" or \"group NAME\", got "
              "\"user\"");
    EXPECT_EQ(parse_error("alice\n"),
              "/etc/smtpfence/allow.list:1: expected \"user NAME\" or \"group NAME\", got "
              "\"alice\"");
    // Line numbers count CRLF lines too.
    EXPECT_EQ(parse_error("user a\r\nuser b\r\ngroup \r\n"),
              "/etc/smtpfence/allow.list:3: expected \"user NAME\" or \"group NAME\", got "
              "\"group\"");
}

TEST(ParseManagedAllow, BadNamesAreErrors) {
    EXPECT_EQ(parse_error("user -rf\n"),
              "/etc/smtpfence/allow.list:1: name \"-rf\": starts with '-'");
    EXPECT_EQ(parse_error("user alice bob\n"),
              "/etc/smtpfence/allow.list:1: name \"alice bob\": contains \" \"" + kAllowed);
    EXPECT_EQ(parse_error("group web/mail\n"),
              "/etc/smtpfence/allow.list:1: name \"web/mail\": contains \"/\"" + kAllowed);
    EXPECT_EQ(
        parse_error("user " + std::string(65, 'a') + "\n"),
        "/etc/smtpfence/allow.list:1: name \"" + std::string(65, 'a') + "\": longer than 64 bytes");
    // Terminal escapes in a hand-edited file are shown, not sent to the terminal.
    EXPECT_EQ(parse_error("user ok\nuser ev\x1b[2Jil\n"),
              "/etc/smtpfence/allow.list:2: name \"ev\\x1b[2Jil\": contains \"\\x1b\"" + kAllowed);
    EXPECT_EQ(
        parse_error("user alice # the new one\n"),
        "/etc/smtpfence/allow.list:1: name \"alice # the new one\": contains \" \"" + kAllowed);
}

TEST(LoadManagedAllow, MissingFileIsAnEmptyList) {
    TempDir dir;
    for (const std::string& path :
         {dir.path() + "/allow.list", dir.path() + "/no/such/dir/allow.list"}) {
        auto r = load_managed_allow(path);
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_TRUE(r->users.empty());
        EXPECT_TRUE(r->groups.empty());
    }
}

TEST(LoadManagedAllow, ReadsTheFileAndNamesItInErrors) {
    TempDir dir;
    const std::string good = dir.write("allow.list", "user alice\ngroup mail\n");
    auto r = load_managed_allow(good);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->users, (Names{"alice"}));
    EXPECT_EQ(r->groups, (Names{"mail"}));

    const std::string bad = dir.write("bad.list", "user alice\nuser bad!\n");
    auto e = load_managed_allow(bad);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().message(), bad + ":2: name \"bad!\": contains \"!\"" + kAllowed);

    auto d = load_managed_allow(dir.path());
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().code, EISDIR);
    EXPECT_EQ(d.error().message(), dir.path() + ": Is a directory");
}

TEST(ChangeManagedAllow, AddCreatesTheFile) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    auto r = change_managed_allow(path, AllowKind::User, "alice", true);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_TRUE(r->changed);
    EXPECT_EQ(r->list.users, (Names{"alice"}));
    EXPECT_TRUE(r->list.groups.empty());

    const std::string text = slurp(path);
    EXPECT_TRUE(text.starts_with("# smtpfence managed allowlist")) << text;
    EXPECT_EQ(entries(text), (Names{"user alice"}));
    auto back = load_managed_allow(path);
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_EQ(back->users, (Names{"alice"}));
}

TEST(ChangeManagedAllow, AddRemoveAndTheirIdempotence) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    ASSERT_TRUE(change_managed_allow(path, AllowKind::User, "alice", true));
    ASSERT_TRUE(change_managed_allow(path, AllowKind::Group, "webmail", true));
    ASSERT_TRUE(change_managed_allow(path, AllowKind::User, "bob", true));
    EXPECT_EQ(entries(slurp(path)), (Names{"user alice", "user bob", "group webmail"}));

    // Adding a present name changes nothing, not even the file.
    const struct stat before = stat_of(path);
    auto again = change_managed_allow(path, AllowKind::User, "alice", true);
    ASSERT_TRUE(again) << again.error().message();
    EXPECT_FALSE(again->changed);
    EXPECT_EQ(again->list.users, (Names{"alice", "bob"}));
    EXPECT_EQ(again->list.groups, (Names{"webmail"}));
    const struct stat after = stat_of(path);
    EXPECT_EQ(after.st_ino, before.st_ino);
    EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);

    // A name is a user or a group: removing the group "alice" leaves the user.
    auto other_kind = change_managed_allow(path, AllowKind::Group, "alice", false);
    ASSERT_TRUE(other_kind) << other_kind.error().message();
    EXPECT_FALSE(other_kind->changed);
    EXPECT_EQ(other_kind->list.users, (Names{"alice", "bob"}));

    auto removed = change_managed_allow(path, AllowKind::User, "alice", false);
    ASSERT_TRUE(removed) << removed.error().message();
    EXPECT_TRUE(removed->changed);
    EXPECT_EQ(removed->list.users, (Names{"bob"}));
    EXPECT_EQ(removed->list.groups, (Names{"webmail"}));
    EXPECT_EQ(entries(slurp(path)), (Names{"user bob", "group webmail"}));

    auto absent = change_managed_allow(path, AllowKind::User, "alice", false);
    ASSERT_TRUE(absent) << absent.error().message();
    EXPECT_FALSE(absent->changed);

    auto group_gone = change_managed_allow(path, AllowKind::Group, "webmail", false);
    ASSERT_TRUE(group_gone) << group_gone.error().message();
    EXPECT_TRUE(group_gone->changed);
    EXPECT_EQ(entries(slurp(path)), (Names{"user bob"}));
}

TEST(ChangeManagedAllow, RemovingFromAMissingFileChangesNothing) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    auto r = change_managed_allow(path, AllowKind::User, "alice", false);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_FALSE(r->changed);
    EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(ChangeManagedAllow, ReplacesTheFileAtomicallyWithMode0644) {
    TempDir dir;
    const std::string path = dir.write("allow.list", "# hand-written\nuser alice\n");
    ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
    const ino_t old_inode = stat_of(path).st_ino;
    // Held open as a reader would: it keeps seeing the old, whole file.
    std::ifstream reader(path);

    const mode_t old_umask = ::umask(077);  // the mode is set, not left to the umask
    auto r = change_managed_allow(path, AllowKind::User, "bob", true);
    ::umask(old_umask);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_TRUE(r->changed);

    const struct stat st = stat_of(path);
    EXPECT_NE(st.st_ino, old_inode);  // a new file renamed into place, not rewritten
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0644U);
    EXPECT_EQ(entries(slurp(path)), (Names{"user alice", "user bob"}));
    EXPECT_EQ(slurp(path).find("hand-written"), std::string::npos);  // comments are not kept
    std::stringstream old_content;
    old_content << reader.rdbuf();
    EXPECT_EQ(old_content.str(), "# hand-written\nuser alice\n");

    // Nothing is left behind but the list and its lock file.
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir.path()))
        names.insert(e.path().filename().string());
    EXPECT_EQ(names, (std::set<std::string>{"allow.list", "allow.list.lock"}));
}

TEST(ChangeManagedAllow, InvalidNameIsRefusedBeforeTouchingAnything) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    auto r = change_managed_allow(path, AllowKind::User, "-alice", true);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(), "name \"-alice\": starts with '-'");
    auto g = change_managed_allow(path, AllowKind::Group, "a\nuser root", true);
    ASSERT_FALSE(g);
    EXPECT_EQ(g.error().message(), "name \"a\\x0auser root\": contains \"\\x0a\"" + kAllowed);
    EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(ChangeManagedAllow, ABrokenFileIsNotOverwritten) {
    TempDir dir;
    const std::string broken = "user alice\nfriend bob\n";
    const std::string path = dir.write("allow.list", broken);
    auto r = change_managed_allow(path, AllowKind::User, "carol", true);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(),
              path + ":2: unknown entry \"friend\" (expected user, group or everyone)");
    EXPECT_EQ(slurp(path), broken);
}

// Several processes adding at once: each re-reads the file under the lock, so none
// loses another's name. Without the lock (or with a lock on the renamed file) names
// go missing here within a few rounds.
TEST(ChangeManagedAllow, ConcurrentWritersLoseNothing) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    constexpr int kWriters = 4;
    constexpr int kNamesEach = 25;
    std::vector<pid_t> children;
    for (int w = 0; w < kWriters; ++w) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0) << errno_text(errno);
        if (pid == 0) {
            int status = 0;
            for (int i = 0; i < kNamesEach && status == 0; ++i) {
                const std::string name = "w" + std::to_string(w) + "_" + std::to_string(i);
                auto r = change_managed_allow(path, AllowKind::User, name, true);
                if (!r || !r->changed)
                    status = 1;
                // Some churn on the groups as well, re-adding the same one each time.
                auto g = change_managed_allow(path, AllowKind::Group, "shared", true);
                if (!g)
                    status = 2;
            }
            ::_exit(status);
        }
        children.push_back(pid);
    }
    for (const pid_t pid : children) {
        int status = -1;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 0) << "writer pid " << pid;
    }

    auto list = load_managed_allow(path);
    ASSERT_TRUE(list) << list.error().message();
    std::multiset<std::string> in_file(list->users.begin(), list->users.end());
    // load de-duplicates; count the file's own lines too.
    std::multiset<std::string> lines;
    for (const std::string& e : entries(slurp(path))) {
        if (e.starts_with("user "))
            lines.insert(e.substr(5));
    }
    std::multiset<std::string> expected;
    for (int w = 0; w < kWriters; ++w) {
        for (int i = 0; i < kNamesEach; ++i)
            expected.insert("w" + std::to_string(w) + "_" + std::to_string(i));
    }
    EXPECT_EQ(in_file, expected);
    EXPECT_EQ(lines, expected);
    EXPECT_EQ(list->groups, (Names{"shared"}));
    EXPECT_EQ(stat_of(path).st_mode & 07777, 0644U);
}

// The exceptions of a list as their file lines, for one comparison.
Names exception_lines(const ManagedAllow& list) {
    Names out;
    for (const DestException& e : list.exceptions)
        out.push_back(e.text() + " @" + e.origin);
    return out;
}

DestException exception(SubjectKind kind, std::string name, std::string_view dest) {
    auto to = parse_destination(dest);
    EXPECT_TRUE(to) << dest;
    return DestException{{kind, std::move(name)}, to.value_or(Destination{}), ""};
}

TEST(ParseManagedAllow, RelayExceptions) {
    auto r = parse_managed_allow(
        "user alice\n"
        "user alice to SMTP.SendGrid.net:587\n"
        "group webmail to 198.51.100.0/24\n"
        "  everyone\tto   [2001:db8::25]:25  \n"
        "user 1001 to smtp.sendgrid.net:587\n"
        "user alice to smtp.sendgrid.net:587\n"  // a repeat, kept once
        "group webmail\n",
        "allow.list");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->users, (Names{"alice"}));
    EXPECT_EQ(r->groups, (Names{"webmail"}));
    EXPECT_EQ(exception_lines(*r), (Names{
                                       "alice to smtp.sendgrid.net:587 @allow.list:2",
                                       "group webmail to 198.51.100.0/24 @allow.list:3",
                                       "everyone to [2001:db8::25]:25 @allow.list:4",
                                       "1001 to smtp.sendgrid.net:587 @allow.list:5",
                                   }));
    EXPECT_EQ(r->exceptions[0].who, (Subject{SubjectKind::User, "alice"}));
    EXPECT_EQ(r->exceptions[1].who, (Subject{SubjectKind::Group, "webmail"}));
    EXPECT_EQ(r->exceptions[2].who, (Subject{SubjectKind::Everyone, ""}));
}

TEST(ParseManagedAllow, BadExceptionsNamePathLineAndValue) {
    EXPECT_EQ(parse_error("user alice\nuser alice to smtp.example.com:0\n"),
              "/etc/smtpfence/allow.list:2: smtp.example.com:0: port 0 is out of range "
              "(1-65535)");
    EXPECT_EQ(parse_error("group webmail to 198.51.100.7/24\n"),
              "/etc/smtpfence/allow.list:1: 198.51.100.7/24: host bits set (did you mean "
              "198.51.100.0/24?)");
    EXPECT_EQ(parse_error("everyone to 0.0.0.0/0\n"),
              "/etc/smtpfence/allow.list:1: 0.0.0.0/0: a /0 network covers every address; to "
              "let an account reach any host, use `smtpfencectl allow USER` (or --group GROUP) "
              "instead");
    EXPECT_EQ(parse_error("everyone\n"),
              "/etc/smtpfence/allow.list:1: expected \"everyone to HOST[:PORT]\"");
    EXPECT_EQ(parse_error("everyone to a.example b.example\n"),
              "/etc/smtpfence/allow.list:1: expected \"everyone to HOST[:PORT]\"");
    EXPECT_EQ(parse_error("user alice to\n"),
              "/etc/smtpfence/allow.list:1: expected \"user NAME to HOST[:PORT]\"");
    EXPECT_EQ(parse_error("group mail to a.example 25\n"),
              "/etc/smtpfence/allow.list:1: expected \"group NAME to HOST[:PORT]\"");
    EXPECT_EQ(parse_error("user -rf to a.example\n"),
              "/etc/smtpfence/allow.list:1: name \"-rf\": starts with '-'");
}

TEST(ChangeManagedException, AddRemoveAndRoundTrip) {
    TempDir dir;
    // An allow.list of an older version: users and groups only; read unchanged.
    const std::string path = dir.write("allow.list", "user alice\ngroup webmail\n");
    const DestException relay = exception(SubjectKind::User, "alice", "smtp.sendgrid.net:587");
    auto added = change_managed_exception(path, relay, true);
    ASSERT_TRUE(added) << added.error().message();
    EXPECT_TRUE(added->changed);
    EXPECT_EQ(added->list.users, (Names{"alice"}));
    EXPECT_EQ(added->list.groups, (Names{"webmail"}));
    EXPECT_EQ(exception_lines(added->list),
              (Names{"alice to smtp.sendgrid.net:587 @" + path}));  // no origin given: the file

    ASSERT_TRUE(change_managed_exception(
        path, exception(SubjectKind::Group, "webmail", "198.51.100.0/24"), true));
    ASSERT_TRUE(change_managed_exception(
        path, exception(SubjectKind::Everyone, "", "[2001:db8::25]:25"), true));
    EXPECT_EQ(entries(slurp(path)),
              (Names{"user alice", "group webmail", "user alice to smtp.sendgrid.net:587",
                     "group webmail to 198.51.100.0/24", "everyone to [2001:db8::25]:25"}));

    // Adding a present one (origin aside) changes nothing, not even the file.
    const struct stat before = stat_of(path);
    DestException again = relay;
    again.origin = "elsewhere:1";
    auto same = change_managed_exception(path, again, true);
    ASSERT_TRUE(same) << same.error().message();
    EXPECT_FALSE(same->changed);
    EXPECT_EQ(stat_of(path).st_ino, before.st_ino);

    // Another port is another exception; the group's is not the user's.
    auto other_port = change_managed_exception(
        path, exception(SubjectKind::User, "alice", "smtp.sendgrid.net:465"), false);
    ASSERT_TRUE(other_port);
    EXPECT_FALSE(other_port->changed);
    auto other_kind = change_managed_exception(
        path, exception(SubjectKind::Group, "alice", "smtp.sendgrid.net:587"), false);
    ASSERT_TRUE(other_kind);
    EXPECT_FALSE(other_kind->changed);

    auto removed = change_managed_exception(path, relay, false);
    ASSERT_TRUE(removed) << removed.error().message();
    EXPECT_TRUE(removed->changed);
    EXPECT_EQ(entries(slurp(path)),
              (Names{"user alice", "group webmail", "group webmail to 198.51.100.0/24",
                     "everyone to [2001:db8::25]:25"}));
    // What we wrote reads back the same.
    auto back = load_managed_allow(path);
    ASSERT_TRUE(back) << back.error().message();
    ASSERT_EQ(back->exceptions.size(), removed->list.exceptions.size());
    for (std::size_t i = 0; i < back->exceptions.size(); ++i)
        EXPECT_TRUE(back->exceptions[i].same_rule(removed->list.exceptions[i])) << i;
    // Removing a user's allow leaves their exceptions alone, and the other way round.
    ASSERT_TRUE(change_managed_allow(path, AllowKind::Group, "webmail", false));
    EXPECT_EQ(entries(slurp(path)), (Names{"user alice", "group webmail to 198.51.100.0/24",
                                           "everyone to [2001:db8::25]:25"}));
}

TEST(ChangeManagedException, InvalidOnesAreRefusedBeforeTouchingAnything) {
    TempDir dir;
    const std::string path = dir.path() + "/allow.list";
    auto r = change_managed_exception(path, exception(SubjectKind::User, "a b", "a.example"), true);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(), "name \"a b\": contains \" \"" + kAllowed);
    auto e =
        change_managed_exception(path, exception(SubjectKind::Everyone, "x", "a.example"), true);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().message(), "everyone: takes no name (got \"x\")");
    DestException zero = exception(SubjectKind::User, "alice", "a.example");
    zero.to.port = 0;  // built by hand, not parsed
    auto z = change_managed_exception(path, zero, true);
    ASSERT_FALSE(z);
    EXPECT_EQ(z.error().message(), "a.example:0: port 0 is out of range (1-65535)");
    EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace smtpfence
