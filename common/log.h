// Logging for the daemon and tools: to stderr (which systemd's journal captures),
// with a level prefix the journal understands (sd-daemon(3) "<N>" prefixes) when
// stderr is the journal, plain "smtpfenced: warning: ..." otherwise.
#pragma once

#include <string>
#include <string_view>

namespace smtpfence::log {

enum class Level { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

void set_program(std::string_view name);
// The name set_program gave ("smtpfence" before), the journal's SYSLOG_IDENTIFIER.
[[nodiscard]] const std::string& program();
// Whether stderr is connected to the journal: JOURNAL_STREAM (set by systemd) names
// stderr's device and inode (systemd.exec(5)); decided once.
[[nodiscard]] bool stderr_is_journal();
void set_verbose(bool verbose);
// From now on, write to syslog (LOG_DAEMON) instead of stderr (a detached daemon).
void use_syslog();
void write(Level level, std::string_view message);

inline void error(std::string_view m) {
    write(Level::Error, m);
}
inline void warning(std::string_view m) {
    write(Level::Warning, m);
}
inline void notice(std::string_view m) {
    write(Level::Notice, m);
}
inline void info(std::string_view m) {
    write(Level::Info, m);
}
inline void debug(std::string_view m) {
    write(Level::Debug, m);
}

}  // namespace smtpfence::log
