#include "policy/policy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>
#include <set>
#include <string_view>

#include "common/names.h"
#include "common/text.h"

namespace smtpfence {
namespace {

using text::printable;

// The largest uid/gid: (uid_t)-1 is the "no id" value of chown(2) and setreuid(2).
constexpr std::uint64_t kMaxId = 4294967294U;

// The fields of a setting being mapped: where it is, for every message.
struct Setting {
    const conf::ConfFile& conf;
    const conf::Entry& entry;

    [[nodiscard]] std::string where() const { return conf.path + ":" + std::to_string(entry.line); }

    [[nodiscard]] std::unexpected<Error> bad(std::string_view expected) const {
        return fail(0, where(),
                    entry.key + ": bad value \"" + printable(entry.value) + "\": expected " +
                        std::string(expected));
    }

    [[nodiscard]] std::string warning(std::string_view text) const {
        return where() + ": " + entry.key + ": " + std::string(text);
    }
};

Result<bool> parse_bool(const Setting& s) {
    if (s.entry.value == "0")
        return false;
    if (s.entry.value == "1")
        return true;
    return s.bad("\"0\" or \"1\"");
}

template <class T>
Result<T> parse_number(const Setting& s, T min, T max) {
    const auto n = text::parse_unsigned(s.entry.value, max);
    if (!n || *n < min) {
        return s.bad("a number from " + std::to_string(min) + " to " + std::to_string(max));
    }
    return static_cast<T>(*n);
}

// A list of names or numeric ids (SMTP_ALLOWUSER, SMTP_ALLOWGROUP, MTA_USERS). Kept in the
// admin's order, repeats dropped with a warning.
Result<std::vector<std::string>> parse_name_list(const Setting& s, std::string_view what,
                                                 std::vector<std::string>& warnings) {
    std::vector<std::string> out;
    for (std::string& item : conf::split_list(s.entry.value)) {
        const bool ok = text::is_all_digits(item) ? text::parse_unsigned(item, kMaxId).has_value()
                                                  : is_valid_account_name(item);
        if (!ok) {
            return s.bad("a comma-separated list of " + std::string(what) + " names or numeric " +
                         std::string(what == "user" ? "uids" : "gids") + " (0-" +
                         std::to_string(kMaxId) + "); \"" + printable(item) + "\" is not one");
        }
        if (std::find(out.begin(), out.end(), item) != out.end()) {
            warnings.push_back(s.warning("\"" + item + "\" is listed more than once"));
            continue;
        }
        out.push_back(std::move(item));
    }
    return out;
}

Result<std::vector<std::uint16_t>> parse_ports(const Setting& s,
                                               std::vector<std::string>& warnings) {
    // CSF removes all whitespace from SMTP_PORTS before use ("25, 587" and "2 5" alike).
    std::string compact;
    for (const char c : s.entry.value) {
        if (c != ' ' && c != '\t' && c != '\n' && c != '\v' && c != '\f' && c != '\r') {
            compact.push_back(c);
        }
    }
    const std::vector<std::string> items = conf::split_list(compact);
    if (items.empty())
        return s.bad("a comma-separated list of ports 1-65535, not an empty list");
    std::set<std::uint16_t> ports;
    for (const std::string& item : items) {
        const auto port = text::parse_unsigned(item, 65535);
        if (!port || *port == 0) {
            return s.bad("a comma-separated list of ports 1-65535; \"" + printable(item) +
                         "\" is not a port");
        }
        if (!ports.insert(static_cast<std::uint16_t>(*port)).second) {
            warnings.push_back(s.warning("port " + item + " is listed more than once"));
        }
    }
    return std::vector<std::uint16_t>(ports.begin(), ports.end());
}

// SMTP_ALLOWDEST: WHO=DEST entries separated by commas or spaces; WHO is a user (name
// or uid), %group (name or gid) or * (everyone).
Result<Subject> parse_who(std::string_view who) {
    Subject out{SubjectKind::User, std::string(who)};
    if (who == "*")
        return Subject{SubjectKind::Everyone, ""};
    if (who.starts_with('%')) {
        out = Subject{SubjectKind::Group, std::string(who.substr(1))};
    }
    const bool ok = text::is_all_digits(out.name)
                        ? text::parse_unsigned(out.name, kMaxId).has_value()
                        : is_valid_account_name(out.name);
    if (!ok) {
        return fail(0, "",
                    "\"" + printable(who) +
                        "\" is not a user, %group (names or numeric ids up to " +
                        std::to_string(kMaxId) + ") or *");
    }
    return out;
}

Result<std::vector<DestException>> parse_allow_dest(const Setting& s,
                                                    std::vector<std::string>& warnings) {
    std::vector<DestException> out;
    std::string_view rest = s.entry.value;
    const auto separator = [](char c) { return c == ',' || text::is_space(c); };
    while (!rest.empty()) {
        const auto start = std::find_if_not(rest.begin(), rest.end(), separator);
        const auto end = std::find_if(start, rest.end(), separator);
        const std::string_view item(start, end);
        rest.remove_prefix(static_cast<std::size_t>(end - rest.begin()));
        if (item.empty())
            continue;
        const auto entry_error = [&](const std::string& problem) {
            return fail(0, s.where(),
                        s.entry.key + ": entry \"" + printable(item) + "\": " + problem);
        };
        const auto eq = item.find('=');
        if (eq == std::string_view::npos) {
            return entry_error(
                "expected WHO=HOST[:PORT] (WHO: a user, %group or * for "
                "everyone)");
        }
        auto who = parse_who(item.substr(0, eq));
        if (!who)
            return entry_error(who.error().detail);
        auto to = parse_destination(item.substr(eq + 1));
        if (!to)
            return entry_error(to.error().detail);
        DestException e{std::move(*who), std::move(*to), s.where()};
        if (std::any_of(out.begin(), out.end(),
                        [&](const DestException& x) { return x.same_rule(e); })) {
            warnings.push_back(s.warning("\"" + e.text() + "\" is listed more than once"));
            continue;
        }
        out.push_back(std::move(e));
    }
    return out;
}

Result<std::chrono::seconds> parse_seconds(const Setting& s, std::uint32_t min) {
    // A day: a DNS answer trusted longer, or a gone address kept longer, is a mistake.
    constexpr std::uint32_t kMaxSeconds = 86400;
    auto n = parse_number<std::uint32_t>(s, min, kMaxSeconds);
    if (!n)
        return std::unexpected(std::move(n.error()));
    return std::chrono::seconds(*n);
}

// ALERT_COMMAND: run without a shell (execve), so one absolute path of an executable
// regular file and no arguments; "" = none.
// The program runs as root (without capabilities; docs/alerts.md), handed what a
// customer's process chose (its folder and command line): like cron, it must be root's
// alone, and so must every folder on the way to it, or a customer who could replace it
// would run as root. A program missing now (a mount not there yet) is a warning, not
// a broken configuration: the alert's child reports it when it runs.
Result<std::string> parse_alert_command(const Setting& s, std::vector<std::string>& warnings) {
    const std::string& v = s.entry.value;
    if (v.empty())
        return v;
    const auto control =
        std::ranges::any_of(v, [](unsigned char c) { return c < 0x20 || c == 0x7f; });
    if (!v.starts_with('/') || control)
        return s.bad("the absolute path of a program (run without a shell, no arguments)");
    std::error_code ec;
    const std::filesystem::path real = std::filesystem::canonical(v, ec);
    if (ec) {
        warnings.push_back(
            s.warning(ec.message() + ": an alert runs it once it is there (" + printable(v) + ")"));
        return v;
    }
    struct stat st {};
    if (::stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || ::access(real.c_str(), X_OK) != 0)
        return s.bad("an executable file");
    for (std::filesystem::path p = real;; p = p.parent_path()) {
        if (::stat(p.c_str(), &st) != 0)
            return s.bad("a program whose folders can be read: " + p.string() + ": " +
                         errno_text(errno));
        if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
            return s.bad("a program only root can change (run as root): " + p.string() +
                         " is not owned by root or is writable by others");
        if (p == p.root_path())
            break;
    }
    // The program checked, not a symbolic link that could be pointed elsewhere later.
    return real.string();
}

// ALERT_EMAIL: one address, LOCAL or LOCAL@DOMAIN, in the plain characters an SMTP
// command and a header take without quoting; "" = none.
Result<std::string> parse_alert_email(const Setting& s) {
    const std::string& v = s.entry.value;
    const auto at = v.find('@');
    const std::string_view local = std::string_view(v).substr(0, at);
    const std::string_view domain =
        at == std::string::npos ? std::string_view() : std::string_view(v).substr(at + 1);
    const auto alnum = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    };
    const auto local_ok = [&](char c) {
        return alnum(c) || std::string_view("._+-").find(c) != std::string_view::npos;
    };
    const auto domain_ok = [&](char c) { return alnum(c) || c == '.' || c == '-'; };
    const bool ok =
        v.size() <= 254 && !local.empty() && std::ranges::all_of(local, local_ok) &&
        (at == std::string::npos || (!domain.empty() && std::ranges::all_of(domain, domain_ok) &&
                                     !domain.starts_with('.') && !domain.ends_with('.')));
    if (!v.empty() && !ok)
        return s.bad("one mail address such as root or root@localhost (letters, digits, . _ + -)");
    return v;
}

// Levenshtein distance, for "did you mean" hints. Only called for strings whose
// lengths differ by at most 2 and a known key (≤ 15 chars), so it stays tiny even
// when the unknown name is a 10 MB line.
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] =
                std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

