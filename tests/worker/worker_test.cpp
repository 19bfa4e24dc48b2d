#include "tests/worker/worker_test.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <thread>

#include "common/sqlite.h"

#ifndef SMTPFENCE_WORKER_PATH
#error "SMTPFENCE_WORKER_PATH must be defined by CMake"
#endif
#ifndef SFT_CONNECTOR_PATH
#error "SFT_CONNECTOR_PATH must be defined by CMake"
#endif

namespace smtpfence::wtest {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

const char* const kUsers[][2] = {
    {"alice", "x.test"}, {"bob", "b.test"}, {"carol", "c.test"}, {"dave", "d.test"}};

std::string test_passwd(const std::string& root) {
    return "root:x:0:0:root:/root:/bin/bash\n"
           "mail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n"
           "www-data:x:2033:2033:www-data:/var/www:/usr/sbin/nologin\n"
           "alice:x:2001:2001:Alice:" +
           root + "/home/alice:/bin/sh\n" + "bob:x:2002:2002:Bob:" + root + "/home/bob:/bin/sh\n" +
           "carol:x:2003:2003:Carol:" + root + "/home/carol:/bin/sh\n" +
           "dave:x:2004:2004:Dave:" + root + "/home/dave:/bin/sh\n";
}

const char* const kTestGroup =
    "root:x:0:\n"
    "mail:x:8:\n"
    "www-data:x:2033:\n"
    "alice:x:2001:\n"
    "bob:x:2002:\n"
    "carol:x:2003:\n"
    "dave:x:2004:\n";

std::string unique_table_name() {
    static std::atomic<unsigned> counter{0};
    return "sfw_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

// mkdir -p with every created level 0755, so the test accounts can enter it.
void make_dirs(const std::string& path) {
    fs::create_directories(path);
    for (fs::path p = path; p.has_parent_path() && p != p.parent_path(); p = p.parent_path()) {
        if (p.string().rfind("/tmp/", 0) != 0)
            break;
        ::chmod(p.c_str(), 0755);
    }
}

std::string canonical(const std::string& path) {
    std::error_code ec;
    const fs::path p = fs::canonical(path, ec);
    return ec ? path : p.string();
}

std::string tail(const std::string& text, std::size_t max) {
    return text.size() <= max ? text : "..." + text.substr(text.size() - max);
}

}  // namespace

std::string describe_counts(const std::map<std::uint32_t, std::uint64_t>& m) {
    std::string s = "{";
    for (const auto& [uid, n] : m)
        s += (s.size() > 1 ? ", " : "") + std::to_string(uid) + ": " + std::to_string(n);
    return s + "}";
}

std::string worker_path() {
    return SMTPFENCE_WORKER_PATH;
}
std::string connector_build_path() {
    return SFT_CONNECTOR_PATH;
}

// ---- Connector ----------------------------------------------------------------------

namespace {

// Takes "KEY=NUMBER" (after blanks) off the front of text; false when the key is
// another or the number does not parse or fit in value.
template <class T>
bool take_field(std::string_view& text, std::string_view key, T& value) {
    while (text.starts_with(' '))
        text.remove_prefix(1);
    if (!text.starts_with(key) || !text.substr(key.size()).starts_with('='))
        return false;
    text.remove_prefix(key.size() + 1);
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{})
        return false;
    text.remove_prefix(static_cast<std::size_t>(end - text.data()));
    return true;
}

// The summary line the connector prints first (tests/worker/connector.cpp):
// "refused=R connected=C timed_out=T other=O last_errno=E slowest_us=S".
std::optional<ConnectorReport> parse_report(std::string_view text) {
    ConnectorReport r;
    if (take_field(text, "refused", r.refused) && take_field(text, "connected", r.connected) &&
        take_field(text, "timed_out", r.timed_out) && take_field(text, "other", r.other) &&
        take_field(text, "last_errno", r.last_errno) &&
        take_field(text, "slowest_us", r.slowest_us)) {
        return r;
    }
    return std::nullopt;
}

}  // namespace

Result<Connector::Exit> Connector::wait(Millis timeout) {
    Exit exit;
    const auto deadline = Clock::now() + timeout;
    const bool eof = testing::read_until_eof(out_.get(), exit.out, deadline);
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    const auto status = eof ? child_.wait_for(std::max(left, Millis{100})) : std::nullopt;
    if (!status) {
        child_.kill_and_reap();
        return fail(ETIMEDOUT, "sft-connector (pid " + std::to_string(child_.pid()) +
                                   ") did not finish within " + std::to_string(timeout.count()) +
                                   " ms; output so far: " + exit.out);
    }
    exit.status = *status;
    exit.report = parse_report(exit.out);
    return exit;
}

