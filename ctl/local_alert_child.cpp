#include "ctl/local_alert_child.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <thread>

#include "common/fd.h"
#include "common/log.h"
#include "common/privileges.h"
#include "ctl/local_alert_mail.h"
#include "nfq/history_query.h"
#include "policy/accounts.h"

namespace smtpfence {
namespace {

// A history lookup that takes longer is given up: the alert goes out without the
// process.
constexpr std::chrono::seconds kHistoryLimit{5};

std::string text_field(const nlohmann::json& record, const char* key) {
    const auto it = record.find(key);
    return it != record.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::optional<std::int64_t> number_field(const nlohmann::json& record, const char* key) {
    const auto it = record.find(key);
    if (it == record.end() || !it->is_number_integer())
        return std::nullopt;
    return it->get<std::int64_t>();
}

std::string host_name() {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0')
        return "localhost";
    return name;
}

void reset_signals() {
    sigset_t none;
    sigemptyset(&none);
    (void)pthread_sigmask(SIG_SETMASK, &none, nullptr);
}

// The uid's newest attempt in the history: one within the interval, waiting a little
// for it (the kernel counts a SYN as soon as the worker's verdict is in, and the worker
// commits its record right after), else whatever is there.
std::optional<nlohmann::json> last_attempt(const AlertJob& job) {
    std::optional<nlohmann::json> last;
    const auto since = std::time(nullptr) - job.settings.interval.count();
    for (int attempt = 0; attempt < 3; ++attempt) {
        if (attempt > 0)
            std::this_thread::sleep_for(std::chrono::seconds(1));
        auto reader = nfq::HistoryReader::open(job.state_dir);
        if (!reader)
            continue;
        reader->set_deadline(std::chrono::steady_clock::now() + kHistoryLimit);
        auto page = reader->attempts(nfq::AttemptQuery{.limit = 1, .only_uid = job.uid});
        if (!page) {
            log::warning("alert: uid " + std::to_string(job.uid) +
                         ": history: " + page.error().message());
            return last;
        }
        if (!page->records.empty()) {
            last = page->records.back();
            if (number_field(*last, "epoch").value_or(0) >= since)
                return last;
        }
    }
    return last;
}

}  // namespace

AlertFacts look_up_alert(const AlertJob& job) {
    AlertFacts f{.uid = job.uid, .count = job.count, .interval = job.settings.interval};
    if (const auto last = last_attempt(job)) {
        const nlohmann::json& r = *last;
        f.account = text_field(r, "account");
        f.user = text_field(r, "user");
        f.exe = text_field(r, "exe");
        f.cwd = text_field(r, "cwd");
        f.cmdline = text_field(r, "cmdline");
        f.pid = number_field(r, "pid");
        f.last_epoch = number_field(r, "epoch");
    }
    if (f.user.empty()) {
        if (auto db = AccountDb::load(job.passwd_path, job.group_path)) {
            if (const Account* a = db->user_by_uid(job.uid))
                f.user = a->name;
        }
    }
    if (f.account.empty())
        f.account = f.user.empty() ? std::to_string(job.uid) : f.user;
    return f;
}

std::vector<std::string> alert_environment(const AlertFacts& f) {
    std::vector<std::string> env = {
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "SMTPFENCE_ACCOUNT=" + f.account,
        "SMTPFENCE_USER=" + f.user,
        "SMTPFENCE_UID=" + std::to_string(f.uid),
        "SMTPFENCE_COUNT=" + std::to_string(f.count),
        "SMTPFENCE_INTERVAL=" + std::to_string(f.interval.count()),
        "SMTPFENCE_PID=" + (f.pid ? std::to_string(*f.pid) : std::string()),
        "SMTPFENCE_EXE=" + f.exe,
        "SMTPFENCE_CWD=" + f.cwd,
        "SMTPFENCE_CMDLINE=" + f.cmdline,
    };
    return env;
}

Result<void> run_alert_command(const std::string& command, const std::vector<std::string>& env,
                               std::chrono::seconds limit) {
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (const std::string& e : env)
        envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    char* argv[] = {const_cast<char*>(command.c_str()), nullptr};
    const pid_t pid = fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid == 0) {
        (void)setpgid(0, 0);
        reset_signals();
        const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null >= 0)
            (void)dup2(null, STDIN_FILENO);
        ::close_range(STDERR_FILENO + 1, ~0U, 0);
        ::execve(command.c_str(), argv, envp.data());
        _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (true) {
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid)
            break;
        if (done < 0 && errno != EINTR)
            return fail(errno, "waitpid");
        if (std::chrono::steady_clock::now() >= deadline) {
            (void)::kill(-pid, SIGKILL);
            (void)::kill(pid, SIGKILL);
            (void)::waitpid(pid, &status, 0);
            return fail(ETIMEDOUT, command, "killed after " + std::to_string(limit.count()) + " s");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return {};
    if (WIFEXITED(status)) {
        return fail(0, command,
                    "exit status " + std::to_string(WEXITSTATUS(status)) +
                        (WEXITSTATUS(status) == 127 ? " (could not run it?)" : ""));
    }
    return fail(0, command, "killed by signal " + std::to_string(WTERMSIG(status)));
}

// Nothing of the daemon's but stdout and stderr, no capability (as uid 0 it still reads
// root's history.db and connects to port 25: our own rules let root through), a time
// limit for all of it. The daemon runs no thread, so the fork copied one.
void run_alert_child(const AlertJob& job) {
    ::alarm(kAlertChildAlarmSeconds);
    reset_signals();
    ::close_range(STDERR_FILENO + 1, ~0U, 0);
    auto dropped = drop_to(CapabilitySet{}, kDaemonBoundingSet);
    if (dropped)
        dropped = forbid_new_privileges();
    if (!dropped) {
        log::error("alert: " + dropped.error().message());
        _exit(1);
    }
    const AlertFacts facts = look_up_alert(job);
    const std::string who =
        "alert: account " + facts.account + " (uid " + std::to_string(facts.uid) + ")";
    if (!job.settings.command.empty()) {
        if (auto ran = run_alert_command(job.settings.command, alert_environment(facts),
                                         kAlertCommandLimit);
            !ran) {
            log::error(who + ": ALERT_COMMAND: " + ran.error().message());
        }
    }
    if (!job.settings.email.empty()) {
        const std::string to = alert_recipient(job.settings.email);
        const std::string host = host_name();
        if (auto sent = send_mail(SmtpTarget{}, to,
                                  alert_message(facts, to, host, std::time(nullptr)), host);
            !sent) {
            log::error(who + ": ALERT_EMAIL: " + sent.error().message());
        } else {
            log::info(who + ": mailed to " + to);
        }
    }
    _exit(0);
}

}  // namespace smtpfence