using Handler = Result<void> (*)(const Setting&, Policy&, std::vector<std::string>&);

struct KeyHandler {
    std::string_view key;
    Handler handle;
};

// Assigns a parsed value, or passes its error on.
template <class T, class U>
Result<void> assign(Result<T> parsed, U& target) {
    if (!parsed)
        return std::unexpected(std::move(parsed.error()));
    target = std::move(*parsed);
    return {};
}

const std::array<KeyHandler, 30> kHandlers = {{
    {"SMTP_BLOCK",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.enabled);
     }},
    {"SMTP_PORTS",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) {
         return assign(parse_ports(s, w), p.ports);
     }},
    {"SMTP_ALLOWUSER",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) {
         return assign(parse_name_list(s, "user", w), p.allow_users);
     }},
    {"SMTP_ALLOWGROUP",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) {
         p.allow_groups_default = false;
         return assign(parse_name_list(s, "group", w), p.allow_groups);
     }},
    {"SMTP_ALLOWLOCAL",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.allow_local);
     }},
    {"MTA_USERS",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) -> Result<void> {
         if (text::upper(s.entry.value) == "AUTO") {
             p.mta_users = kAutoMtaUsers;
             p.mta_users_auto = true;
             return {};
         }
         auto users = parse_name_list(s, "user", w);
         if (!users) return std::unexpected(std::move(users.error()));
         // "auto,exim" most likely means "the usual MTA users and exim"; read as two names
         // it would drop the usual ones and block the MTA. Ask instead of guessing.
         if (std::any_of(users->begin(), users->end(),
                         [](const std::string& u) { return text::upper(u) == "AUTO"; })) {
             return s.bad("\"auto\" alone, or a list of user names without \"auto\"");
         }
         p.mta_users = std::move(*users);
         p.mta_users_auto = false;
         return {};
     }},
    {"DROP_OUT",
     [](const Setting& s, Policy& p, std::vector<std::string>&) -> Result<void> {
         const std::string v = text::upper(s.entry.value);
         if (v == "REJECT") {
             p.action = BlockAction::Reject;
         } else if (v == "DROP") {
             p.action = BlockAction::Drop;
         } else {
             return s.bad("\"REJECT\" or \"DROP\"");
         }
         return {};
     }},
    {"NFQUEUE_NUM",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint16_t>(s, 0, 65535), p.queue_num);
     }},
    {"OBSERVE_RATE",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint32_t>(s, 1, 100000), p.observe_rate);
     }},
    {"OBSERVE_BURST",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint32_t>(s, 1, 100000), p.observe_burst);
     }},
    {"CONTROL_ADMIN_GROUP",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) -> Result<void> {
         auto groups = parse_name_list(s, "group", w);
         if (!groups) return std::unexpected(std::move(groups.error()));
         if (groups->size() > 1) return s.bad("one group name or gid (or \"\" for root only)");
         p.control_admin_group = groups->empty() ? std::string() : groups->front();
         return {};
     }},
    {"CONTROL_READ",
     [](const Setting& s, Policy& p, std::vector<std::string>&) -> Result<void> {
         const std::string v = text::upper(s.entry.value);
         if (v == "ADMIN") {
             p.control_read_all = false;
         } else if (v == "ALL") {
             p.control_read_all = true;
         } else {
             return s.bad("\"admin\" (root and CONTROL_ADMIN_GROUP) or \"all\" (every local user)");
         }
         return {};
     }},
    {"DA_PIPELINE",
     [](const Setting& s, Policy& p, std::vector<std::string>&) -> Result<void> {
         const std::string v = text::upper(s.entry.value);
         if (v == "AUTO") {
             p.da_pipeline = DaPipeline::Auto;
         } else if (v == "1") {
             p.da_pipeline = DaPipeline::On;
         } else if (v == "0") {
             p.da_pipeline = DaPipeline::Off;
         } else {
             return s.bad("\"auto\" (when /etc/virtual exists), \"1\" or \"0\"");
         }
         return {};
     }},
    {"TABLE_OWNER",
     [](const Setting& s, Policy& p, std::vector<std::string>&) -> Result<void> {
         const std::string v = text::upper(s.entry.value);
         if (v == "AUTO") {
             p.table_owner = TableOwner::Auto;
         } else if (v == "1") {
             p.table_owner = TableOwner::On;
         } else if (v == "0") {
             p.table_owner = TableOwner::Off;
         } else {
             return s.bad("\"auto\" (when the kernel has persistent owned tables), \"1\" or "
                          "\"0\"");
         }
         return {};
     }},
    {"DA_ATTEMPT_WEIGHT",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint32_t>(s, 0, 1000), p.da_attempt_weight);
     }},
    {"HISTORY_DAYS",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint32_t>(s, 1, 3650), p.history_days);
     }},
    {"HISTORY_MAX_MB",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_number<std::uint32_t>(s, 16, 1048576), p.history_max_mb);
     }},
    {"DA_BLOCK_CRACKING",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.da_block_cracking);
     }},
    {"SMTP_REDIRECT",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.redirect);
     }},
    {"DROP_OUT_LOGGING",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.log_blocked);
     }},
    {"DROP_UID_LOGGING",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_bool(s), p.log_uid);
     }},
    {"SMTP_ALLOWDEST",
     [](const Setting& s, Policy& p, std::vector<std::string>& w) {
         return assign(parse_allow_dest(s, w), p.allow_dest);
     }},
    {"DEST_TTL_MIN",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_seconds(s, 1), p.dest_ttl_min);
     }},
    {"DEST_TTL_MAX",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_seconds(s, 1), p.dest_ttl_max);
     }},
    {"DEST_GRACE",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_seconds(s, 0), p.dest_grace);
     }},
    {"METRICS_TEXTFILE",
     [](const Setting& s, Policy& p, std::vector<std::string>&) -> Result<void> {
         const std::string& v = s.entry.value;
         // The textfile collector reads only *.prom files (docs/metrics.md).
         if (!v.empty() && (v.front() != '/' || v.size() <= 6 || !v.ends_with(".prom") ||
                            v.find('\0') != std::string::npos || v.ends_with("/.prom")))
             return s.bad("an absolute path ending in .prom, or \"\" for none");
         p.metrics_textfile = v;
         return {};
     }},
    {"ALERT_ATTEMPTS",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         const auto n = text::parse_unsigned(s.entry.value, 1000000);
         if (!n)
             return Result<void>(s.bad("0 (off) or a number from 1 to 1000000"));
         p.alert.attempts = static_cast<std::uint32_t>(*n);
         return Result<void>{};
     }},
    {"ALERT_INTERVAL",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_seconds(s, 60), p.alert.interval);
     }},
    {"ALERT_COMMAND",
     [](const Setting& s, Policy& p, std::vector<std::string>& warnings) {
         return assign(parse_alert_command(s, warnings), p.alert.command);
     }},
    {"ALERT_EMAIL",
     [](const Setting& s, Policy& p, std::vector<std::string>&) {
         return assign(parse_alert_email(s), p.alert.email);
     }},
}};

