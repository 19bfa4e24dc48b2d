#include "common/log.h"

#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace smtpfence::log {
namespace {

std::string g_program = "smtpfence";
bool g_verbose = false;
bool g_syslog = false;
std::mutex g_mutex;

const char* level_word(Level level) {
    switch (level) {
        case Level::Error:
            return "error: ";
        case Level::Warning:
            return "warning: ";
        case Level::Notice:
        case Level::Info:
            return "";
        case Level::Debug:
            return "debug: ";
    }
    return "";
}

}  // namespace

// systemd sets JOURNAL_STREAM to "DEVICE:INODE" of the stream it connects stderr to;
// a stderr redirected since (a test's log file, a child's pipe) no longer matches, and
// then a "<N>" prefix would be noise and a journal entry would go to a journal the
// output does not.
bool stderr_is_journal() {
    static const bool is_journal = [] {
        const char* env =
            std::getenv("JOURNAL_STREAM");  // NOLINT(concurrency-mt-unsafe): read once
        unsigned long long dev = 0;
        unsigned long long ino = 0;
        if (env == nullptr || std::sscanf(env, "%llu:%llu", &dev, &ino) != 2)
            return false;
        struct stat st {};
        return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
    }();
    return is_journal;
}

const std::string& program() {
    return g_program;
}

void set_program(std::string_view name) {
    g_program = name;
}
void set_verbose(bool verbose) {
    g_verbose = verbose;
}

void use_syslog() {
    // openlog keeps the pointer: g_program lives as long as the process.
    openlog(g_program.c_str(), LOG_PID, LOG_DAEMON);
    g_syslog = true;
}

void write(Level level, std::string_view message) {
    if (level == Level::Debug && !g_verbose)
        return;
    if (g_syslog) {
        syslog(static_cast<int>(level), "%.*s", static_cast<int>(message.size()), message.data());
        return;
    }
    std::string line;
    if (stderr_is_journal()) {
        line = "<" + std::to_string(static_cast<int>(level)) + ">";
    } else {
        line = g_program + ": " + level_word(level);
    }
    line.append(message);
    line.push_back('\n');
    const std::lock_guard lock(g_mutex);
    // One write() per line so concurrent writers never interleave inside a line.
    (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace smtpfence::log
