// The local threshold alert against the real daemon and worker (ctl/local_alerts.h,
// docs/alerts.md): bob, working in a folder with a hostile name, goes over
// ALERT_ATTEMPTS; ALERT_COMMAND (a script that saves its environment) runs once for
// him and not again while he keeps going within the interval; a real exim (Debian's
// exim4-daemon-light, own configuration) on the server namespace's loopback port 25
// receives the mail with the account, count, last process and folder.
//
// "Not again" without a timed wait: after bob's second round alice goes over too, and
// her alert can only come from a feed that read the counters after bob's second round
// (which that feed or an earlier one saw: it did not alert bob again).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

namespace fs = std::filesystem;

// A folder name with a quote, a newline, a CR and what would be a header and an SMTP
// command if it reached the mail unescaped.
const std::string kHostileFolder = "x\"y'\nSubject: injected\r\n.\r\nRCPT TO:<a@b>";

class LocalAlertTest : public FenceTest {
  protected:
    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        alerts_ = dir_->path() + "/alerts";
        fs::create_directories(alerts_);
        // Each run of the command: its whole environment, NUL-separated, in a file of
        // its own (written whole, then renamed).
        // The command runs as root, so it must sit where only root can change it (not
        // under the test's /tmp folder, which everyone may write to): a folder of its own
        // under /run, removed in TearDown.
        char run_dir[] = "/run/smtpfence-alert-XXXXXX";
        ASSERT_NE(::mkdtemp(run_dir), nullptr) << errno_text(errno);
        script_dir_ = run_dir;
        ::chmod(script_dir_.c_str(), 0755);
        script_ = script_dir_ + "/alert.sh";
        {
            std::ofstream out(script_);
            out << "#!/bin/sh\n"
                   "f=\""
                << alerts_
                << "/$SMTPFENCE_UID.$$\"\n"
                   "env -0 >\"$f.tmp\" && mv \"$f.tmp\" \"$f.env\"\n";
        }
        ::chmod(script_.c_str(), 0755);
        folder_ = dir_->path() + "/" + kHostileFolder;
        fs::create_directories(folder_);
        ::chmod(folder_.c_str(), 0755);
        ASSERT_NO_FATAL_FAILURE(start_exim());
    }

    // exim -bdf in the server namespace on 127.0.0.1 and ::1 port 25, delivering every
    // message for @localhost to MAIL/LOCALPART (as Debian-exim: exim never delivers as
    // root).
    void start_exim() {
        const std::string exim = dir_->path() + "/exim";
        // The host's account (exim reads the host's passwd, not the test's).
        passwd entry{};
        passwd* pw = nullptr;
        std::array<char, 4096> buf{};
        ASSERT_EQ(::getpwnam_r("Debian-exim", &entry, buf.data(), buf.size(), &pw), 0);
        ASSERT_NE(pw, nullptr) << "no Debian-exim account (exim4-daemon-light installed?)";
        for (const char* sub : {"spool", "log", "mail"}) {
            fs::create_directories(exim + "/" + sub);
            ASSERT_EQ(::chown((exim + "/" + sub).c_str(), pw->pw_uid, pw->pw_gid), 0);
        }
        mail_dir_ = exim + "/mail";
        // Every message to one mbox file (exim refuses a file name made of the recipient's
        // local part, which the sender chose), with the recipient in Envelope-to:.
        std::string text = R"(primary_hostname = server.test
spool_directory = DIR/spool
log_file_path = DIR/log/%slog
pid_file_path = DIR/exim.pid
daemon_smtp_ports = 25
local_interfaces = <; 127.0.0.1 ; ::1
tls_advertise_hosts =
keep_environment =
host_lookup =
rfc1413_hosts =
domainlist local_domains = localhost
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  accept domains = +local_domains
  deny message = local domains only
begin routers
local:
  driver = accept
  domains = +local_domains
  transport = mailbox
begin transports
mailbox:
  driver = appendfile
  file = DIR/mail/mbox
  envelope_to_add
  user = Debian-exim
  mode = 0644
)";
        for (auto at = text.find("DIR"); at != std::string::npos; at = text.find("DIR", at))
            text.replace(at, 3, exim);
        const std::string conf = dir_->write("exim.conf", text);
        // exim takes -C from root only for a root-owned file nobody else may write.
        ::chmod(conf.c_str(), 0644);
        const std::string pid_file = exim + "/exim.pid";
        const std::string out = exim + "/stdout.log";
        auto child = spawn_in(topo_->server, [&]() -> int {
            ::setpgid(0, 0);
            const int null = ::open("/dev/null", O_RDONLY);
            const int log = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (null < 0 || log < 0 || ::dup2(null, 0) < 0 || ::dup2(log, 1) < 0 ||
                ::dup2(log, 2) < 0)
                return 126;
            testing::close_other_fds({0, 1, 2});
            const std::vector<std::string> args{"/usr/sbin/exim4", "-C", conf, "-bdf"};
            const testing::Argv argv(args);
            ::execv(argv.ptrs[0], argv.ptrs.data());
            return 127;
        });
        ASSERT_TRUE(child) << child.error().message();
        exim_ = std::move(*child);
        ASSERT_TRUE(wait_until([&] { return fs::exists(pid_file); }, 10s))
            << "exim did not start ("
            << (exim_.running() ? std::string("running") : describe_status(*exim_.status()))
            << "): " << read_file(out) << read_file(exim + "/log/mainlog")
            << read_file(exim + "/log/paniclog");
    }

    // who, in the hostile folder, makes n connection attempts to the remote's port 25.
    void attempts(const Credentials& who, int n) {
        // A refused connect fails the subshell; one that connects ends the loop with 8.
        const std::string loop =
            "cd \"$1\" || exit 9; for i in $(seq \"$2\"); do (exec 3<>/dev/tcp/$3/25) "
            "2>/dev/null && exit 8; done; exit 0";
        const RunResult r =
            run(topo_->server,
                {"bash", "-c", loop, "attempts", folder_, std::to_string(n), Topology::kRemote4},
                who, 30s);
        ASSERT_EQ(r.exit_code, 0) << who.name << ": " << r.describe();
    }

    // The environments the command was run with for uid, one map each.
    std::vector<std::map<std::string, std::string>> runs_for(uid_t uid) const {
        std::vector<std::map<std::string, std::string>> out;
        for (const auto& e : fs::directory_iterator(alerts_)) {
            const std::string name = e.path().filename();
            if (!name.starts_with(std::to_string(uid) + ".") || !name.ends_with(".env"))
                continue;
            const std::string text = read_file(e.path());
            std::map<std::string, std::string> env;
            for (std::size_t start = 0; start < text.size();) {
                const auto end = text.find('\0', start);
                const std::string var = text.substr(start, end - start);
                const auto eq = var.find('=');
                env[var.substr(0, eq)] = var.substr(eq + 1);
                start = end == std::string::npos ? text.size() : end + 1;
            }
            out.push_back(std::move(env));
        }
        return out;
    }

    [[nodiscard]] std::string mailbox() const { return read_file(mail_dir_ + "/mbox"); }
    // What a failure message needs besides the daemon's: exim's own logs.
    [[nodiscard]] std::string exim_logs() const {
        return read_file(mail_dir_ + "/../log/mainlog") + read_file(mail_dir_ + "/../log/paniclog");
    }

    void TearDown() override {
        if (!script_dir_.empty()) {
            std::error_code ec;
            fs::remove_all(script_dir_, ec);
        }
    }

    std::string alerts_, script_dir_, script_, folder_, mail_dir_;
    Child exim_;
};

