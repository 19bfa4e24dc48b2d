// Least privilege (docs/least-privilege.md, common/privileges.h): the running daemon
// and its worker hold exactly the documented capability sets, read from
// /proc/PID/status, and still do all of their work with them: a reload and an allowlist
// change (netlink), `smtpfencectl test` (setuid/setgid), an attempt of another uid
// explained with its process (/proc/PID/fd, exe, cwd), DirectAdmin's mail:mail files
// written and created as mail's (DAC override, chown), CSF's legacy iptables rules seen
// through iptables-legacy-save (the bounding set). A daemon started without what it
// needs stops and names it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "common/privileges.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using nlohmann::json;

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

std::optional<pid_t> parse_pid(const std::string& text) {
    try {
        std::size_t used = 0;
        const long pid = std::stol(text, &used);
        if (pid <= 0 || (used < text.size() && text[used] != '\n'))
            return std::nullopt;
        return static_cast<pid_t>(pid);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

// PPid: from /proc/PID/status, nullopt when the process is gone.
std::optional<pid_t> parent_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("PPid:"))
            return parse_pid(line.substr(line.find_first_not_of(" \t", 5)));
    }
    return std::nullopt;
}

std::string exe_of(pid_t pid) {
    std::error_code ec;
    return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).string();
}

// The worker's attempt records of uid (type "attempt").
std::vector<json> attempts_of(const std::string& state_dir, std::uint32_t uid) {
    std::vector<json> out;
    std::ifstream in(state_dir + "/attempts.jsonl");
    std::string line;
    while (std::getline(in, line)) {
        json j = json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("type", "") == "attempt" && j.value("uid", 0U) == uid)
            out.push_back(std::move(j));
    }
    return out;
}

// What /proc/PID/status says about pid's capabilities, as one line for messages.
std::string describe(const CapabilityReport& r) {
    return "CapEff: " + r.effective.to_string() + "; CapPrm: " + r.permitted.to_string() +
           "; CapInh: " + r.inheritable.to_string() + "; CapAmb: " + r.ambient.to_string() +
           "; CapBnd: " + r.bounding.to_string();
}

class PrivilegesTest : public FenceTest {
  protected:
    [[nodiscard]] std::string state_dir() const { return dir_->path() + "/state"; }
    [[nodiscard]] std::string socket_path() const { return dir_->path() + "/control.sock"; }

    RunResult ctl(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {smtpfencectl_path(), "--socket", socket_path()};
        argv.insert(argv.end(), args.begin(), args.end());
        return run(topo_->server, argv, std::nullopt, 20s);
    }

    // The worker named by state/worker.ready once it is ready (it writes its pid there
    // after dropping its capabilities), and the daemon that started it.
    void wait_for_worker(pid_t* worker, pid_t* daemon) {
        std::optional<pid_t> w;
        std::optional<pid_t> d;
        const bool ready = wait_until(
            [&] {
                w = parse_pid(read_file(state_dir() + "/worker.ready"));
                d = w ? parent_of(*w) : std::nullopt;
                return w && d && exe_of(*d) == smtpfenced_path();
            },
            10s, 25ms);
        ASSERT_TRUE(ready) << "no ready worker of smtpfenced\n" << diagnostics();
        *worker = *w;
        *daemon = *d;
    }

    void expect_daemon_set(pid_t daemon) {
        const auto caps = capabilities_of(daemon);
        ASSERT_TRUE(caps) << caps.error().message();
        SCOPED_TRACE("smtpfenced pid " + std::to_string(daemon) + ": " + describe(*caps));
        EXPECT_EQ(caps->effective, kDaemonCapabilities);
        EXPECT_EQ(caps->permitted, kDaemonCapabilities);
        EXPECT_EQ(caps->bounding, kDaemonBoundingSet);
        EXPECT_TRUE(caps->inheritable.empty());
        EXPECT_TRUE(caps->ambient.empty());
        // The worker and iptables-save are executed with the bounding set as root.
        EXPECT_FALSE(caps->no_new_privs);
    }

    void expect_worker_set(pid_t worker, bool da_pipeline) {
        const auto caps = capabilities_of(worker);
        ASSERT_TRUE(caps) << caps.error().message();
        SCOPED_TRACE("smtpfence-worker pid " + std::to_string(worker) + ": " + describe(*caps));
        const CapabilitySet expected = worker_capabilities(da_pipeline);
        EXPECT_EQ(caps->effective, expected);
        EXPECT_EQ(caps->permitted, expected);
        EXPECT_EQ(caps->bounding, expected);
        EXPECT_TRUE(caps->inheritable.empty());
        EXPECT_TRUE(caps->ambient.empty());
        EXPECT_TRUE(caps->no_new_privs);
    }

    // telnet to the remote port 25 as who, from cwd: refused at once.
    void telnet_from(const Credentials& who, const std::string& cwd) {
        const RunResult r =
            run(topo_->server,
                {"sh", "-c",
                 "cd '" + cwd + "' && exec telnet " + std::string(Topology::kRemote4) + " 25"},
                who);
        EXPECT_TRUE(contains(r.output(), "Connection refused")) << r.describe();
    }

