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
#include <tuple>

#include "common/conf_reader.h"
#include "common/log.h"
#include "common/text.h"
#include "csf-compat/import.h"
#include "ctl/control_server.h"
#include "ctl/ctl_output.h"
#include "ctl/daemon.h"
#include "ctl/protocol.h"
#include "nfq/history_query.h"
#include "nft/engine.h"
#include "nft/netlink.h"
#include "policy/destination.h"

namespace {

using namespace smtpfence;
using nlohmann::json;
using namespace smtpfence::cli;

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

// What the command line says. CLI11's options write into it during the parse, so it
// outlives the parse.
struct CliArgs {
    DaemonOptions options;
    std::string socket_path = ctl::kDefaultControlSocket;
    bool as_json = false;
    std::string user;
    std::string group;
    bool everyone = false;  // allow, deny: an exception for every user
    std::string to;         // allow, deny, check: HOST[:PORT]
    std::string since;      // attempts, top
    std::string until;      // attempts, top
    std::string account;    // attempts
    std::string exe;        // attempts
    std::string dst;        // attempts
    std::string address;    // test
    int port = 25;          // test
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
    s.allow = app.add_subcommand(
        "allow", "let a user (or --group) connect to SMTP directly, or only --to a relay");
    s.deny = app.add_subcommand("deny", "remove a user (or --group) or an exception (--to)");
    for (auto* sub : {s.allow, s.deny}) {
        sub->add_option("user", a.user, "user name or uid");
        sub->add_option("--group", a.group, "group name or gid");
        sub->add_flag("--everyone", a.everyone, "every user (with --to only)");
        sub->add_option("--to", a.to,
                        "only this destination: NAME, IPv4, [IPv6] or a network, with an "
                        "optional :PORT");
        add_json_flag(sub, a);
    }
    s.list = app.add_subcommand("list", "show who is allowed, and why; the exceptions");
    add_json_flag(s.list, a);
    s.check = app.add_subcommand("check", "would USER be blocked, and by which rule");
    s.check->add_option("user", a.user, "user name or uid")->required();
    s.check->add_option("--to", a.to, "to this destination: HOST[:PORT]");
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
    s.attempts->add_option("--since", a.since, "from then on, e.g. 90s, 30m, 1h, 2d, today");
    s.attempts->add_option("--until", a.until, "before then, as --since");
    s.attempts->add_option("--user", a.user, "only this user, hosting account or uid");
    s.attempts->add_option("--account", a.account, "only this hosting account");
    s.attempts->add_option("--exe", a.exe, "only processes of this executable (absolute path)");
    s.attempts->add_option("--dst", a.dst, "only attempts to this IPv4 or IPv6 address");
    s.attempts->add_option("--limit", a.limit, "show the newest N records")
        ->capture_default_str()
        ->check(CLI::Range(1, 100000));
    add_json_flag(s.attempts, a);
    s.top = app.add_subcommand("top", "accounts ranked by attempts (default: today)");
    s.top->add_option("--since", a.since, "from then on, e.g. 1h, 2d, today");
    s.top->add_option("--until", a.until, "before then, as --since");
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

// --since and --until of attempts and top into req, or the exit code of a usage error
// (reported).
std::optional<int> read_times(const CliArgs& a, ctl::Request& req) {
    for (const auto& [option, text, time] : {std::tuple{"--since", &a.since, &req.since},
                                             std::tuple{"--until", &a.until, &req.until}}) {
        if (text->empty())
            continue;
        *time = parse_since(*text);
        if (!*time) {
            log::error(std::string(option) + " \"" + text::printable(*text) +
                       "\": expected a duration such as 90s, 30m, 1h, 2d, or \"today\"");
            return kExitUsage;
        }
    }
    if (req.since && req.until && *req.until <= *req.since) {
        log::error("--until \"" + text::printable(a.until) + "\" is not after --since \"" +
                   text::printable(a.since) + "\"");
        return kExitUsage;
    }
    return std::nullopt;
}

// The filters of attempts into req, or the exit code of a usage error (reported).
std::optional<int> read_filters(const CliArgs& a, ctl::Request& req) {
    if (!a.user.empty())
        req.user = a.user;
    if (!a.account.empty()) {
        if (const std::string p = ctl::name_problem(a.account); !p.empty()) {
            log::error("--account \"" + text::printable(a.account) + "\": " + p);
            return kExitUsage;
        }
        req.account = a.account;
    }
    if (!a.exe.empty()) {
        if (a.exe.front() != '/') {
            log::error("--exe \"" + text::printable(a.exe) + "\": expected an absolute path");
            return kExitUsage;
        }
        req.exe = a.exe;
    }
    if (!a.dst.empty()) {
        auto address = nfq::canonical_address(a.dst);
        if (!address) {
            log::error("--dst \"" + text::printable(a.dst) +
                       "\": expected an IPv4 or IPv6 address");
            return kExitUsage;
        }
        req.dst = std::move(*address);
    }
    req.limit = a.limit;
    return std::nullopt;
}

// The request the parsed command line makes of the daemon, or the exit code of a
// usage error (reported).
std::expected<ctl::Request, int> request_from(const Subcommands& s, const CliArgs& a) {
    ctl::Request req;
    if (s.allow->parsed() || s.deny->parsed()) {
        req.command = s.allow->parsed() ? ctl::Command::Allow : ctl::Command::Deny;
        const int subjects =
            (a.user.empty() ? 0 : 1) + (a.group.empty() ? 0 : 1) + (a.everyone ? 1 : 0);
        if (subjects != 1) {
            log::error("give a user name, --group NAME or --everyone (one of the three)");
            return std::unexpected(kExitUsage);
        }
        if (a.everyone &&
            s.allow->get_option("--to")->count() + s.deny->get_option("--to")->count() == 0) {
            log::error(
                "--everyone needs --to HOST[:PORT]: every user to every host is "
                "SMTP_BLOCK = \"0\", not an exception");
            return std::unexpected(kExitUsage);
        }
        if (!a.user.empty())
            req.user = a.user;
        else if (!a.group.empty())
            req.group = a.group;
        req.everyone = a.everyone;
    } else if (s.list->parsed()) {
        req.command = ctl::Command::List;
    } else if (s.check->parsed()) {
        req.command = ctl::Command::Check;
        req.user = a.user;
        if (s.check->get_option("--to")->count() > 0)
            req.to = a.to;
    } else if (s.test->parsed()) {
        req.command = ctl::Command::Test;
        req.user = a.user;
        req.address = a.address;
        req.port = static_cast<std::uint16_t>(a.port);
    } else if (s.status->parsed()) {
        req.command = ctl::Command::Status;
    } else if (s.attempts->parsed() || s.top->parsed()) {
        req.command = s.attempts->parsed() ? ctl::Command::Attempts : ctl::Command::Top;
        if (const auto usage = read_times(a, req))
            return std::unexpected(*usage);
        if (s.attempts->parsed()) {
            if (const auto usage = read_filters(a, req))
                return std::unexpected(*usage);
        }
    } else if (s.reload->parsed() || s.apply->parsed()) {
        req.command = ctl::Command::Reload;
    } else if (s.remove->parsed()) {
        req.command = ctl::Command::Remove;
    }
    // Given, even empty: an empty $HOST in a script must not become "everywhere".
    for (const CLI::App* sub : {s.allow, s.deny}) {
        if (sub->parsed() && sub->get_option("--to")->count() > 0)
            req.to = a.to;
    }
    // Names and addresses are checked here too, for a clear message without a daemon.
    if (req.to) {
        if (auto dest = parse_destination(*req.to); !dest) {
            log::error("--to " + dest.error().message());
            return std::unexpected(kExitUsage);
        }
    }
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