// DEST_TTL_MAX below DEST_TTL_MIN: the later of the two lines given is the mistake.
Result<void> check_dest_ttls(const conf::ConfFile& conf, const Policy& p) {
    if (p.dest_ttl_max >= p.dest_ttl_min)
        return {};
    const conf::Entry* min = conf.find("DEST_TTL_MIN");
    const conf::Entry* max = conf.find("DEST_TTL_MAX");
    const auto shown = [](std::chrono::seconds v, const conf::Entry* given) {
        return std::to_string(v.count()) + (given == nullptr ? ", the default" : "");
    };
    if (max != nullptr && (min == nullptr || max->line > min->line)) {
        return fail(0, conf.path + ":" + std::to_string(max->line),
                    "DEST_TTL_MAX: " + std::to_string(p.dest_ttl_max.count()) +
                        " is below DEST_TTL_MIN (" + shown(p.dest_ttl_min, min) + ")");
    }
    return fail(0, conf.path + ":" + std::to_string(min->line),
                "DEST_TTL_MIN: " + std::to_string(p.dest_ttl_min.count()) +
                    " is above DEST_TTL_MAX (" + shown(p.dest_ttl_max, max) + ")");
}

std::unexpected<Error> unknown_key(const Setting& s) {
    std::string detail = "unknown setting \"" + printable(s.entry.key) + "\"";
    // Only a name close in length to a known key can be within distance 2 of it; a
    // 10 MB name is not copied again.
    std::size_t longest = 0;
    for (const KeyHandler& h : kHandlers)
        longest = std::max(longest, h.key.size());
    if (s.entry.key.size() > longest + 2)
        return fail(0, s.where(), detail);
    const std::string wanted = text::upper(s.entry.key);
    std::string_view best;
    std::size_t best_distance = 3;
    for (const KeyHandler& h : kHandlers) {
        const std::size_t diff = wanted.size() > h.key.size() ? wanted.size() - h.key.size()
                                                              : h.key.size() - wanted.size();
        if (diff > 2)
            continue;
        const std::size_t d = edit_distance(wanted, h.key);
        if (d < best_distance) {
            best_distance = d;
            best = h.key;
        }
    }
    if (!best.empty())
        detail += " (did you mean " + std::string(best) + "?)";
    return fail(0, s.where(), detail);
}

}  // namespace

