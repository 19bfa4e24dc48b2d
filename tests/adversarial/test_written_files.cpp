// The files smtpfence writes, attacked (issue 9): symlinks and hard links planted where
// the worker writes (the attempt log and its rotation, DirectAdmin's usage files and
// mail_task.queue, the allow list's lock), the state and usage directories replaced by
// symlinks, and hostile bytes (newline, '&', '=', quotes, backslash, terminal escape
// sequences, invalid UTF-8) in the working directory, executable and command line of
// an attempt. Each test asserts that nothing is written through (the victim file is
// untouched), that the refusal names the path, that the attempt is still counted (by
// the kernel, and recorded wherever it can be), and that what smtpfencectl shows
// carries no control character.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/worker/worker_test.h"

namespace smtpfence::wtest {
namespace {

namespace fs = std::filesystem;

constexpr const char* kVictimText = "root:$6$not.really.a.hash:19000:0:99999:7:::\n";

// A file standing in for /etc/shadow: its bytes, mode, links and times must not change.
struct Victim {
    std::string path;
    std::string text;
    struct stat before {};

    void create(const std::string& p, const std::string& content = kVictimText) {
        path = p;
        text = content;
        std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
        ::chmod(path.c_str(), 0640);
        ASSERT_EQ(::stat(path.c_str(), &before), 0) << path;
    }
    void expect_untouched() const {
        SCOPED_TRACE("victim " + path);
        EXPECT_EQ(itest::read_file(path), text);
        struct stat now {};
        ASSERT_EQ(::stat(path.c_str(), &now), 0);
        EXPECT_EQ(now.st_size, before.st_size);
        EXPECT_EQ(now.st_mode, before.st_mode);
        EXPECT_EQ(now.st_uid, before.st_uid);
        EXPECT_EQ(now.st_gid, before.st_gid);
        EXPECT_EQ(now.st_mtim.tv_sec, before.st_mtim.tv_sec);
        EXPECT_EQ(now.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
    }
};

bool is_symlink(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

// No byte a terminal obeys: below 0x20 but newline and tab, DEL, ESC (0x1b is below
// 0x20 already), and the C1 controls U+0080-U+009F in UTF-8.
void expect_terminal_safe(const std::string& text, const std::string& what) {
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto b = static_cast<unsigned char>(text[i]);
        const bool control = (b < 0x20 && b != '\n' && b != '\t') || b == 0x7f;
        const bool c1 = b == 0xc2 && i + 1 < text.size() &&
                        static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
                        static_cast<unsigned char>(text[i + 1]) <= 0x9f;
        if (control || c1) {
            ADD_FAILURE() << what << ": raw control byte " << static_cast<unsigned>(b)
                          << " at offset " << i << " of:\n"
                          << text;
            return;
        }
    }
}

// text::printable's form, which smtpfencectl shows paths and command lines in.
std::string escaped(const std::string& text) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (const char c : text) {
        const auto b = static_cast<unsigned char>(c);
        if (c == '\\')
            out += "\\\\";
        else if (c == '\t')
            out += "\\t";
        else if (b >= 0x20 && b < 0x7f)
            out.push_back(c);
        else
            out += {'\\', 'x', kHex[b >> 4U], kHex[b & 0xfU]};
    }
    return out;
}

// What the attempt log keeps of arbitrary bytes: valid UTF-8 as is, each byte of an
// invalid sequence as U+FFFD (the log is JSON; the test's invalid bytes are 0xff, 0xfe).
std::string as_logged(const std::string& text) {
    std::string out;
    for (const char c : text) {
        const auto b = static_cast<unsigned char>(c);
        if (b == 0xff || b == 0xfe)
            out += "\xef\xbf\xbd";
        else
            out.push_back(c);
    }
    return out;
}

std::string decode_percent(const std::string& value) {
    std::string out;
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] == '%' && i + 2 < value.size()) {
            out.push_back(static_cast<char>(std::stoi(value.substr(i + 1, 2), nullptr, 16)));
            i += 2;
        } else {
            out.push_back(value[i]);
        }
    }
    return out;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start < text.size()) {
        const std::size_t eol = text.find('\n', start);
        if (eol == std::string::npos) {
            out.push_back(text.substr(start));  // no newline at the end: reported
            break;
        }
        out.push_back(text.substr(start, eol - start));
        start = eol + 1;
    }
    return out;
}