// ---- the attempt log ----------------------------------------------------------------

std::map<std::uint32_t, std::uint64_t> AttemptLogView::totals() const {
    std::map<std::uint32_t, std::uint64_t> t;
    for (const Json& a : attempts)
        t[a.value("uid", 0U)] += 1;
    for (const Json& c : counted)
        t[c.value("uid", 0U)] += c.value("count", std::uint64_t{0});
    return t;
}

std::vector<Json> AttemptLogView::attempts_of(std::uint32_t uid) const {
    std::vector<Json> out;
    for (const Json& a : attempts) {
        if (a.value("uid", 0U) == uid)
            out.push_back(a);
    }
    return out;
}

// A record as JSON shows it: the history keeps a name's bytes exactly, JSON carries
// invalid UTF-8 as U+FFFD (as the stream and smtpfencectl show them).
Json as_json(const Json& j) {
    return Json::parse(j.dump(-1, ' ', false, Json::error_handler_t::replace));
}

// history.db read with the test's own SQL (not through nfq/history_query.h), so that
// the worker's writes are checked against the schema, not against our own reader.
AttemptLogView read_attempt_log(const std::string& state_dir) {
    AttemptLogView view;
    auto db = sql::Database::open(state_dir + "/history.db", sql::Database::Mode::ReadOnly);
    if (!db) {
        view.text = db.error().message();
        return view;
    }
    auto records = db->prepare(
        "SELECT r.id, r.epoch, r.uid, r.gid, r.user, r.account, r.explained, r.count, "
        "r.identified, r.pid, p.exe, p.cwd, p.cmdline, r.family, r.src, r.sport, r.dst, "
        "r.dport FROM records r LEFT JOIN procs p ON p.id = r.proc ORDER BY r.id");
    if (!records) {
        view.text = records.error().message();
        return view;
    }
    while (records->step().value_or(false)) {
        const auto& r = *records;
        if (r.int64(6) == 0) {
            Json j = {{"type", "counted"},  {"id", r.int64(0)},  {"epoch", r.int64(1)},
                      {"uid", r.int64(2)},  {"user", r.text(4)}, {"account", r.text(5)},
                      {"count", r.int64(7)}};
            j = as_json(j);
            view.text += j.dump() + "\n";
            view.counted.push_back(std::move(j));
        } else {
            Json j = {{"type", "attempt"},
                      {"id", r.int64(0)},
                      {"epoch", r.int64(1)},
                      {"uid", r.int64(2)},
                      {"gid", r.int64(3)},
                      {"user", r.text(4)},
                      {"account", r.text(5)},
                      {"identified", r.int64(8) != 0},
                      {"family", r.int64(13) == 6 ? "ipv6" : "ipv4"},
                      {"src", r.text(14)},
                      {"sport", r.int64(15)},
                      {"dst", r.text(16)},
                      {"dport", r.int64(17)}};
            if (r.int64(8) != 0) {
                j["pid"] = r.int64(9);
                j["exe"] = r.text(10);
                j["cwd"] = r.text(11);
                j["cmdline"] = r.text(12);
            }
            j = as_json(j);
            view.text += j.dump() + "\n";
            view.attempts.push_back(std::move(j));
        }
    }
    auto cp = db->prepare("SELECT set_handle, after_record, kernel FROM checkpoint");
    if (cp && cp->step().value_or(false)) {
        Json kernel = Json::parse(cp->text(2), nullptr, false);
        if (kernel.is_discarded())
            ++view.unparsable;
        view.checkpoints.push_back(
            {{"set_handle", cp->int64(0)}, {"after_record", cp->int64(1)}, {"kernel", kernel}});
    }
    return view;
}

// ---- the kernel and the processes ---------------------------------------------------

Result<std::map<std::uint32_t, std::uint64_t>> kernel_blocked(const Netns& ns,
                                                              const std::string& table) {
    const itest::RunResult r =
        itest::run(ns, {"nft", "-j", "list", "set", "inet", table, "blocked"});
    if (r.exit_code != 0)
        return fail(0, "nft -j list set inet " + table + " blocked", r.describe());
    const Json j = Json::parse(r.out, nullptr, false);
    if (j.is_discarded() || !j.contains("nftables"))
        return fail(0, "nft -j list set: not JSON", r.out);
    std::map<std::uint32_t, std::uint64_t> counts;
    for (const Json& item : j["nftables"]) {
        if (!item.contains("set") || !item["set"].contains("elem"))
            continue;
        for (const Json& e : item["set"]["elem"]) {
            if (!e.is_object() || !e.contains("elem"))
                return fail(0, "nft -j list set: an element without a counter", e.dump());
            const Json& elem = e["elem"];
            counts[elem.at("val").get<std::uint32_t>()] =
                elem.at("counter").at("packets").get<std::uint64_t>();
        }
    }
    return counts;
}