TEST_F(LocalAlertTest, CommandAndMailOncePerAccountAndInterval) {
    ASSERT_NO_FATAL_FAILURE(
        start_daemon("ALERT_ATTEMPTS = \"5\"\n"
                     "ALERT_INTERVAL = \"600\"\n"
                     "ALERT_COMMAND = \"" +
                     script_ +
                     "\"\n"
                     "ALERT_EMAIL = \"root\"\n"));
    // The worker explains bob's attempts, and the window has its baseline (logged after
    // the first feed): what bob does next is within the interval.
    ASSERT_TRUE(wait_until([&] { return fs::exists(dir_->path() + "/state/worker.ready"); }, 20s))
        << diagnostics();
    ASSERT_TRUE(wait_until(
        [&] {
            return daemon_->log().find("local alerts on: at least 5 attempts") != std::string::npos;
        },
        20s))
        << diagnostics();
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, 6));
    ASSERT_TRUE(wait_until([&] { return runs_for(kBob.uid).size() == 1; }, 30s)) << diagnostics();

    // Bob keeps going: twice the threshold again, within the interval.
    ASSERT_NO_FATAL_FAILURE(attempts(kBob, 10));
    ASSERT_NO_FATAL_FAILURE(attempts(kAlice, 5));
    ASSERT_TRUE(wait_until([&] { return runs_for(kAlice.uid).size() == 1; }, 30s)) << diagnostics();
    ASSERT_TRUE(wait_until(
        [&] { return mailbox().find("Subject: smtpfence: alice made") != std::string::npos; }, 30s))
        << mailbox() << exim_logs() << diagnostics();

    const auto bob = runs_for(kBob.uid);
    ASSERT_EQ(bob.size(), 1U) << diagnostics();
    const auto& env = bob.front();
    EXPECT_EQ(env.at("SMTPFENCE_ACCOUNT"), "bob");
    EXPECT_EQ(env.at("SMTPFENCE_USER"), "bob");
    EXPECT_EQ(env.at("SMTPFENCE_UID"), "2002");
    EXPECT_GE(std::stoull(env.at("SMTPFENCE_COUNT")), 5U);
    EXPECT_LE(std::stoull(env.at("SMTPFENCE_COUNT")), 6U);
    EXPECT_EQ(env.at("SMTPFENCE_INTERVAL"), "600");
    EXPECT_EQ(env.at("SMTPFENCE_EXE"), "/usr/bin/bash");
    EXPECT_EQ(env.at("SMTPFENCE_CWD"), folder_);
    EXPECT_NE(env.at("SMTPFENCE_CMDLINE").find("bash"), std::string::npos);
    EXPECT_FALSE(env.at("SMTPFENCE_PID").empty());
    // Nothing else of the daemon's environment (the shell adds PWD, and may add SHLVL and
    // _, itself).
    std::set<std::string> names;
    for (const auto& [name, value] : env) {
        if (name != "PWD" && name != "SHLVL" && name != "_")
            names.insert(name);
    }
    EXPECT_EQ(names,
              (std::set<std::string>{"PATH", "SMTPFENCE_ACCOUNT", "SMTPFENCE_USER", "SMTPFENCE_UID",
                                     "SMTPFENCE_COUNT", "SMTPFENCE_INTERVAL", "SMTPFENCE_PID",
                                     "SMTPFENCE_EXE", "SMTPFENCE_CWD", "SMTPFENCE_CMDLINE"}));

    // One mail per alert: bob's and alice's, each with one Subject, the folder escaped on
    // one line.
    const std::string box = mailbox();
    std::size_t subjects = 0;
    for (auto at = box.find("\nSubject:"); at != std::string::npos;
         at = box.find("\nSubject:", at + 1)) {
        ++subjects;
    }
    EXPECT_EQ(subjects, 2U) << box;
    EXPECT_NE(box.find("Subject: smtpfence: bob made " + env.at("SMTPFENCE_COUNT") +
                       " SMTP attempts in 600 s on"),
              std::string::npos)
        << box;
    EXPECT_NE(box.find("  program: /usr/bin/bash\n"), std::string::npos) << box;
    EXPECT_NE(box.find("  folder:  " + dir_->path() +
                       "/x\"y'\\x0aSubject: injected\\x0d\\x0a.\\x0d\\x0aRCPT TO:<a@b>\n"),
              std::string::npos)
        << box;
    EXPECT_NE(box.find("Account bob (uid 2002, user bob) made"), std::string::npos) << box;
    EXPECT_EQ(box.find("\nSubject: injected"), std::string::npos) << box;
    EXPECT_NE(box.find("Auto-Submitted: auto-generated"), std::string::npos) << box;
    EXPECT_NE(box.find("Envelope-to: root@localhost\n"), std::string::npos) << box;
}

}  // namespace
}  // namespace smtpfence::itest
