#include "common/journal.h"

#include <sys/uio.h>
// No CODE_FILE/CODE_LINE/CODE_FUNC: this file's location says nothing about the event.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "common/text.h"

namespace smtpfence::journal {

std::string_view message_id(Kind kind) {
    switch (kind) {
        case Kind::Attempt:
            return kAttemptId;
        case Kind::Counted:
            return kCountedId;
        case Kind::SelfHeal:
            return kSelfHealId;
        case Kind::ConfigError:
            return kConfigErrorId;
        case Kind::Alert:
            return kAlertId;
    }
    return kAttemptId;
}

Entry& Entry::add(std::string_view name, std::string value) {
    fields.push_back(Field{std::string(name), std::move(value), false});
    return *this;
}

Entry& Entry::add_text(std::string_view name, std::string text) {
    fields.push_back(Field{std::string(name), std::move(text), true});
    return *this;
}

Entry& Entry::add(std::string_view name, std::uint64_t value) {
    return add(name, std::to_string(value));
}

namespace {

// Text of ours is printable already; a control byte that slipped in is escaped all the
// same, so that the entry stays one line in `journalctl`, and a long one is cut as
// text::printable cuts.
std::string ours_printable(const std::string& text) {
    const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u >= 0x20 && u < 0x7f;
    });
    if (!plain)
        return text::printable(text, kValueMaxChars);
    if (text.size() <= kValueMaxChars)
        return text;
    return text.substr(0, kValueMaxChars) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace

std::vector<std::string> fields_of(const Entry& entry) {
    std::vector<std::string> out;
    out.reserve(4 + entry.fields.size());
    out.push_back("MESSAGE=" + ours_printable(entry.message));
    out.push_back("PRIORITY=" + std::to_string(static_cast<int>(entry.priority)));
    out.push_back("MESSAGE_ID=" + std::string(message_id(entry.kind)));
    out.push_back("SYSLOG_IDENTIFIER=" + log::program());
    for (const Entry::Field& f : entry.fields) {
        out.push_back(
            "SMTPFENCE_" + f.name + "=" +
            (f.ours ? ours_printable(f.value) : text::printable(f.value, kValueMaxChars)));
    }
    return out;
}

bool available() {
    return log::stderr_is_journal() && ::access(kSocketPath, W_OK) == 0;
}

Result<void> send(const Entry& entry) {
    const std::vector<std::string> fields = fields_of(entry);
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (const std::string& f : fields)
        iov.push_back(iovec{const_cast<char*>(f.data()), f.size()});  // NOLINT: sendv reads
    // sd_journal_sendv returns a negative errno value.
    if (const int r = sd_journal_sendv(iov.data(), static_cast<int>(iov.size())); r < 0)
        return fail(-r, "send a journal entry (" + std::string(message_id(entry.kind)) + ")");
    return {};
}

void write(const Entry& entry) {
    if (available()) {
        auto sent = send(entry);
        if (sent)
            return;
        static std::atomic<bool> said{false};
        if (!said.exchange(true))
            log::warning(sent.error().message() + "; journal entries are written as log lines");
    }
    log::write(entry.priority, entry.message);
}

}  // namespace smtpfence::journal