Result<LoadedPolicy> policy_from_conf(const conf::ConfFile& conf) {
    LoadedPolicy loaded;
    loaded.policy.source = conf.path;
    for (const conf::Entry& entry : conf.entries) {
        const Setting setting{conf, entry};
        const auto h = std::find_if(kHandlers.begin(), kHandlers.end(),
                                    [&](const KeyHandler& k) { return k.key == entry.key; });
        if (h == kHandlers.end())
            return unknown_key(setting);
        auto done = h->handle(setting, loaded.policy, loaded.warnings);
        if (!done)
            return std::unexpected(std::move(done.error()));
    }
    if (auto ttls = check_dest_ttls(conf, loaded.policy); !ttls)
        return std::unexpected(std::move(ttls.error()));
    for (const conf::SkippedLine& skipped : conf.skipped) {
        loaded.warnings.push_back(conf.path + ":" + std::to_string(skipped.line) + ": " +
                                  text::printable(skipped.text) +
                                  " is ignored: a setting needs \"=\" (KEY = \"value\"); CSF's "
                                  "syntax skips lines without one");
    }
    return loaded;
}

Result<LoadedPolicy> load_policy(const std::string& path, bool missing_ok) {
    auto conf = conf::read_conf_file(path);
    if (!conf) {
        if (missing_ok && conf.error().code == ENOENT) {
            LoadedPolicy defaults;
            defaults.policy.source = "(built-in defaults; " + path + " not found)";
            return defaults;
        }
        return std::unexpected(conf.error());
    }
    return policy_from_conf(*conf);
}

}  // namespace smtpfence
