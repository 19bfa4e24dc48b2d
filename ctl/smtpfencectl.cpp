// smtpfencectl: the admin's tool. A thin client of smtpfenced's control socket
// (ctl/protocol.h): it never programs netlink itself. `apply --dry-run` is the one
// local command: it shows the ruleset the configuration produces without a daemon.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <ctime>
#include <expected>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/conf_reader.h"
#include "common/log.h"
#include "common/text.h"
#include "csf-compat/import.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/protocol.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace {

using namespace smtpfence;
using nlohmann::json;

// Exit codes (README "A day with smtpfencectl", smtpfencectl(8)); 0-2 as smtpfenced.
constexpr int kExitUnreachable = 3;  // the daemon is not running / socket missing
constexpr int kExitDenied = 4;       // the daemon refused: not root or admin group
constexpr int kExitBlocked = 5;      // check: would be blocked; test: did not connect
constexpr int kExitConflict = 6;     // deny: still allowed by the config or a group

// Terminal-safe text: paths and command lines come from users' processes.
std::string safe(const json& j, const char* key, std::size_t max = 200) {
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

// "90s", "30m", "1h", "2d", "today" -> epoch seconds since; nullopt when malformed.
std::optional<std::int64_t> parse_since(const std::string& text) {
    const std::time_t now = std::time(nullptr);
    if (text == "today") {
        std::tm tm{};
        if (localtime_r(&now, &tm) == nullptr)
            return std::nullopt;
        tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        tm.tm_isdst = -1;
        return std::mktime(&tm);
    }
    if (text.size() < 2)
        return std::nullopt;
    const auto n =
        text::parse_unsigned(text.substr(0, text.size() - 1), std::uint64_t{100} * 365U * 86400U);
    if (!n)
        return std::nullopt;
    std::int64_t unit = 0;
    switch (text.back()) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        default:
            return std::nullopt;
    }
    return static_cast<std::int64_t>(now) - static_cast<std::int64_t>(*n) * unit;
}

// The queue notation differs between the native expression and the xtables target;
// ask the kernel when we may (root), else assume the xtables target.
KernelFeatures dry_run_features(const std::string& table) {
    const KernelFeatures assumed{nft::QueueMode::Xt, false};
    if (geteuid() != 0)
        return assumed;
    auto session = open_kernel_session(table);
    return session ? session->features : assumed;
}

int dry_run(const DaemonOptions& options) {
    auto desired = compute_desired(options, dry_run_features(options.table));
    if (!desired) {
        log::error(desired.error().message());
        return desired.error().code == 0 ? kExitUsage : kExitFailure;
    }
    for (const std::string& w : desired->warnings)
        log::warning(w);
    if (!desired->loaded.policy.enabled) {
        std::cout << "# SMTP_BLOCK is \"0\" in " << desired->loaded.policy.source
                  << ": no table would be programmed\n";
        return kExitOk;
    }
    std::cout << nft::render_nft(nft::build_ruleset(desired->spec));
    return kExitOk;
}

// Local, like the dry run: reads csf.conf, writes smtpfence.conf, needs no daemon.
int import_csf(const std::string& csf_path, const std::string& to, bool force, bool dry) {
    auto imported = csf::import_csf_file(csf_path);
    if (!imported) {
        log::error(imported.error().message());
        return imported.error().code == 0 || imported.error().code == ENOENT ? kExitUsage
                                                                             : kExitFailure;
    }
    std::cout << imported->report;
    if (dry) {
        std::cout << "\n" << imported->config_text;
        return kExitOk;
    }
    if (auto w = csf::write_imported_config(*imported, to, force); !w) {
        log::error(w.error().message());
        return w.error().code == EEXIST ? kExitUsage : kExitFailure;
    }
    std::cout << "wrote " << to
              << "; `smtpfencectl reload` (or a restart of smtpfenced) applies it\n";
    return kExitOk;
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
    std::cout << r.value("shown", 0) << " of " << r.value("matched", 0)
              << " matching record(s) from " << field(r, "log") << "\n";
}

