#include "common/log.h"

#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/text.h"

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
        if (env == nullptr)
            return false;
        const std::string_view value(env);
        const std::size_t colon = value.find(':');
        const auto max = std::numeric_limits<std::uint64_t>::max();
        const auto dev = text::parse_unsigned(value.substr(0, colon), max);
        const auto ino = colon == std::string_view::npos
                             ? std::nullopt
                             : text::parse_unsigned(value.substr(colon + 1), max);
        if (!dev || !ino)
            return false;
        struct stat st {};
        return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == *dev && st.st_ino == *ino;
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