std::vector<pid_t> processes_running(const Netns& ns, const std::string& exe) {
    const itest::RunResult pids = itest::run(nullptr, {"ip", "netns", "pids", ns.name()});
    const std::string want = canonical(exe);
    std::vector<pid_t> out;
    std::stringstream ss(pids.out);
    pid_t pid = 0;
    while (ss >> pid) {
        std::error_code ec;
        const fs::path target = fs::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec);
        if (!ec && target.string() == want)
            out.push_back(pid);
    }
    return out;
}

std::string queue_binding(const Netns& ns, std::uint16_t num) {
    const itest::RunResult r = itest::run(ns, {"cat", "/proc/net/netfilter/nfnetlink_queue"});
    std::stringstream ss(r.out);
    std::string line;
    while (std::getline(ss, line)) {
        std::stringstream fields(line);
        unsigned q = 0;
        if (fields >> q && q == num)
            return line;
    }
    return {};
}

std::uint64_t queue_waiting(const Netns& ns, std::uint16_t num) {
    std::stringstream fields(queue_binding(ns, num));
    unsigned q = 0;
    unsigned long portid = 0;
    std::uint64_t total = 0;
    if (fields >> q >> portid >> total)
        return total;
    return 0;
}

// ---- the fixture --------------------------------------------------------------------

void WorkerTest::SetUp() {
    if (auto why = itest::skip_reason())
        GTEST_SKIP() << *why;
    table_ = unique_table_name();
    auto dir = itest::TempDir::create();
    ASSERT_TRUE(dir) << dir.error().message();
    dir_.emplace(std::move(*dir));
    for (const auto& [user, domain] : kUsers)
        make_dirs(docroot(user, domain));
    passwd_path_ = dir_->write("passwd", test_passwd(dir_->path()));
    group_path_ = dir_->write("group", kTestGroup);
    config_path_ = dir_->path() + "/smtpfence.conf";
    write_config("SMTP_BLOCK = \"1\"\n");
    // A copy every test account may execute, whatever the permissions on the way to
    // the build tree; it is the exe the records must name.
    make_dirs(dir_->path() + "/bin");
    connector_path_ = dir_->path() + "/bin/sft-connector";
    std::error_code ec;
    fs::copy_file(connector_build_path(), connector_path_, fs::copy_options::overwrite_existing,
                  ec);
    ASSERT_FALSE(ec) << "copy " << connector_build_path() << ": " << ec.message();
    ::chmod(connector_path_.c_str(), 0755);

    auto topo = Topology::create();
    ASSERT_TRUE(topo) << topo.error().message();
    topo_.emplace(std::move(*topo));
    // A real server behind the refused ports: a connection that got through would be
    // accepted (and seen), not refused by the remote kernel.
    auto smtp = itest::SmtpListener::start(topo_->remote, {25, 465, 587}, "remote.test");
    ASSERT_TRUE(smtp) << smtp.error().message();
    remote_smtp_.emplace(std::move(*smtp));
}

std::string WorkerTest::docroot(const std::string& user, const std::string& domain) const {
    return dir_->path() + "/home/" + user + "/domains/" + domain + "/public_html";
}

std::string WorkerTest::site_of(const Credentials& who) const {
    for (const auto& [user, domain] : kUsers) {
        if (who.name == user)
            return docroot(user, domain);
    }
    return "/tmp";
}

void WorkerTest::write_config(const std::string& text) {
    (void)dir_->write("smtpfence.conf", text);
}

itest::DaemonArgs WorkerTest::daemon_args(std::vector<std::string> extra) const {
    itest::DaemonArgs args;
    args.table = table_;
    args.config = config_path_;
    args.passwd = passwd_path_;
    args.group = group_path_;
    args.work_dir = dir_->path();
    args.extra = std::move(extra);
    return args;
}

void WorkerTest::start_daemon(std::vector<std::string> extra) {
    auto daemon = itest::Daemon::start(topo_->server, daemon_args(std::move(extra)));
    ASSERT_TRUE(daemon) << daemon.error().message();
    daemon_.emplace(std::move(*daemon));
}