void print_top(const json& r) {
    std::cout << "attempts since " << when(r.value("since", std::int64_t{0})) << "\n";
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

// What the command line says. CLI11's options write into it during the parse, so it
// outlives the parse.
struct CliArgs {
    DaemonOptions options;
    std::string socket_path = ctl::kDefaultControlSocket;
    bool as_json = false;
    std::string user;
    std::string group;
    std::string since;
    std::string address;  // test
    int port = 25;        // test
    std::uint32_t limit = 100;
    bool dry = false;  // apply --dry-run
    std::string csf_path = csf::kDefaultCsfConfPath;
    std::string import_to = kDefaultConfigPath;
    bool import_force = false;
    bool import_dry = false;
};

// The subcommands, to ask which one the parse found.
struct Subcommands {
    CLI::App* allow = nullptr;
    CLI::App* deny = nullptr;
    CLI::App* list = nullptr;
    CLI::App* check = nullptr;
    CLI::App* test = nullptr;
    CLI::App* status = nullptr;
    CLI::App* attempts = nullptr;
    CLI::App* top = nullptr;
    CLI::App* reload = nullptr;
    CLI::App* remove = nullptr;
    CLI::App* apply = nullptr;
    CLI::App* import = nullptr;
    CLI::Option* config = nullptr;  // apply --config: given, or the default
};

void add_json_flag(CLI::App* sub, CliArgs& a) {
    sub->add_flag("--json", a.as_json, "print the daemon's answer as JSON");
}

// The order of the add_* calls is the order of `smtpfencectl --help`.

// allow, deny, list, check: the allowlist.
void add_allowlist_commands(CLI::App& app, CliArgs& a, Subcommands& s) {
    s.allow = app.add_subcommand("allow", "let a user (or --group) connect to SMTP directly");
    s.deny = app.add_subcommand("deny", "remove a user (or --group) from the allowlist");
    for (auto* sub : {s.allow, s.deny}) {
        sub->add_option("user", a.user, "user name or uid");
        sub->add_option("--group", a.group, "group name or gid");
        add_json_flag(sub, a);
    }
    s.list = app.add_subcommand("list", "show who is allowed, and why");
    add_json_flag(s.list, a);
    s.check = app.add_subcommand("check", "would USER be blocked, and by which rule");
    s.check->add_option("user", a.user, "user name or uid")->required();
    add_json_flag(s.check, a);
}

void add_test_command(CLI::App& app, CliArgs& a, Subcommands& s) {
    s.test = app.add_subcommand("test", "a real connection as USER: refused or connected");
    s.test->add_option("user", a.user, "user name or uid")->required();
    s.test->add_option("address", a.address, "numeric IPv4 or IPv6 address")->required();
    s.test->add_option("port", a.port, "TCP port")
        ->capture_default_str()
        ->check(CLI::Range(1, 65535));
    add_json_flag(s.test, a);
}

// status, attempts, top: what is enforced and who tried.
void add_report_commands(CLI::App& app, CliArgs& a, Subcommands& s) {
    s.status = app.add_subcommand("status", "what is enforced, worker health, counters");
    add_json_flag(s.status, a);
    s.attempts = app.add_subcommand("attempts", "who tried: user, process, destination");
    s.attempts->add_option("--since", a.since, "e.g. 90s, 30m, 1h, 2d, today");
    s.attempts->add_option("--user", a.user, "only this user or hosting account");
    s.attempts->add_option("--limit", a.limit, "show the newest N records")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    add_json_flag(s.attempts, a);
    s.top = app.add_subcommand("top", "accounts ranked by attempts (default: today)");
    s.top->add_option("--since", a.since, "e.g. 1h, 2d, today");
    add_json_flag(s.top, a);
}

// reload, remove, apply: the table.
void add_table_commands(CLI::App& app, CliArgs& a, Subcommands& s) {
    s.reload = app.add_subcommand("reload", "re-read config and accounts, re-apply");
    s.remove = app.add_subcommand(
        "remove", "delete the table: outbound SMTP is no longer guarded until reload");
    s.apply = app.add_subcommand(
        "apply", "show (--dry-run) or apply the ruleset the configuration produces");
    DaemonOptions& o = a.options;
    s.config =
        s.apply->add_option("--config", o.config_path, "configuration file")->capture_default_str();
    s.apply->add_option("--table", o.table, "nftables table name")->capture_default_str();
    s.apply->add_option("--passwd", o.passwd_path, "passwd(5) file")->capture_default_str();
    s.apply->add_option("--group", o.group_path, "group(5) file")->capture_default_str();
    s.apply->add_option("--allow-list", o.allow_list_path,
                        "managed allowlist (default: allow.list beside the config)");
    s.apply->add_option("--csf-conf", o.csf_conf_path,
                        "take the SMTP settings from CSF's csf.conf, as smtpfenced --csf-conf");
    s.apply->add_flag("--dry-run", a.dry, "print the ruleset as nft text; change nothing");
}

void add_import_command(CLI::App& app, CliArgs& a, Subcommands& s) {
    s.import = app.add_subcommand(
        "import-csf",
        "write smtpfence.conf from CSF's csf.conf; print what was mapped and ignored");
    s.import->add_option("csf_conf", a.csf_path, "CSF's configuration")->capture_default_str();
    s.import->add_option("--to", a.import_to, "smtpfence.conf to write")->capture_default_str();
    s.import->add_flag("--force", a.import_force, "replace an existing smtpfence.conf");
    s.import->add_flag("--dry-run", a.import_dry, "print the new smtpfence.conf; write nothing");
}

Subcommands build_cli(CLI::App& app, CliArgs& a) {
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("smtpfencectl ") + SMTPFENCE_VERSION);
    app.add_option("--socket", a.socket_path, "smtpfenced's control socket")
        ->capture_default_str()
        ->envname("SMTPFENCE_SOCKET");
    Subcommands s;
    add_allowlist_commands(app, a, s);
    add_test_command(app, a, s);
    add_report_commands(app, a, s);
    add_table_commands(app, a, s);
    add_import_command(app, a, s);
    // --socket is accepted after the subcommand too (smtpfencectl status --socket X).
    for (CLI::App* sub : app.get_subcommands({}))
        sub->fallthrough();
    return s;
}

