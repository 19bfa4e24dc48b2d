// What a local threshold alert does once it fired (ctl/local_alerts.h), in a child the
// daemon forks per alert: look up the account's last process and folder in history.db
// (read only), run ALERT_COMMAND with them in its environment, mail ALERT_EMAIL through
// the local MTA (ctl/local_alert_mail.h). Each step has a time limit; the daemon's loop
// never waits for any of it. docs/alerts.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "ctl/local_alerts.h"

namespace smtpfence {

struct AlertJob {
    AlertSettings settings;
    std::uint32_t uid = 0;
    std::uint64_t count = 0;
    std::string state_dir, passwd_path, group_path;
};

// The account's facts at the time of the alert. Empty strings when unknown (no
// attempt of the uid in the history: the worker was down, or explains none).
struct AlertFacts {
    std::uint32_t uid = 0;
    std::uint64_t count = 0;
    std::chrono::seconds interval{0};
    std::string account{};  // the hosting account billed; the user name or the uid as text
    std::string user{};     // the uid's passwd name
    std::optional<std::int64_t> pid{}, last_epoch{};
    std::string exe{}, cwd{}, cmdline{};
};

// From the newest attempt of job.uid in STATE_DIR/history.db, else the passwd file.
[[nodiscard]] AlertFacts look_up_alert(const AlertJob& job);

// ALERT_COMMAND's whole environment: PATH and the SMTPFENCE_* variables, the values as
// they are (a folder name with a newline keeps it; an environment string holds any byte
// but NUL, which no path or command line has).
[[nodiscard]] std::vector<std::string> alert_environment(const AlertFacts& facts);

// Runs command (an absolute path, no shell, no argument) with env, its stdin /dev/null,
// its stdout and stderr the daemon's (the journal under systemd), no other fd, in a
// process group of its own that is killed after limit. Error: it could not run, was
// killed, or exited non-zero.
[[nodiscard]] Result<void> run_alert_command(const std::string& command,
                                             const std::vector<std::string>& env,
                                             std::chrono::seconds limit);

// The child: never returns. Every step logs its failure; the exit status is not read.
[[noreturn]] void run_alert_child(const AlertJob& job);

inline constexpr std::chrono::seconds kAlertCommandLimit{30};
// The whole child, whatever hangs (SMTP timeouts included): SIGALRM ends it.
inline constexpr unsigned kAlertChildAlarmSeconds = 90;

}  // namespace smtpfence
