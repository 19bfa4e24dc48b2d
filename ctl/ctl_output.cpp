#include "ctl/ctl_output.h"

#include <ctime>
#include <iomanip>
#include <iostream>
#include <optional>
#include <string>

#include "common/log.h"
#include "common/text.h"
#include "ctl/daemon.h"

namespace smtpfence::cli {
namespace {

int print_test(const json& r, bool as_json) {
    const std::string outcome = r.value("outcome", "error");
    if (!as_json) {
        std::cout << "as " << field(r, "user") << " (uid " << r.value("uid", 0U) << ") to "
                  << field(r, "address") << " port " << r.value("port", 0) << ": ";
        if (outcome == "connected")
            std::cout << "connected";
        else if (outcome == "refused")
            std::cout << "refused";
        else if (outcome == "timed_out")
            std::cout << "no answer within 5 s (dropped)";
        else
            std::cout << "failed: " << field(r, "error");
        std::cout << " after " << r.value("elapsed_ms", 0) << " ms\n";
    }
    // Refused or unanswered: what the block does. Any other error (no route, ...) says
    // nothing about the block: a plain failure.
    if (outcome == "connected")
        return kExitOk;
    return outcome == "refused" || outcome == "timed_out" ? kExitBlocked : kExitFailure;
}

int print_allowlist_change(const json& r, bool is_allow, bool as_json) {
    if (!as_json && field(r, "kind") == "exception") {
        std::cout << "exception " << field(r, "name") << ": "
                  << (r.value("changed", false) ? (is_allow ? "added" : "removed")
                                                : (is_allow ? "already there" : "was not there"))
                  << " (" << field(r, "file") << ")\n";
    } else if (!as_json) {
        std::cout << field(r, "kind") << " " << field(r, "name") << ": "
                  << (r.value("changed", false)
                          ? (is_allow ? "allowed" : "removed from the allowlist")
                          : (is_allow ? "already in the allowlist" : "was not in the allowlist"))
                  << " (" << field(r, "file") << ")\n";
    }
    if (r.contains("still_allowed")) {
        log::warning(field(r, "name") + " is still allowed: " + field(r, "still_allowed") +
                     "; change the configuration file to block it");
        return kExitConflict;
    }
    return kExitOk;
}

// An exception's addresses, from its network or its name's last answer, and how
// that name fares.
void print_exception_addresses(const json& e) {
    std::string line;
    for (const auto& a : e["addresses"])
        line += (line.empty() ? "" : ", ") + terminal_safe(a.get<std::string>());
    for (const auto& g : e["grace"]) {
        line += (line.empty() ? "" : ", ") + field(g, "address") + " (left DNS; allowed until " +
                when(g.value("until", std::int64_t{0})) + ")";
    }
    if (line.empty())
        line = "no address yet";
    if (e.contains("refresh_in"))
        line += "; next lookup in " + std::to_string(e.value("refresh_in", 0)) + " s";
    std::cout << "      " << line << "\n";
    if (e.contains("error")) {
        std::cout << "      lookup failing since " << when(e.value("error_since", std::int64_t{0}))
                  << ": " << field(e, "error") << " (the last good addresses stay allowed)\n";
    }
}

}  // namespace

void print_exceptions(const json& r) {
    if (!r.contains("exceptions"))
        return;
    std::cout << "exceptions (only to these destinations; connections let through today, "
                 "in all):";
    if (r["exceptions"].empty())
        std::cout << " none";
    std::cout << "\n";
    for (const auto& e : r["exceptions"]) {
        std::cout << "  " << field(e, "rule") << "\t[" << field(e, "origin") << "]\t"
                  << e.value("uses_today", std::uint64_t{0}) << " today, "
                  << e.value("uses", std::uint64_t{0}) << " in all\n";
        print_exception_addresses(e);
    }
}

// Terminal-safe text: paths and command lines come from users' processes.
std::string safe(const json& j, const char* key, std::size_t max) {
    if (!j.contains(key) || !j[key].is_string())
        return "";
    return text::printable(j[key].get<std::string>(), max);
}

// Text that is already the daemon's (messages, paths, warnings, which quote user input
// through text::printable) shown as is, but a control character that got in anyway
// cannot reach the terminal: bytes below 0x20 (but a tab), DEL and the C1 controls
// (U+0080-U+009F, which some terminals obey as ESC sequences) become \xHH.
std::string terminal_safe(std::string_view text) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto byte = static_cast<unsigned char>(text[i]);
        const bool c1 = byte == 0xc2 && i + 1 < text.size() &&
                        static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
                        static_cast<unsigned char>(text[i + 1]) <= 0x9f;
        if ((byte < 0x20 && byte != '\t') || byte == 0x7f || c1) {
            const std::size_t n = c1 ? 2 : 1;
            for (std::size_t k = 0; k < n; ++k) {
                const auto b = static_cast<unsigned char>(text[i + k]);
                out += {'\\', 'x', kHex[b >> 4U], kHex[b & 0xfU]};
            }
            i += n - 1;
        } else {
            out.push_back(text[i]);
        }
    }
    return out;
}