std::optional<pid_t> WorkerTest::daemon_pid() const {
    const auto pids = processes_running(topo_->server, itest::smtpfenced_path());
    if (pids.size() != 1)
        return std::nullopt;
    return pids.front();
}

std::optional<pid_t> WorkerTest::worker_pid() const {
    const auto daemon = daemon_pid();
    if (!daemon)
        return std::nullopt;
    for (const pid_t pid : processes_running(topo_->server, worker_path())) {
        if (parent_of(pid) == *daemon)
            return pid;
    }
    return std::nullopt;
}

void WorkerTest::wait_for_worker(pid_t* pid, pid_t not_this, Millis timeout) {
    std::optional<pid_t> found;
    const bool up = itest::wait_until(
        [&] {
            found = worker_pid();
            // Ready = it wrote its pid to worker.ready once it takes SYNs (the queue is
            // bound by the daemon before any worker runs).
            return found && *found != not_this &&
                   !queue_binding(topo_->server, kQueueNum).empty() &&
                   itest::read_file(state_dir() + "/worker.ready") == std::to_string(*found) + "\n";
        },
        timeout, 25ms);
    ASSERT_TRUE(up) << "no worker (other than pid " << not_this << ") bound to NFQUEUE "
                    << kQueueNum << " within " << timeout.count() << " ms\n"
                    << diagnostics();
    *pid = *found;
}

Result<Connector> WorkerTest::start_connector(const Credentials& who, const std::string& cwd,
                                              const std::vector<std::string>& args) {
    std::vector<std::string> argv{connector_path_};
    argv.insert(argv.end(), args.begin(), args.end());
    const testing::Argv c_argv(argv);
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    auto out = testing::make_pipe();
    if (!out)
        return std::unexpected(out.error());

    const int ns_fd = topo_->server.fd();
    auto child = testing::spawn([&]() -> int {
        // Only async-signal-safe calls from here on: the parent may have threads.
        ::setpgid(0, 0);
        ::dup2(out->write.get(), STDOUT_FILENO);
        ::dup2(out->write.get(), STDERR_FILENO);
        ::dup2(devnull.get(), STDIN_FILENO);
        if (!testing::enter_netns(ns_fd)) {
            testing::write_text(STDERR_FILENO, "spawn: setns failed\n");
            return 126;
        }
        testing::close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        if (!testing::become(who)) {
            testing::write_text(STDERR_FILENO, "spawn: dropping credentials failed\n");
            return 126;
        }
        // After dropping root: the account itself must be able to enter it.
        if (::chdir(cwd.c_str()) != 0) {
            testing::write_text(STDERR_FILENO, "spawn: chdir failed\n");
            return 126;
        }
        ::execv(c_argv.ptrs[0], c_argv.ptrs.data());
        testing::write_text(STDERR_FILENO, "spawn: exec failed\n");
        return 127;
    });
    if (!child)
        return std::unexpected(child.error());
    out->write.reset();
    return Connector(std::move(*child), std::move(out->read), std::move(argv));
}

void WorkerTest::start_flood(const std::vector<FloodPart>& parts, std::uint64_t interval_us,
                             std::vector<Connector>* flood, bool parallel, int timeout_ms) {
    for (const FloodPart& part : parts) {
        std::vector<std::string> args{"--count",      std::to_string(part.count),
                                      "--timeout-ms", std::to_string(timeout_ms),
                                      part.address,   std::to_string(part.port)};
        if (parallel) {
            args.insert(args.begin(), "--parallel");
        } else {
            args.insert(args.begin(), {"--interval-us", std::to_string(interval_us)});
        }
        auto c = start_connector(part.who, site_of(part.who), args);
        ASSERT_TRUE(c) << c.error().message();
        flood->push_back(std::move(*c));
    }
}

void WorkerTest::finish_flood(std::vector<Connector>& flood, const std::vector<FloodPart>& parts,
                              std::map<pid_t, std::uint32_t>* uid_of_pid) {
    ASSERT_EQ(flood.size(), parts.size());
    for (std::size_t i = 0; i < flood.size(); ++i) {
        const FloodPart& part = parts[i];
        (*uid_of_pid)[flood[i].pid()] = part.who.uid;
        auto exit = flood[i].wait(90s);
        ASSERT_TRUE(exit) << exit.error().message() << "\n" << diagnostics();
        ASSERT_TRUE(exit->report) << part.who.name
                                  << "'s connector: " << itest::describe_status(exit->status)
                                  << ": " << exit->out;
        const ConnectorReport& r = *exit->report;
        EXPECT_EQ(r.refused, part.count) << part.who.name << " -> " << part.address << " port "
                                         << part.port << ": " << exit->out;
        EXPECT_EQ(r.connected, 0U) << part.who.name << ": connects got through";
        EXPECT_EQ(r.timed_out, 0U) << part.who.name << ": connects neither refused nor answered";
        EXPECT_EQ(r.other, 0U) << part.who.name << ": " << errno_text(r.last_errno);
    }
    EXPECT_EQ(remote_smtp_->accepted(), 0U) << "the remote server accepted blocked connections";
}