// The keys of a DirectAdmin key=value line, in order.
std::vector<std::string> keys_of(const std::string& line) {
    std::vector<std::string> keys;
    std::size_t start = 0;
    while (start <= line.size()) {
        std::size_t amp = line.find('&', start);
        if (amp == std::string::npos)
            amp = line.size();
        const std::string pair = line.substr(start, amp - start);
        keys.push_back(pair.substr(0, pair.find('=')));
        start = amp + 1;
    }
    return keys;
}

std::string value_of(const std::string& line, const std::string& key) {
    const std::string needle = "&" + key + "=";
    const auto at = line.find(needle);
    if (at == std::string::npos)
        return {};
    const auto end = line.find('&', at + needle.size());
    return line.substr(at + needle.size(),
                       end == std::string::npos ? std::string::npos : end - at - needle.size());
}

class WrittenFilesTest : public WorkerTest {
  protected:
    [[nodiscard]] std::string virtual_dir() const { return dir_->path() + "/virtual"; }
    [[nodiscard]] std::string socket() const { return dir_->path() + "/control.sock"; }

    itest::RunResult ctl(const std::vector<std::string>& args) {
        std::vector<std::string> argv{itest::smtpfencectl_path(), "--socket", socket()};
        argv.insert(argv.end(), args.begin(), args.end());
        return itest::run(topo_->server, argv);
    }

    // count connects of who from cwd, all refused.
    void attempts(const Credentials& who, const std::string& cwd, std::uint64_t count,
                  const std::vector<std::string>& extra = {}) {
        std::vector<std::string> args = extra;
        args.insert(args.end(), {"--count", std::to_string(count), Topology::kRemote4, "25"});
        auto c = start_connector(who, cwd, args);
        ASSERT_TRUE(c) << c.error().message();
        auto exit = c->wait(30s);
        ASSERT_TRUE(exit) << exit.error().message();
        ASSERT_TRUE(exit->report) << itest::describe_status(exit->status) << ": " << exit->out;
        EXPECT_EQ(exit->report->refused, count) << exit->out;
        EXPECT_EQ(exit->report->connected, 0U) << exit->out;
    }

    // Waits until the daemon's log holds every one of the texts (in one line).
    void expect_logged(const std::vector<std::string>& texts, Millis timeout = 15s) {
        const auto found = [&] {
            for (const std::string& line : lines_of(daemon_->log())) {
                bool all = true;
                for (const std::string& t : texts)
                    all = all && line.find(t) != std::string::npos;
                if (all)
                    return true;
            }
            return false;
        };
        const bool ok = itest::wait_until(found, timeout, 100ms);
        std::string wanted;
        for (const std::string& t : texts)
            wanted += " \"" + t + "\"";
        EXPECT_TRUE(ok) << "no line of the daemon's log names all of" << wanted << "\n"
                        << diagnostics();
    }

    void expect_kernel_counts(const std::map<std::uint32_t, std::uint64_t>& expected) {
        std::map<std::uint32_t, std::uint64_t> kernel;
        (void)itest::wait_until(
            [&] {
                auto k = kernel_blocked(topo_->server, table_);
                kernel = k ? *k : std::map<std::uint32_t, std::uint64_t>{};
                return kernel == expected;
            },
            5s, 100ms);
        EXPECT_EQ(kernel, expected) << "the kernel's blocked counters\n" << diagnostics();
    }