// j[key] as terminal-safe text ("" when missing or not a string).
std::string field(const json& j, const char* key) {
    if (!j.contains(key) || !j[key].is_string())
        return "";
    return terminal_safe(j[key].get<std::string>());
}

std::string when(std::int64_t epoch) {
    const auto t = static_cast<std::time_t>(epoch);
    std::tm tm{};
    char buf[32];
    if (localtime_r(&t, &tm) == nullptr ||
        std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        return std::to_string(epoch);
    return buf;
}

void print_status(const json& r) {
    std::cout << "smtpfence " << (r.contains("version") ? field(r, "version") : "?") << ": "
              << (r.value("enforcing", false) ? "ENFORCING" : "NOT ENFORCING") << "\n";
    std::cout << "  " << field(r, "summary") << "\n";
    const json& t = r["table"];
    std::cout << "  table " << (t.contains("family") ? field(t, "family") : "inet") << " "
              << field(t, "name") << ": "
              << (t["present"].is_boolean() ? (t["present"].get<bool>() ? "present" : "absent")
                                            : "unknown")
              << (t.value("owned", false) ? ", owned (no other tool can change it)" : "") << "\n";
    if (r.contains("problem"))
        std::cout << "  PROBLEM: " << field(r, "problem") << "\n";
    if (r.contains("config_error")) {
        const json& e = r["config_error"];
        std::cout << "  CONFIGURATION ERROR since " << when(e.value("since", std::int64_t{0}))
                  << ": " << field(e, "message") << "\n    in force: " << field(e, "in_force")
                  << " (the file is read again when it changes)\n";
    }
    if (r.contains("self_heal")) {
        const json& h = r["self_heal"];
        std::cout << "  restored after foreign changes: " << h.value("restored", 0) << " time(s)";
        if (h.value("failed", 0) > 0)
            std::cout << ", " << h.value("failed", 0) << " failed attempt(s)";
        std::cout << (h.value("events", false) ? " (nftables events watched)"
                                               : " (checked each second)")
                  << "\n";
        if (h.contains("last")) {
            const json& last = h["last"];
            std::cout << "    last: by " << safe(last, "by") << ": " << safe(last, "what", 400)
                      << (last.value("ok", false) ? "" : "; NOT restored: " + safe(last, "error"))
                      << "\n";
        }
    }
    const json& q = r["queue"];
    std::cout << "  queue: " << (q.contains("mode") ? field(q, "mode") : "?");
    if (q.contains("num"))
        std::cout << " num " << q["num"].get<int>();
    if (q.value("bound", false)) {
        std::cout << ", bound; waiting " << q.value("waiting", 0) << ", dropped (queue full) "
                  << q.value("queue_dropped", 0) << ", dropped (socket buffer full) "
                  << q.value("user_dropped", 0);
    } else {
        std::cout << ", nobody bound (the kernel refuses and counts; nothing is explained)";
    }
    std::cout << "\n";
    const json& w = r["worker"];
    std::cout << "  worker: "
              << (w.value("running", false)
                      ? "running, pid " + std::to_string(w.value("pid", 0)) +
                            (w.value("ready", false) ? ", ready" : ", starting")
                      : std::string(w.value("wanted", false) ? "NOT RUNNING (restart pending)"
                                                             : "not started"))
              << ", " << w.value("restarts", 0) << " restart(s)\n";
    if (r.contains("counters")) {
        std::cout << "  attempts counted by the kernel since the table was created: "
                  << r["counters"].value("attempts", 0) << " from "
                  << r["counters"].value("uids_blocked", 0) << " uid(s)\n";
    }
    if (r.contains("destination_exceptions")) {
        const json& d = r["destination_exceptions"];
        std::cout << "  destination exceptions: " << d.value("exceptions", 0) << " ("
                  << d.value("ranges", 0) << " kernel element(s), " << d.value("names", 0)
                  << " name(s) looked up)\n";
        if (d.contains("resolver_error"))
            std::cout << "  DNS resolver: " << field(d, "resolver_error") << "\n";
        for (const auto& [name, error] : d["failing"].items()) {
            std::cout << "  lookup of " << terminal_safe(name)
                      << " failing (last good addresses kept): "
                      << terminal_safe(error.get<std::string>()) << "\n";
        }
    }
    if (r.contains("metrics")) {
        const json& m = r["metrics"];
        std::cout << "  metrics textfile: ";
        if (m.value("path", "").empty())
            std::cout << "off (METRICS_TEXTFILE = \"\")\n";
        else if (!m.value("last_error", "").empty())
            std::cout << "NOT WRITTEN: " << field(m, "last_error") << "\n";
        else
            std::cout << field(m, "path") << ", written "
                      << when(m.value("last_written", std::int64_t{0})) << "\n";
    }
    if (r.contains("directadmin")) {
        const json& da = r["directadmin"];
        std::cout << "  DirectAdmin pipeline: " << (da.value("enabled", false) ? "on" : "off")
                  << " (" << field(da, "reason") << ")\n";
    }
    if (r.contains("config"))
        std::cout << "  config: " << field(r, "config")
                  << "\n  managed allowlist: " << field(r, "allow_list") << "\n";
    if (r.contains("csf")) {
        const json& c = r["csf"];
        if (c.value("mode", false))
            std::cout << "  policy from CSF's " << field(c, "csf_conf") << " (--csf-conf)\n";
        if (c.value("rules_loaded", false))
            std::cout << "  CSF: " << field(c, "explanation") << "\n";
    }
    if (r.contains("warnings")) {
        for (const auto& w2 : r["warnings"])
            std::cout << "  warning: " << terminal_safe(w2.get<std::string>()) << "\n";
    }
}

void print_list(const json& r) {
    if (!r.value("enforcing", false))
        std::cout << "(nothing is enforced right now; this is the list that applies when it is)\n";
    std::cout << "allowed uids:\n";
    for (const auto& u : r["uids"]) {
        std::cout << "  " << u.value("uid", 0U) << "\t" << field(u, "name") << "\t"
                  << field(u, "reason") << "\n";
    }
    std::cout << "allowed gids (the socket's primary group):\n";
    for (const auto& g : r["gids"]) {
        std::cout << "  " << g.value("gid", 0U) << "\t" << field(g, "name") << "\t"
                  << field(g, "reason") << "\n";
    }
    const json& m = r["managed"];
    std::cout << "managed by smtpfencectl (" << field(m, "file") << "):";
    if (m["users"].empty() && m["groups"].empty())
        std::cout << " none";
    for (const auto& u : m["users"])
        std::cout << " user " << terminal_safe(u.get<std::string>());
    for (const auto& g : m["groups"])
        std::cout << " group " << terminal_safe(g.get<std::string>());
    std::cout << "\n";
    print_exceptions(r);
    for (const auto& w : r["warnings"])
        std::cout << "warning: " << terminal_safe(w.get<std::string>()) << "\n";
}

void print_attempts(const json& r) {
    for (const auto& a : r["records"]) {
        std::cout << when(a.value("epoch", std::int64_t{0})) << "  " << safe(a, "user") << " (uid "
                  << a.value("uid", 0U) << ", account " << safe(a, "account") << ")";
        if (a.value("type", "") == "counted") {
            std::cout << ": " << a.value("count", 0) << " more attempt(s) counted by the kernel\n";
            continue;
        }
        std::cout << " -> " << safe(a, "dst") << " port " << a.value("dport", 0) << "\n    ";
        if (a.value("identified", false)) {
            std::cout << "pid " << a.value("pid", 0) << " " << safe(a, "exe") << "  cwd "
                      << safe(a, "cwd") << "\n    cmdline: " << safe(a, "cmdline", 400) << "\n";
        } else {
            std::cout << "process unidentified (it was gone before it could be looked up)\n";
        }
    }
    const auto shown = r.value("shown", std::size_t{0});
    std::cout << shown << " record(s) from " << field(r, "store");
    if (r.contains("only_uid"))
        std::cout << " (only uid " << r.value("only_uid", 0U) << "'s: you are not an admin)";
    std::cout << "\n";
    if (r.value("more", false)) {
        std::cout << "showing the newest " << shown
                  << "; more matched (a larger --limit shows more, --since/--until "
                     "another period)\n";
    }
}

void print_top(const json& r) {
    std::cout << "attempts since " << when(r.value("since", std::int64_t{0}));
    if (r.contains("until"))
        std::cout << " until " << when(r.value("until", std::int64_t{0}));
    if (r.contains("only_uid"))
        std::cout << " (only uid " << r.value("only_uid", 0U) << "'s: you are not an admin)";
    std::cout << "\n";
    if (r["accounts"].empty()) {
        std::cout << "  none\n";
        return;
    }
    std::cout << "  ATTEMPTS  ACCOUNT          LAST SEEN            LAST FOLDER\n";
    for (const auto& a : r["accounts"]) {
        std::string account = safe(a, "account", 40);
        account.resize(std::max<std::size_t>(account.size(), 16), ' ');
        std::cout << "  " << std::setw(8) << a.value("attempts", 0) << "  " << account << " "
                  << when(a.value("last_epoch", std::int64_t{0})) << "  " << safe(a, "last_cwd")
                  << "\n";
    }
}

// The result of command as text (or JSON with --json), and the exit code it means.
int print_result(ctl::Command command, const json& r, bool as_json) {
    if (as_json) {
        // ensure_ascii: every byte beyond ASCII and every control character as a \u
        // escape, so the output is safe on a terminal and still the exact text.
        std::cout << r.dump(2, ' ', true, json::error_handler_t::replace) << "\n";
    }
    switch (command) {
        case ctl::Command::Status:
            if (!as_json)
                print_status(r);
            return kExitOk;
        case ctl::Command::List:
            if (!as_json)
                print_list(r);
            return kExitOk;
        case ctl::Command::Check:
            if (!as_json)
                std::cout << field(r, "user") << " (uid " << r.value("uid", 0U)
                          << "): " << field(r, "reason") << "\n";
            return r.value("blocked", false) ? kExitBlocked : kExitOk;
        case ctl::Command::Test:
            return print_test(r, as_json);
        case ctl::Command::Attempts:
            if (!as_json)
                print_attempts(r);
            return kExitOk;
        case ctl::Command::Top:
            if (!as_json)
                print_top(r);
            return kExitOk;
        case ctl::Command::Allow:
        case ctl::Command::Deny:
            return print_allowlist_change(r, command == ctl::Command::Allow, as_json);
        case ctl::Command::Reload:
            if (!as_json)
                std::cout << (r.value("enforcing", false) ? "enforcing: " : "not enforcing: ")
                          << field(r, "description") << "\n";
            return kExitOk;
        case ctl::Command::Remove:
            if (!as_json)
                std::cout << "table inet " << field(r, "table")
                          << " removed: outbound SMTP is NOT guarded until `smtpfencectl reload`\n";
            return kExitOk;
        case ctl::Command::Version:
            return kExitOk;
    }
    return kExitOk;
}

}  // namespace smtpfence::cli
