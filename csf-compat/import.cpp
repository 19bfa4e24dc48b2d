#include "csf-compat/import.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "common/files.h"
#include "common/text.h"

namespace smtpfence::csf {
namespace {

constexpr std::size_t kCommentWidth = 79;

// policy_from_csf records every key of kSmtpKeys, so the fallback is never used.
const Mapped& mapped(const CsfPolicy& p, std::string_view key) {
    static const Mapped kNone;
    const auto it = std::find_if(p.mapped.begin(), p.mapped.end(),
                                 [&](const Mapped& m) { return m.key == key; });
    return it == p.mapped.end() ? kNone : *it;
}

// "csf.conf line 316 (SMTP_BLOCK = "1")" or "not in csf.conf (CSF reads it as "")".
std::string origin(const Mapped& m) {
    if (m.line == 0)
        return m.key + " is not in csf.conf (CSF reads it as \"\")";
    return "csf.conf line " + std::to_string(m.line) + ": " + m.key + " = \"" +
           text::printable(m.value) + "\"";
}

// Words wrapped into "# " comment lines; continuation lines indented by hang spaces.
std::string comment(std::string_view text, std::size_t hang = 0) {
    const std::string continuation = "#" + std::string(hang, ' ');
    std::string out;
    std::string line = "#";
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t space = text.find(' ', pos);
        const std::size_t end = space == std::string_view::npos ? text.size() : space;
        const std::string_view word = text.substr(pos, end - pos);
        if (line.size() > continuation.size() && line.size() + 1 + word.size() > kCommentWidth) {
            out += line + "\n";
            line = continuation;
        }
        line += " ";
        line += word;
        pos = end + 1;
    }
    return out + line + "\n";
}

std::string flag(bool on) {
    return on ? "\"1\"" : "\"0\"";
}

std::string setting(std::string_view key, const std::string& quoted_value) {
    return std::string(key) + " = " + quoted_value + "\n";
}

std::string config_text(const conf::ConfFile& conf, const CsfPolicy& m) {
    const Policy& p = m.policy;
    std::string out;
    out += comment("smtpfence.conf imported from " + conf.path +
                   " by `smtpfencectl import-csf`. Same syntax as csf.conf (KEY = \"value\"). "
                   "Each setting names the csf.conf line it came from; smtpfence enforces "
                   "with these settings what `smtpfenced --csf-conf` enforced with csf.conf.");
    if (!m.notes.empty()) {
        out += "#\n";
        out += comment("Where smtpfence reads or does something else than CSF:");
        for (const Note& n : m.notes)
            out += comment("- " + n.message(), 2);
    }

    // The comment naming where a setting came from, then the setting (none when key
    // is empty: a csf.conf setting smtpfence has no counterpart for).
    const auto block = [&](const std::vector<std::string_view>& from, std::string_view key,
                           const std::string& value, const std::string& extra = {}) {
        out += "\n";
        std::string text;
        for (const std::string_view k : from) {
            const Mapped& mk = mapped(m, k);
            text += origin(mk) + ": " + mk.meaning + ". ";
        }
        out += comment(text + extra);
        if (!key.empty())
            out += setting(key, value);
    };

    block({"SMTP_BLOCK", "SMTP_PORTS"}, "SMTP_BLOCK", flag(p.enabled));
    std::vector<std::string> ports;
    ports.reserve(p.ports.size());
    for (const std::uint16_t port : p.ports)
        ports.push_back(std::to_string(port));
    out += "\n" +
           comment(mapped(m, "SMTP_PORTS").meaning == "no port"
                       ? "csf.conf lists no port, so CSF enforced nothing: smtpfence's default "
                         "ports are written, for when SMTP_BLOCK is switched on."
                       : "From SMTP_PORTS, ranges expanded.") +
           setting("SMTP_PORTS", "\"" + text::join(ports, ",") + "\"");
    block({"SMTP_ALLOWUSER"}, "SMTP_ALLOWUSER", "\"" + text::join(p.allow_users, ",") + "\"",
          "root is always allowed.");
    block({"SMTP_ALLOWGROUP"}, "SMTP_ALLOWGROUP", "\"" + text::join(p.allow_groups, ",") + "\"",
          "Members through their primary or a supplementary group are allowed (CSF matched "
          "the primary group only).");
    out += "\n" +
           comment(
               "Not a CSF setting: the MTA's own users (mail, Debian-exim, mailnull, exim, "
               "postfix, where they exist) are allowed by uid, so mail keeps flowing "
               "whatever the groups above say.") +
           setting("MTA_USERS",
                   p.mta_users_auto ? "\"auto\"" : "\"" + text::join(p.mta_users, ",") + "\"");
    block({"SMTP_ALLOWLOCAL"}, "SMTP_ALLOWLOCAL", flag(p.allow_local));
    block({"SMTP_REDIRECT"}, "SMTP_REDIRECT", flag(p.redirect));
    block({"IPV6"}, "", "", "Not a setting of smtpfence: IPv6 is always guarded as IPv4 is.");
    block({"DROP_OUT"}, "DROP_OUT", p.action == BlockAction::Drop ? "\"DROP\"" : "\"REJECT\"");
    block({"DROP_LOGGING", "DROP_OUT_LOGGING"}, "DROP_OUT_LOGGING", flag(p.log_blocked),
          "The lines have CSF's prefixes (Firewall: *TCP_OUT Blocked*, *TCP6OUT Blocked*).");
    block({"DROP_UID_LOGGING"}, "DROP_UID_LOGGING", flag(p.log_uid));
    return out;
}

// A list of names wrapped to the terminal, indented.
std::string wrapped_names(const std::vector<std::string>& names) {
    std::string out;
    std::string line = "   ";
    for (std::size_t i = 0; i < names.size(); ++i) {
        const std::string item = text::printable(names[i]) + (i + 1 < names.size() ? "," : "");
        if (line.size() > 3 && line.size() + 1 + item.size() > kCommentWidth) {
            out += line + "\n";
            line = "   ";
        }
        line += " " + item;
    }
    return out + line + "\n";
}

std::string report_text(const conf::ConfFile& conf, const CsfPolicy& m) {
    std::string out = "Imported " + conf.path + " (" + std::to_string(conf.entries.size()) +
                      " settings).\n\nMapped:\n";
    for (const Mapped& mk : m.mapped) {
        out += "  " + mk.key + " = \"" + text::printable(mk.value) + "\"" +
               (mk.line == 0 ? " (not in the file)" : " (line " + std::to_string(mk.line) + ")") +
               ": " + mk.meaning + "\n";
    }
    if (!m.notes.empty()) {
        out += "\nNotes:\n";
        for (const Note& n : m.notes)
            out += "  " + n.message() + "\n";
    }
    out += "\nIgnored (not about outgoing SMTP): " + std::to_string(m.ignored.size()) +
           " setting(s)\n";
    if (!m.ignored.empty())
        out += wrapped_names(m.ignored);
    return out;
}

}  // namespace

Result<ImportResult> import_csf(const conf::ConfFile& conf) {
    auto mapping = policy_from_csf(conf);
    if (!mapping)
        return std::unexpected(mapping.error());
    ImportResult out;
    out.config_text = config_text(conf, *mapping);
    out.report = report_text(conf, *mapping);
    out.mapping = std::move(*mapping);
    return out;
}

Result<ImportResult> import_csf_file(const std::string& path) {
    auto conf = conf::read_conf_file(path);
    if (!conf)
        return std::unexpected(conf.error());
    return import_csf(*conf);
}

Result<void> write_imported_config(const ImportResult& imported, const std::string& config_path,
                                   bool replace) {
    struct stat st {};
    if (!replace && ::lstat(config_path.c_str(), &st) == 0) {
        return fail(
            EEXIST, config_path,
            "kept; `smtpfencectl import-csf --force` replaces it, `--dry-run` shows the new file");
    }
    return write_file_atomic(config_path, imported.config_text);
}

}  // namespace smtpfence::csf