    // Status while the worker cannot start: the daemon answers, enforces, and does not
    // call the worker ready (it is down, or being restarted); no control character.
    void expect_status_without_worker() {
        const itest::RunResult status = ctl({"status"});
        EXPECT_EQ(status.exit_code, 0) << status.describe();
        EXPECT_NE(status.out.find(": ENFORCING"), std::string::npos) << status.out;
        EXPECT_EQ(status.out.find(", ready"), std::string::npos) << status.out;
        expect_terminal_safe(status.out, "smtpfencectl status");
    }

    // A symlink or hard link at the attempt log: the worker refuses to start (naming the
    // path), the daemon runs on and the kernel counts; once the planted file is gone,
    // the next worker records everything the kernel counted meanwhile.
    void planted_at_attempt_log(bool hard_link);
    // Symlinks or hard links at usage/bob, usage/carol.bytes and mail_task.queue.
    void planted_in_virtual(bool hard_link);
    // A symlink or hard link at attempts.jsonl.1 when the log rotates.
    void planted_at_rotation(bool hard_link);
};

void WrittenFilesTest::planted_at_attempt_log(bool hard_link) {
    Victim victim;
    ASSERT_NO_FATAL_FAILURE(victim.create(dir_->path() + "/shadow"));
    fs::create_directories(state_dir());
    const std::string log = state_dir() + "/attempts.jsonl";
    if (hard_link)
        ASSERT_EQ(::link(victim.path.c_str(), log.c_str()), 0);
    else
        ASSERT_EQ(::symlink(victim.path.c_str(), log.c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    expect_logged({log, hard_link ? "hard links: refusing to read or write it"
                                  : "a symlink: refusing to follow it"});
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, site_of(kBob), 3));
    expect_kernel_counts({{kBob.uid, 3}});
    EXPECT_TRUE(daemon_->running()) << diagnostics();
    expect_status_without_worker();
    victim.expect_untouched();

    // Removed: the next worker (the daemon retries with a backoff of up to 30 s) counts
    // the 3 attempts it could not see, from the kernel's counters.
    ASSERT_EQ(::unlink(log.c_str()), 0);
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, 0, 45s));
    expect_exact_totals({{kBob.uid, 3}});
    EXPECT_EQ(itest::read_file(virtual_dir() + "/usage/bob"), "111");
    victim.expect_untouched();
    EXPECT_EQ(fs::hard_link_count(victim.path), 1U);
}

TEST_F(WrittenFilesTest, SymlinkAtTheAttemptLogIsRefusedAndNothingIsLost) {
    planted_at_attempt_log(false);
}

TEST_F(WrittenFilesTest, HardLinkAtTheAttemptLogIsRefusedAndNothingIsLost) {
    planted_at_attempt_log(true);
}

TEST_F(WrittenFilesTest, StateDirectoryReplacedBySymlinkIsNotFollowed) {
    // Elsewhere: a directory with files of the same names as ours.
    const std::string elsewhere = dir_->path() + "/elsewhere";
    fs::create_directories(elsewhere);
    Victim log_victim;
    ASSERT_NO_FATAL_FAILURE(log_victim.create(elsewhere + "/attempts.jsonl"));
    Victim ready_victim;
    ASSERT_NO_FATAL_FAILURE(ready_victim.create(elsewhere + "/worker.ready"));
    ASSERT_EQ(::symlink(elsewhere.c_str(), state_dir().c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    expect_logged({"state directory " + state_dir(), "a symlink: refusing to follow it"});
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, site_of(kBob), 2));
    expect_kernel_counts({{kBob.uid, 2}});
    expect_status_without_worker();
    log_victim.expect_untouched();
    ready_victim.expect_untouched();
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(elsewhere))
        names.insert(e.path().filename().string());
    EXPECT_EQ(names, (std::set<std::string>{"attempts.jsonl", "worker.ready"}))
        << "files created through the symlinked state directory";

    // A real directory again: the attempts are recorded.
    ASSERT_EQ(::unlink(state_dir().c_str()), 0);
    fs::create_directories(state_dir());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, 0, 45s));
    expect_exact_totals({{kBob.uid, 2}});
}

