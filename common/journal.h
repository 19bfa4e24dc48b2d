// Structured journal entries (sd_journal_sendv): a MESSAGE_ID per kind of event and
// SMTPFENCE_* fields, so that `journalctl MESSAGE_ID=... SMTPFENCE_ACCOUNT=bob` finds
// them. Without a journal (no socket, or stderr is not the journal) the entry's
// message is written as the usual log line instead. Ids and fields: docs/journal.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/log.h"

namespace smtpfence::journal {

// One MESSAGE_ID each (made once with `systemd-id128 new`; never change them: saved
// searches and shippers' filters use them).
enum class Kind { Attempt, Counted, SelfHeal, ConfigError, Alert };
inline constexpr std::string_view kAttemptId = "471bede478e94de288a5c5e8985cd89f";
inline constexpr std::string_view kCountedId = "932b397ac20b46c49cc3a316230f105c";
inline constexpr std::string_view kSelfHealId = "9574282f776945d6878800d0acb5bfc7";
inline constexpr std::string_view kConfigErrorId = "5a3fbee16b134419a42b000675133717";
// alert: the local threshold (ALERT_ATTEMPTS per ALERT_INTERVAL) fired for an account;
// fields ACCOUNT, UID, COUNT, INTERVAL, THRESHOLD and the last process's PID, EXE, CWD,
// CMDLINE, DESTINATION, PORT.
inline constexpr std::string_view kAlertId = "4baaf281a0044905abf068dc48546bce";
[[nodiscard]] std::string_view message_id(Kind kind);

// The socket journald reads native entries from.
inline constexpr const char* kSocketPath = "/run/systemd/journal/socket";
// A field value is shown up to this many characters (text::printable's cut).
inline constexpr std::size_t kValueMaxChars = 4096;

struct Entry {
    Kind kind = Kind::Attempt;
    log::Level priority = log::Level::Notice;
    std::string message;  // the human line, already printable (the fallback log line)
    struct Field {
        std::string name;  // SMTPFENCE_<name>
        std::string value;
        bool ours = false;  // text we wrote, already printable (see add_text)
    };
    std::vector<Field> fields;

    // Bytes from outside (a name, a folder, a command line): shown escaped.
    Entry& add(std::string_view name, std::string value);
    Entry& add(std::string_view name, std::uint64_t value);
    // Text of ours that is printable already (an error message that escaped what it
    // quotes): kept as it is, escaped only if a control byte slipped in, as MESSAGE is.
    Entry& add_text(std::string_view name, std::string text);
};

// What send() hands to the journal, "NAME=value" each: MESSAGE, PRIORITY, MESSAGE_ID,
// SYSLOG_IDENTIFIER, then SMTPFENCE_<name>, every value printable (text::printable: a
// backslash doubled, other bytes outside printable ASCII as \xHH), so that nothing a
// user controls can add a field or a line.
[[nodiscard]] std::vector<std::string> fields_of(const Entry& entry);

// Whether entries go to the journal: its socket exists and stderr is the journal
// (log::stderr_is_journal), as under systemd.
[[nodiscard]] bool available();
// Sends entry as one structured journal entry.
[[nodiscard]] Result<void> send(const Entry& entry);
// send() when available(), else entry.message as a log line at its priority; a failed
// send also falls back to the line (its error said once), so nothing is lost and
// nothing is written twice.
void write(const Entry& entry);

}  // namespace smtpfence::journal