    // A folder of who's, readable by the uids the tests run as.
    std::string folder_of(const std::string& user) {
        const std::string d = dir_->path() + "/home/" + user + "/domains/shop.example/public_html";
        std::filesystem::create_directories(d);
        for (std::string p = d; p.size() > dir_->path().size();
             p = std::filesystem::path(p).parent_path())
            ::chmod(p.c_str(), 0755);
        return d;
    }

    // The attempt of who from cwd is explained with its process: the worker listed
    // /proc/PID/fd and read exe and cwd of another uid's process.
    void expect_explained(const Credentials& who, const std::string& cwd) {
        std::vector<json> records;
        const bool logged = wait_until(
            [&] {
                records = attempts_of(state_dir(), who.uid);
                return !records.empty();
            },
            10s, 50ms);
        ASSERT_TRUE(logged) << "no attempt record of " << who.name << "\n" << diagnostics();
        const json& a = records.back();
        EXPECT_TRUE(a.value("identified", false)) << a.dump() << "\n" << diagnostics();
        EXPECT_GT(a.value("pid", 0), 0) << a.dump();
        EXPECT_TRUE(contains(a.value("exe", ""), "telnet")) << a.dump();
        EXPECT_EQ(a.value("cwd", ""), cwd) << a.dump();
        EXPECT_TRUE(contains(a.value("cmdline", ""), "telnet")) << a.dump();
    }
};

TEST_F(PrivilegesTest, DaemonAndWorkerHoldExactlyTheDocumentedSetsAndStillWork) {
    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\nDA_PIPELINE = \"0\"\n"));
    pid_t worker = 0;
    pid_t daemon = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, &daemon));
    expect_daemon_set(daemon);
    expect_worker_set(worker, false);

    // The worker: bob's attempt from his folder, explained with its process.
    const std::string folder = folder_of("bob");
    telnet_from(kBob, folder);
    expect_explained(kBob, folder);

    // The daemon: `test` forks a child that becomes alice (CAP_SETUID, CAP_SETGID) ...
    RunResult r = ctl({"test", "alice", Topology::kRemote4, "25"});
    EXPECT_EQ(r.exit_code, 5) << r.describe();
    EXPECT_TRUE(contains(r.out, "refused")) << r.describe();
    // ... and changes the kernel's sets after the drop (CAP_NET_ADMIN).
    r = ctl({"allow", "alice"});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    expect_connected(kAlice, Topology::kRemote4, 25);
    r = ctl({"test", "alice", Topology::kRemote6, "587"});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_TRUE(contains(r.out, "connected")) << r.describe();

    // A reload with another queue number: the daemon, dropped, binds the new queue
    // and starts a new worker, which again drops to its set from the daemon's
    // bounding set.
    write_config("SMTP_BLOCK = \"1\"\nDA_PIPELINE = \"0\"\nNFQUEUE_NUM = \"2626\"\n");
    daemon_->signal(SIGHUP);
    pid_t second = 0;
    const bool restarted = wait_until(
        [&] {
            const auto w = parse_pid(read_file(state_dir() + "/worker.ready"));
            if (w && *w != worker && parent_of(*w) == daemon)
                second = *w;
            return second != 0;
        },
        10s, 50ms);
    ASSERT_TRUE(restarted) << "no new worker after the reload\n" << diagnostics();
    expect_worker_set(second, false);
    const json status = json::parse(ctl({"status", "--json"}).out, nullptr, false);
    ASSERT_FALSE(status.is_discarded());
    EXPECT_EQ(status["queue"].value("num", 0), 2626) << status.dump();
    EXPECT_TRUE(status["queue"].value("bound", false)) << status.dump();
    EXPECT_TRUE(daemon_->running()) << daemon_->log();
    expect_daemon_set(daemon);
    expect_refused(kBob, Topology::kRemote4, 25);
}