void WrittenFilesTest::planted_at_rotation(bool hard_link) {
    // A first run makes the history (and looks for an old log to import, once); the
    // stream is then filled past its rotation size (16 MiB) while no daemon runs, so the
    // next worker's first record rotates it.
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    daemon_.reset();
    {
        std::ofstream out(state_dir() + "/attempts.jsonl", std::ios::binary | std::ios::app);
        const std::string pad = R"({"type":"pad","pad":")" + std::string(1000, 'x') + "\"}\n";
        for (std::uint64_t written = 0; written <= (16U << 20U); written += pad.size())
            out << pad;
    }
    Victim victim;
    ASSERT_NO_FATAL_FAILURE(victim.create(dir_->path() + "/shadow"));
    const std::string rotated = state_dir() + "/attempts.jsonl.1";
    if (hard_link)
        ASSERT_EQ(::link(victim.path.c_str(), rotated.c_str()), 0);
    else
        ASSERT_EQ(::symlink(victim.path.c_str(), rotated.c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, site_of(kBob), 1));
    expect_exact_totals({{kBob.uid, 1}});
    // Rotated: .1 is our old stream (a regular file with one link, replacing what was
    // planted), the new one starts with bob's attempt.
    struct stat st {};
    ASSERT_EQ(::lstat(rotated.c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_nlink, 1U);
    EXPECT_GT(st.st_size, 16 << 20);
    (void)itest::wait_until(
        [&] { return !itest::read_file(state_dir() + "/attempts.jsonl").empty(); }, 5s, 50ms);
    const std::string current = itest::read_file(state_dir() + "/attempts.jsonl");
    const Json first = Json::parse(current.substr(0, current.find('\n')), nullptr, false);
    EXPECT_TRUE(!first.is_discarded() && first.value("type", "") == "attempt" &&
                first.value("uid", 0U) == kBob.uid)
        << current.substr(0, 200);
    EXPECT_EQ(worker_pid(), worker) << "the worker restarted";
    victim.expect_untouched();
    EXPECT_EQ(fs::hard_link_count(victim.path), 1U);
}

TEST_F(WrittenFilesTest, SymlinkAtTheRotatedLogIsReplacedNotWrittenThrough) {
    planted_at_rotation(false);
}

TEST_F(WrittenFilesTest, HardLinkAtTheRotatedLogIsReplacedNotWrittenThrough) {
    planted_at_rotation(true);
}

void WrittenFilesTest::planted_in_virtual(bool hard_link) {
    const std::string usage = virtual_dir() + "/usage";
    fs::create_directories(usage);
    Victim usage_victim, bytes_victim, queue_victim;
    ASSERT_NO_FATAL_FAILURE(usage_victim.create(dir_->path() + "/shadow"));
    ASSERT_NO_FATAL_FAILURE(bytes_victim.create(dir_->path() + "/gshadow"));
    ASSERT_NO_FATAL_FAILURE(queue_victim.create(dir_->path() + "/sudoers"));
    const auto plant = [&](const Victim& v, const std::string& at) {
        ASSERT_EQ(
            hard_link ? ::link(v.path.c_str(), at.c_str()) : ::symlink(v.path.c_str(), at.c_str()),
            0)
            << at;
    };
    ASSERT_NO_FATAL_FAILURE(plant(usage_victim, usage + "/bob"));
    ASSERT_NO_FATAL_FAILURE(plant(bytes_victim, usage + "/carol.bytes"));
    ASSERT_NO_FATAL_FAILURE(plant(queue_victim, virtual_dir() + "/mail_task.queue"));
    // dave's daily limit is 1: his attempt reaches it, and the notice goes to the queue.
    std::ofstream(virtual_dir() + "/limit_dave") << "1\n";
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, site_of(kBob), 2));
    ASSERT_NO_FATAL_FAILURE(attempts(kCarol, site_of(kCarol), 1));
    ASSERT_NO_FATAL_FAILURE(attempts(kDave, site_of(kDave), 1));
    // Every attempt counted by the kernel and in the attempt log.
    expect_exact_totals({{kBob.uid, 2}, {kCarol.uid, 1}, {kDave.uid, 1}});
    const std::string refusal =
        hard_link ? "hard links: refusing to write to it" : "a symlink: refusing to follow it";
    expect_logged({"DirectAdmin: ", usage + "/bob", refusal});
    expect_logged({"DirectAdmin: ", usage + "/carol.bytes", refusal});
    // The limit notice waits for the settle delay (2 s), then is refused too.
    expect_logged({"DirectAdmin: ", virtual_dir() + "/mail_task.queue", refusal});
    // What could be written was: carol's count, dave's count and .bytes line.
    EXPECT_EQ(itest::read_file(usage + "/carol"), "1");
    EXPECT_EQ(itest::read_file(usage + "/dave"), "1");
    EXPECT_EQ(lines_of(itest::read_file(usage + "/dave.bytes")).size(), 1U);
    usage_victim.expect_untouched();
    bytes_victim.expect_untouched();
    queue_victim.expect_untouched();
    EXPECT_EQ(hard_link, !is_symlink(usage + "/bob"));
    EXPECT_EQ(worker_pid(), worker) << "the worker stopped on a refused file\n" << diagnostics();
    EXPECT_TRUE(daemon_->running());
}