bool WorkerTest::any_running(std::vector<Connector>& flood) {
    bool running = false;
    for (Connector& c : flood)
        running = c.running() || running;
    return running;
}

std::string WorkerTest::diagnostics() {
    std::string s;
    if (topo_) {
        auto kernel = kernel_blocked(topo_->server, table_);
        s += "--- kernel blocked counters: " +
             (kernel ? describe_counts(*kernel) : kernel.error().message()) + "\n";
        s += "--- nfnetlink_queue " + std::to_string(kQueueNum) + ": " +
             queue_binding(topo_->server, kQueueNum) + "\n";
    }
    if (dir_) {
        const AttemptLogView log = read_attempt_log(state_dir());
        s += "--- attempt log totals: " + describe_counts(log.totals()) + " (" +
             std::to_string(log.attempts.size()) + " attempt records, " +
             std::to_string(log.counted.size()) + " counted records, " +
             std::to_string(log.checkpoints.size()) + " checkpoints)\n";
        s += "--- attempt log (end):\n" + tail(log.text, 4000) + "\n";
    }
    if (daemon_)
        s += "--- smtpfenced log (end):\n" + tail(daemon_->log(), 4000) + "\n";
    return s;
}

void WorkerTest::expect_exact_totals(const std::map<std::uint32_t, std::uint64_t>& expected,
                                     Millis timeout) {
    std::map<std::uint32_t, std::uint64_t> log_totals;
    std::map<std::uint32_t, std::uint64_t> kernel;
    const auto read_both = [&] {
        log_totals = read_attempt_log(state_dir()).totals();
        auto k = kernel_blocked(topo_->server, table_);
        kernel = k ? *k : std::map<std::uint32_t, std::uint64_t>{};
    };
    (void)itest::wait_until(
        [&] {
            read_both();
            return log_totals == expected && kernel == expected;
        },
        timeout, 100ms);
    // The worker reconciles every second: a late record (an attempt counted twice)
    // would show within the next period, so look again after more than one.
    std::this_thread::sleep_for(1600ms);
    read_both();
    EXPECT_EQ(describe_counts(log_totals), describe_counts(expected))
        << "per-uid totals of the attempt log (attempt records + counted) differ from the "
           "refused connects\n"
        << diagnostics();
    EXPECT_EQ(describe_counts(kernel), describe_counts(expected))
        << "the kernel's blocked counters differ from the refused connects\n";
    const AttemptLogView log = read_attempt_log(state_dir());
    EXPECT_EQ(log.unparsable, 0U) << "lines of the attempt log that are not records";
}

void WorkerTest::expect_attempts_name_only(const std::map<pid_t, std::uint32_t>& uid_of_pid,
                                           unsigned limit) {
    std::set<std::uint32_t> uids;
    for (const auto& [pid, uid] : uid_of_pid)
        uids.insert(uid);
    std::map<pid_t, unsigned> per_pid;
    const AttemptLogView log = read_attempt_log(state_dir());
    for (const Json& a : log.attempts) {
        const auto uid = a.value("uid", 0U);
        EXPECT_TRUE(uids.contains(uid)) << "a record of an unexpected uid: " << a.dump();
        if (!a.value("identified", false)) {
            EXPECT_FALSE(a.contains("pid")) << "an unidentified record names a pid: " << a.dump();
            continue;
        }
        const auto pid = a.value("pid", pid_t{0});
        const auto it = uid_of_pid.find(pid);
        if (it == uid_of_pid.end()) {
            ADD_FAILURE() << "a record names pid " << pid
                          << ", none of the test's processes: " << a.dump();
            continue;
        }
        EXPECT_EQ(uid, it->second) << "pid " << pid << " belongs to another uid: " << a.dump();
        ++per_pid[pid];
    }
    for (const auto& [pid, n] : per_pid) {
        EXPECT_LE(n, limit) << "pid " << pid << " was explained " << n << " times (at most "
                            << limit << ")";
    }
}

}  // namespace smtpfence::wtest