TEST_F(PrivilegesTest, WorkerWritesDirectAdminsMailFilesWithItsDaSet) {
    // /etc/virtual as on a DirectAdmin server: mail's, 0750, with a 0600 limit file of
    // mail's. Without CAP_DAC_OVERRIDE root could neither read nor write in it; without
    // CAP_CHOWN the files the worker creates would stay root's and Exim (as mail) could
    // not append to them.
    const std::string virt = dir_->path() + "/virtual";
    std::filesystem::create_directories(virt);
    std::ofstream(virt + "/limit_bob") << "3\n";
    ASSERT_EQ(::chown(virt.c_str(), kMail.uid, kMail.gid), 0);
    ASSERT_EQ(::chmod(virt.c_str(), 0750), 0);
    ASSERT_EQ(::chown((virt + "/limit_bob").c_str(), kMail.uid, kMail.gid), 0);
    ASSERT_EQ(::chmod((virt + "/limit_bob").c_str(), 0600), 0);

    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\nDA_PIPELINE = \"1\"\n"));
    pid_t worker = 0;
    pid_t daemon = 0;
    ASSERT_NO_FATAL_FAILURE(wait_for_worker(&worker, &daemon));
    expect_daemon_set(daemon);
    expect_worker_set(worker, true);

    const std::string folder = folder_of("bob");
    for (int i = 0; i < 3; ++i)
        telnet_from(kBob, folder);
    expect_explained(kBob, folder);

    // usage/ created 0750 mail:mail, usage/bob 0660 mail:mail, then appended to (as
    // mail's file) twice more: one byte per attempt.
    const std::string usage = virt + "/usage/bob";
    const bool counted = wait_until(
        [&] {
            std::error_code ec;
            return std::filesystem::file_size(usage, ec) >= 3 && !ec;
        },
        10s, 100ms);
    ASSERT_TRUE(counted) << diagnostics();
    EXPECT_EQ(read_file(usage), "111");
    for (const auto& [path, mode] : {std::pair{virt + "/usage", 0750U}, std::pair{usage, 0660U},
                                     std::pair{virt + "/usage/bob.bytes", 0660U}}) {
        struct stat st {};
        ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
        EXPECT_EQ(st.st_uid, kMail.uid) << path << ": not handed to mail (CAP_CHOWN)";
        EXPECT_EQ(st.st_gid, kMail.gid) << path;
        EXPECT_EQ(st.st_mode & 07777U, mode) << path;
    }
    const std::string bytes = read_file(virt + "/usage/bob.bytes");
    EXPECT_TRUE(contains(bytes, "&path=" + folder + "\n")) << bytes;

    // The limit of 3 (read from mail's 0600 file) reached: one notice, in a file the
    // worker created as mail's.
    const std::string queue = virt + "/mail_task.queue";
    const bool noticed = wait_until(
        [&] { return contains(read_file(queue), "action=limit&username=bob&"); }, 10s, 100ms);
    EXPECT_TRUE(noticed) << diagnostics();
    struct stat st {};
    ASSERT_EQ(::stat(queue.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, kMail.uid);
    EXPECT_EQ(st.st_mode & 07777U, 0660U);
    EXPECT_FALSE(contains(daemon_->log(), "Permission denied")) << daemon_->log();
    EXPECT_FALSE(contains(daemon_->log(), "Operation not permitted")) << daemon_->log();
}

// CSF's SMTP_BLOCK loaded with iptables-legacy: the daemon (CAP_NET_RAW only in its
// bounding set) runs iptables-legacy-save, which gets the bounding set as root and
// needs CAP_NET_RAW for its raw socket.
TEST_F(PrivilegesTest, DroppedDaemonStillSeesCsfsLegacyRules) {
    const std::string rules =
        "*filter\n:SMTPOUTPUT - [0:0]\n-A OUTPUT -j SMTPOUTPUT\n"
        "-A SMTPOUTPUT -p tcp -m multiport --dports 25,465,587 -m owner --uid-owner 0 -j "
        "ACCEPT\n"
        "-A SMTPOUTPUT -p tcp -m multiport --dports 25,465,587 -j REJECT\nCOMMIT\n";
    const std::string file = dir_->write("csf.rules", rules);
    const RunResult loaded =
        run(topo_->server, {"sh", "-c", "iptables-legacy-restore < '" + file + "'"});
    if (loaded.exit_code != 0 && contains(loaded.output(), "not found"))
        GTEST_SKIP() << "iptables-legacy-restore is not installed";
    ASSERT_EQ(loaded.exit_code, 0) << loaded.describe();

    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\n", {"--no-worker"}));
    const RunResult r = ctl({"status", "--json"});
    const json j = json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.describe();
    EXPECT_TRUE(j["csf"].value("rules_loaded", false)) << j.dump() << "\n" << daemon_->log();
    EXPECT_TRUE(
        contains(j["csf"].value("explanation", ""), "iptables: chain SMTPOUTPUT with 2 rule(s)"))
        << j.dump();
}

// Started without CAP_SETUID and CAP_SETGID (a bounding set that lacks them), the
// daemon stops before serving, naming them; the rules it applied before the drop do
// not exist yet (it drops before its first apply).
TEST_F(PrivilegesTest, ADaemonWithoutWhatItNeedsStopsAndNamesIt) {
    write_config("SMTP_BLOCK = \"1\"\n");
    const RunResult r = run(
        topo_->server,
        {"setpriv", "--bounding-set=-all,+net_admin,+setpcap", smtpfenced_path(), "--foreground",
         "--table", table_, "--config", config_path_, "--control-socket", socket_path(),
         "--state-dir", state_dir(), "--passwd", passwd_path_, "--group", group_path_},
        std::nullopt, 20s);
    EXPECT_EQ(r.exit_code, 1) << r.describe();
    EXPECT_TRUE(contains(r.err, "cannot keep CAP_SETGID, CAP_SETUID: not in the permitted set"))
        << r.describe();
    auto exists = server_engine().table_exists(table_);
    ASSERT_TRUE(exists) << exists.error().message();
    EXPECT_FALSE(*exists) << "the daemon applied rules before it dropped its capabilities";
}

}  // namespace
}  // namespace smtpfence::itest