TEST_F(WrittenFilesTest, SymlinksInDirectAdminsFilesAreRefused) {
    planted_in_virtual(false);
}

TEST_F(WrittenFilesTest, HardLinksInDirectAdminsFilesAreRefused) {
    planted_in_virtual(true);
}

TEST_F(WrittenFilesTest, UsageDirectoryReplacedBySymlinkIsNotFollowed) {
    const std::string elsewhere = dir_->path() + "/elsewhere";
    fs::create_directories(elsewhere);
    Victim victim;
    ASSERT_NO_FATAL_FAILURE(victim.create(elsewhere + "/bob"));
    fs::create_directories(virtual_dir());
    ASSERT_EQ(::symlink(elsewhere.c_str(), (virtual_dir() + "/usage").c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, site_of(kBob), 2));
    expect_exact_totals({{kBob.uid, 2}});
    expect_logged({"DirectAdmin: ", virtual_dir() + "/usage", "a symlink: refusing to follow it"});
    victim.expect_untouched();
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(elsewhere))
        names.insert(e.path().filename().string());
    EXPECT_EQ(names, std::set<std::string>{"bob"}) << "files created through the symlink";
    EXPECT_EQ(worker_pid(), worker);
}

TEST_F(WrittenFilesTest, LinksAtTheAllowListAndItsLockAreNotWrittenThrough) {
    Victim lock_victim, list_victim;
    ASSERT_NO_FATAL_FAILURE(lock_victim.create(dir_->path() + "/shadow"));
    ASSERT_NO_FATAL_FAILURE(list_victim.create(dir_->path() + "/gshadow"));
    const std::string list = dir_->path() + "/allow.list";
    ASSERT_EQ(::symlink(lock_victim.path.c_str(), (list + ".lock").c_str()), 0);
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    // A symlinked lock: refused, naming it.
    itest::RunResult r = ctl({"allow", "alice"});
    EXPECT_NE(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.err.find(list + ".lock"), std::string::npos) << r.describe();
    expect_terminal_safe(r.output(), "smtpfencectl allow");
    lock_victim.expect_untouched();
    // A hard-linked lock is only locked, never written; a hard link at the list is
    // replaced (rename), not written through.
    ASSERT_EQ(::unlink((list + ".lock").c_str()), 0);
    ASSERT_EQ(::link(lock_victim.path.c_str(), (list + ".lock").c_str()), 0);
    // A list in allow.list's own format, so that it is read and rewritten.
    ASSERT_NO_FATAL_FAILURE(list_victim.create(list_victim.path, "user bob\n"));
    ASSERT_EQ(::link(list_victim.path.c_str(), list.c_str()), 0);
    r = ctl({"allow", "alice"});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    lock_victim.expect_untouched();
    list_victim.expect_untouched();
    EXPECT_EQ(fs::hard_link_count(list), 1U);
    EXPECT_NE(itest::read_file(list).find("alice"), std::string::npos) << itest::read_file(list);
}