// The --since of attempts and top into req, or the exit code of a usage error.
std::optional<int> read_since(const CliArgs& a, ctl::Request& req) {
    if (a.since.empty())
        return std::nullopt;
    req.since = parse_since(a.since);
    if (!req.since) {
        log::error("--since \"" + text::printable(a.since) +
                   "\": expected a duration such as 90s, 30m, 1h, 2d, or \"today\"");
        return kExitUsage;
    }
    return std::nullopt;
}

// The request the parsed command line makes of the daemon, or the exit code of a
// usage error (reported).
std::expected<ctl::Request, int> request_from(const Subcommands& s, const CliArgs& a) {
    ctl::Request req;
    if (s.allow->parsed() || s.deny->parsed()) {
        req.command = s.allow->parsed() ? ctl::Command::Allow : ctl::Command::Deny;
        if (a.user.empty() == a.group.empty()) {
            log::error("give a user name, or --group NAME (one of the two)");
            return std::unexpected(kExitUsage);
        }
        if (!a.user.empty())
            req.user = a.user;
        else
            req.group = a.group;
    } else if (s.list->parsed()) {
        req.command = ctl::Command::List;
    } else if (s.check->parsed()) {
        req.command = ctl::Command::Check;
        req.user = a.user;
    } else if (s.test->parsed()) {
        req.command = ctl::Command::Test;
        req.user = a.user;
        req.address = a.address;
        req.port = static_cast<std::uint16_t>(a.port);
    } else if (s.status->parsed()) {
        req.command = ctl::Command::Status;
    } else if (s.attempts->parsed() || s.top->parsed()) {
        req.command = s.attempts->parsed() ? ctl::Command::Attempts : ctl::Command::Top;
        if (const auto usage = read_since(a, req))
            return std::unexpected(*usage);
        if (s.attempts->parsed()) {
            if (!a.user.empty())
                req.user = a.user;
            req.limit = a.limit;
        }
    } else if (s.reload->parsed() || s.apply->parsed()) {
        req.command = ctl::Command::Reload;
    } else if (s.remove->parsed()) {
        req.command = ctl::Command::Remove;
    }
    // Names and addresses are checked here too, for a clear message without a daemon.
    for (const auto* name : {&req.user, &req.group}) {
        if (*name) {
            if (const std::string p = ctl::name_problem(**name); !p.empty()) {
                log::error("\"" + text::printable(**name) + "\": " + p);
                return std::unexpected(kExitUsage);
            }
        }
    }
    return req;
}

// The daemon's response to req, a protocol-1 object with "ok", or the exit code of a
// failure to get one (reported).
std::expected<json, int> ask_daemon(const std::string& socket_path, const ctl::Request& req) {
    // `test` waits for a connect() of up to 5 s in the daemon's child.
    auto reply = ctl::call(socket_path, req, std::chrono::seconds(15));
    if (!reply) {
        log::error(reply.error().message);
        return std::unexpected(reply.error().unreachable ? kExitUnreachable : kExitFailure);
    }
    json j = json::parse(*reply, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ok")) {
        log::error("smtpfenced sent an answer that is not a protocol-1 response: " +
                   text::printable(*reply));
        return std::unexpected(kExitFailure);
    }
    return j;
}

// The daemon said no: its message, and the exit code for its error code.
int report_refusal(const json& j) {
    const std::string code = j["error"].value("code", "failed");
    log::error(terminal_safe(j["error"].value("message", "failed")));
    const auto ec = ctl::error_code_from_string(code);
    if (ec == ctl::ErrorCode::PermissionDenied)
        return kExitDenied;
    if (ec == ctl::ErrorCode::NotFound || ec == ctl::ErrorCode::InvalidArgument ||
        ec == ctl::ErrorCode::BadRequest)
        return kExitUsage;
    return kExitFailure;
}

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
    if (!as_json) {
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

}  // namespace

static int run(int argc, char** argv) {
    log::set_program("smtpfencectl");
    CliArgs args;
    CLI::App app{"smtpfencectl: manage smtpfence, the outbound SMTP block"};
    const Subcommands cmd = build_cli(app, args);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        return code == 0 ? kExitOk : kExitUsage;
    }
    args.options.config_given = cmd.config->count() > 0;

    if (cmd.apply->parsed() && args.dry)
        return dry_run(args.options);
    if (cmd.import->parsed())
        return import_csf(args.csf_path, args.import_to, args.import_force, args.import_dry);

    const auto req = request_from(cmd, args);
    if (!req)
        return req.error();
    const auto response = ask_daemon(args.socket_path, *req);
    if (!response)
        return response.error();
    const json& j = *response;
    if (!j.value("ok", false))
        return report_refusal(j);
    return print_result(req->command, j["result"], args.as_json);
}

int main(int argc, char** argv) {
    // Nothing is expected to throw but allocation failure or a malformed answer's
    // field of the wrong type; report it as one line.
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        smtpfence::log::error(std::string("fatal: ") + e.what());
        return smtpfence::kExitFailure;
    }
}