// The hostile name of a folder, an executable and a command-line argument.
const std::string kHostile =
    "h\nx&action=limit&username=root=\"q\\z\x1b[31mred\x1b]0;title\x07\xff\xfe end";

TEST_F(WrittenFilesTest, HostileNamesAreNeverInjectedAndShownEscaped) {
    // alice's daily limit is 2: her second attempt writes one action=limit line.
    fs::create_directories(virtual_dir());
    std::ofstream(virtual_dir() + "/limit_alice") << "2\n";
    const std::string cwd = site_of(kAlice) + "/" + kHostile;
    ASSERT_TRUE(fs::create_directory(cwd));
    ::chmod(cwd.c_str(), 0755);
    const std::string exe = dir_->path() + "/bin/" + kHostile;
    fs::copy_file(connector_build_path(), exe);
    ::chmod(exe.c_str(), 0755);
    connector_path_ = exe;
    ASSERT_NO_FATAL_FAILURE(start_daemon());
    pid_t worker = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker));
    ASSERT_NO_FATAL_FAILURE(attempts(kAlice, cwd, 2, {"--tag", kHostile}));
    expect_exact_totals({{kAlice.uid, 2}});

    // The attempt log: one JSON object per line, the names exact (invalid UTF-8 as
    // U+FFFD, which JSON cannot carry otherwise).
    const std::string log_text = itest::read_file(state_dir() + "/attempts.jsonl");
    for (const std::string& line : lines_of(log_text)) {
        const Json j = Json::parse(line, nullptr, false);
        EXPECT_TRUE(!j.is_discarded() && j.is_object()) << "not a record: " << line;
    }
    EXPECT_TRUE(log_text.ends_with("\n"));
    const AttemptLogView log = read_attempt_log(state_dir());
    ASSERT_EQ(log.attempts.size(), 2U) << diagnostics();
    const std::string cmdline =
        exe + " --tag " + kHostile + " --count 2 " + std::string(Topology::kRemote4) + " 25";
    for (const Json& a : log.attempts) {
        EXPECT_EQ(a.value("cwd", ""), as_logged(cwd));
        EXPECT_EQ(a.value("exe", ""), as_logged(exe));
        EXPECT_EQ(a.value("cmdline", ""), as_logged(cmdline));
        EXPECT_EQ(a.value("account", ""), "alice");
    }

    // DirectAdmin: one .bytes line per attempt, the folder percent-encoded (decoding
    // gives its bytes back); one limit notice, no injected key or line.
    const std::vector<std::string> exim_keys = {
        "0",  // SIZE=type: "0=type=email" splits as key "0"
        "email",    "method",       "id",         "authenticated_id", "sender_host_address",
        "log_time", "message_size", "local_part", "domain",           "path"};
    const std::string bytes = itest::read_file(virtual_dir() + "/usage/alice.bytes");
    ASSERT_EQ(lines_of(bytes).size(), 2U) << bytes;
    for (const std::string& line : lines_of(bytes)) {
        EXPECT_EQ(keys_of(line), exim_keys) << line;
        EXPECT_EQ(decode_percent(value_of(line, "path")), cwd) << line;
        expect_terminal_safe(line, "usage/alice.bytes");
    }
    EXPECT_EQ(itest::read_file(virtual_dir() + "/usage/alice"), "11");
    const std::string queue_path = virtual_dir() + "/mail_task.queue";
    (void)itest::wait_until([&] { return !itest::read_file(queue_path).empty(); }, 8s, 100ms);
    std::this_thread::sleep_for(2500ms);  // past the settle delay: nothing more may come
    const std::string queue = itest::read_file(queue_path);
    ASSERT_EQ(lines_of(queue).size(), 1U) << queue;
    EXPECT_EQ(keys_of(lines_of(queue)[0]),
              (std::vector<std::string>{"action", "username", "count", "limit", "email",
                                        "authenticated_id", "sender_host_address", "log_time"}))
        << queue;
    EXPECT_TRUE(queue.starts_with("action=limit&username=alice&count=2&limit=2&")) << queue;

    // smtpfencectl: no raw control byte; the names in text::printable's escaped form.
    const itest::RunResult shown = ctl({"attempts"});
    EXPECT_EQ(shown.exit_code, 0) << shown.describe();
    expect_terminal_safe(shown.output(), "smtpfencectl attempts");
    EXPECT_NE(shown.out.find("cwd " + escaped(as_logged(cwd))), std::string::npos)
        << "expected the folder as " << escaped(as_logged(cwd)) << " in:\n"
        << shown.out;
    EXPECT_NE(shown.out.find(escaped(as_logged(exe))), std::string::npos) << shown.out;
    EXPECT_NE(shown.out.find("cmdline: " + escaped(as_logged(cmdline))), std::string::npos)
        << shown.out;
    // The exact form of the hostile part, written out once by hand.
    EXPECT_NE(shown.out.find("h\\x0ax&action=limit&username=root=\"q\\\\z\\x1b[31mred\\x1b]0;"
                             "title\\x07\\xef\\xbf\\xbd\\xef\\xbf\\xbd end"),
              std::string::npos)
        << shown.out;

    const itest::RunResult top = ctl({"top"});
    EXPECT_EQ(top.exit_code, 0) << top.describe();
    expect_terminal_safe(top.output(), "smtpfencectl top");
    EXPECT_NE(top.out.find(escaped(as_logged(cwd))), std::string::npos) << top.out;

    const itest::RunResult status = ctl({"status"});
    EXPECT_EQ(status.exit_code, 0) << status.describe();
    expect_terminal_safe(status.output(), "smtpfencectl status");

    // --json: valid JSON, terminal-safe, and the same text as the log.
    for (const std::string command : {"attempts", "top", "status"}) {
        const itest::RunResult j = ctl({command, "--json"});
        EXPECT_EQ(j.exit_code, 0) << j.describe();
        expect_terminal_safe(j.output(), "smtpfencectl " + command + " --json");
        const Json parsed = Json::parse(j.out, nullptr, false);
        ASSERT_FALSE(parsed.is_discarded()) << command << " --json:\n" << j.out;
        if (command == "attempts") {
            ASSERT_TRUE(parsed.contains("records")) << j.out;
            std::size_t seen = 0;
            for (const Json& r : parsed["records"]) {
                if (r.value("type", "") != "attempt")
                    continue;
                ++seen;
                EXPECT_EQ(r.value("cwd", ""), as_logged(cwd));
                EXPECT_EQ(r.value("cmdline", ""), as_logged(cmdline));
            }
            EXPECT_EQ(seen, 2U) << j.out;
        } else if (command == "top") {
            ASSERT_TRUE(parsed.contains("accounts") && !parsed["accounts"].empty()) << j.out;
            EXPECT_EQ(parsed["accounts"][0].value("last_cwd", ""), as_logged(cwd));
        }
    }
    // A hostile name typed at smtpfencectl comes back escaped in its error.
    for (const std::string command : {"allow", "check", "deny"}) {
        const itest::RunResult r = ctl({command, kHostile});
        EXPECT_NE(r.exit_code, 0) << r.describe();
        expect_terminal_safe(r.output(), "smtpfencectl " + command + " HOSTILE");
    }
    // The journal (the daemon's log here) gets the names escaped too.
    expect_terminal_safe(daemon_->log(), "the daemon's log");
}

}  // namespace
}  // namespace smtpfence::wtest
