#include "csf-compat/csf_policy.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <set>

#include "common/names.h"
#include "common/text.h"

namespace smtpfence::csf {
namespace {

// Perl's \s on CSF's undecoded bytes.
bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

std::string without_spaces(std::string_view s) {
    std::string out;
    for (const char c : s) {
        if (!is_space(c))
            out.push_back(c);
    }
    return out;
}

std::string quoted(std::string_view value) {
    return "\"" + text::printable(value) + "\"";
}

// iptables' multiport resolves service names through /etc/services; these are the
// ones an SMTP port list can hold, so the answer does not depend on that file.
std::optional<std::uint16_t> smtp_service(std::string_view name) {
    if (name == "smtp")
        return 25;
    if (name == "smtps" || name == "submissions" || name == "urd")
        return 465;
    if (name == "submission")
        return 587;
    return std::nullopt;
}

std::optional<std::uint16_t> one_port(std::string_view text) {
    if (auto named = smtp_service(text))
        return named;
    const auto n = text::parse_unsigned(text, 65535);
    if (!n || *n == 0)
        return std::nullopt;
    return static_cast<std::uint16_t>(*n);
}

class Mapper {
  public:
    Mapper(const conf::ConfFile& conf, Policy base) : conf_(conf) {
        out_.policy = std::move(base);
        out_.policy.source = conf.path;
    }

    Result<CsfPolicy> run() {
        for (const conf::Entry& e : conf_.entries) {
            if (std::find(kSmtpKeys.begin(), kSmtpKeys.end(), e.key) == kSmtpKeys.end()) {
                out_.ignored.push_back(e.key);
                warn_if_lookalike(e);
            }
        }
        Policy& p = out_.policy;

        const bool block = flag("SMTP_BLOCK", "SMTP is guarded", "nothing is enforced");
        auto ports = map_ports();
        if (!ports)
            return std::unexpected(ports.error());
        p.enabled = block && !ports->empty();
        if (!ports->empty())
            p.ports = std::move(*ports);
        p.allow_users = names("SMTP_ALLOWUSER", "user");
        p.allow_groups = names("SMTP_ALLOWGROUP", "group");
        // Whatever the file says replaces smtpfence's default list, as in CSF; a
        // missing setting is CSF's "" (no group).
        p.allow_groups_default = false;
        p.allow_local = flag("SMTP_ALLOWLOCAL", "the server's own addresses stay open",
                             "SMTP to the server's own addresses is guarded too");
        p.redirect = flag("SMTP_REDIRECT", "blocked connections go to the local MTA",
                          "blocked connections are refused");
        map_ipv6();
        if (auto action = map_drop_out(); !action)
            return std::unexpected(action.error());
        map_logging();
        explain_combinations();
        return std::move(out_);
    }

  private:
    // Records how key reads; returns the entry (nullptr when missing).
    const conf::Entry* record(std::string_view key, std::string meaning) {
        const conf::Entry* e = conf_.find(key);
        out_.mapped.push_back(Mapped{std::string(key), e != nullptr ? e->value : std::string(),
                                     e != nullptr ? e->line : 0, std::move(meaning)});
        return e;
    }

    std::string where(const conf::Entry* e) const {
        return e != nullptr ? conf_.path + ":" + std::to_string(e->line) : conf_.path;
    }

    void note(const conf::Entry* e, std::string_view key, std::string text) {
        out_.notes.push_back(Note{where(e), std::string(key), std::move(text)});
    }

    // A 0/1 setting read as CSF reads it; notes a missing one and values that only
    // Perl's truth test makes on or off.
    bool flag(std::string_view key, std::string on, std::string off) {
        const conf::Entry* e = conf_.find(key);
        const bool value = e != nullptr && perl_true(e->value);
        record(key, value ? std::move(on) : std::move(off));
        if (e == nullptr) {
            note(e, key, "not set; CSF reads a missing setting as \"\", which is off");
        } else if (e->value != "0" && e->value != "1") {
            note(e, key,
                 "value " + quoted(e->value) + " read as " + (value ? "on" : "off") +
                     ", as CSF does (anything but \"\" and \"0\" is on)");
        }
        return value;
    }

    Result<std::vector<std::uint16_t>> map_ports() {
        const conf::Entry* e = conf_.find("SMTP_PORTS");
        // CSF removes every whitespace character before handing the list to iptables'
        // multiport match, which takes ports, first:last ranges and service names.
        const std::string compact = e != nullptr ? without_spaces(e->value) : std::string();
        std::set<std::uint16_t> ports;
        for (const std::string& item : conf::split_list(compact)) {
            const std::size_t colon = item.find(':');
            const auto first = one_port(item.substr(0, colon));
            const auto last = colon == std::string::npos ? first : one_port(item.substr(colon + 1));
            if (!first || !last || *first > *last) {
                return fail(0, where(e),
                            "SMTP_PORTS: bad value " + quoted(e->value) +
                                ": expected ports 1-65535 or ranges FIRST:LAST, comma-separated; " +
                                quoted(item) + " is neither (CSF's iptables refused it too)");
            }
            for (std::uint32_t port = *first; port <= *last; ++port)
                ports.insert(static_cast<std::uint16_t>(port));
        }
        std::vector<std::string> shown;
        shown.reserve(ports.size());
        for (const std::uint16_t port : ports)
            shown.push_back(std::to_string(port));
        record("SMTP_PORTS", ports.empty() ? "no port" : "ports " + text::join(shown, ", "));
        if (ports.empty()) {
            note(e, "SMTP_PORTS",
                 e == nullptr ? "not set: CSF loads no SMTP rule without ports, so nothing is "
                                "enforced"
                              : "empty: CSF loads no SMTP rule without ports, so nothing is "
                                "enforced");
        }
        return std::vector<std::uint16_t>(ports.begin(), ports.end());
    }

    // SMTP_ALLOWUSER / SMTP_ALLOWGROUP: CSF splits at commas, removes whitespace from
    // each item and looks it up; what is not found is skipped without a word.
    std::vector<std::string> names(std::string_view key, std::string_view what) {
        const conf::Entry* e = conf_.find(key);
        std::vector<std::string> out;
        if (e != nullptr) {
            for (const std::string& item : conf::split_list(e->value)) {
                std::string name = without_spaces(item);
                if (name.empty())
                    continue;
                if (name != item) {
                    note(e, key,
                         quoted(item) + " read as " + quoted(name) +
                             " (CSF removes whitespace inside names)");
                }
                if (!text::is_all_digits(name) && !is_valid_account_name(name)) {
                    note(e, key,
                         quoted(name) + " is not a valid " + std::string(what) +
                             " name; skipped, as CSF did");
                    continue;
                }
                if (text::is_all_digits(name)) {
                    if (!text::parse_unsigned(name, 4294967294U)) {
                        note(e, key, quoted(name) + " is out of range; skipped");
                        continue;
                    }
                    note(e, key,
                         quoted(name) + " is taken as " + (what == "user" ? "uid " : "gid ") +
                             name + "; CSF looked it up as a name and skipped it");
                }
                if (what == "group" && (name == "root" || name == "0")) {
                    note(e, key,
                         quoted(name) +
                             ": CSF skipped gid 0 (its check reads 0 as false); smtpfence "
                             "allows the group as written");
                }
                if (std::find(out.begin(), out.end(), name) == out.end())
                    out.push_back(std::move(name));
            }
        }
        record(key, out.empty() ? "no " + std::string(what) + " allowed"
                                : std::string(what) + "s " + text::join(out, ", ") + " allowed");
        if (e == nullptr)
            note(e, key,
                 "not set; CSF reads a missing setting as \"\" (no " + std::string(what) + ")");
        return out;
    }

    void map_ipv6() {
        const conf::Entry* e = conf_.find("IPV6");
        const bool on = e != nullptr && perl_true(e->value);
        record("IPV6", on ? "IPv6 guarded (as CSF did)" : "IPv6 guarded all the same");
        if (!on) {
            note(e, "IPV6",
                 std::string(e == nullptr ? "not set" : "\"" + text::printable(e->value) + "\"") +
                     ": CSF loaded no IPv6 rule, which left SMTP over IPv6 open to every "
                     "user; smtpfence guards IPv6 as well");
        }
    }

    Result<void> map_drop_out() {
        const conf::Entry* e = conf_.find("DROP_OUT");
        if (e == nullptr) {
            record("DROP_OUT", "refused (TCP reset)");
            note(e, "DROP_OUT", "not set; blocked connections are refused (REJECT)");
            return {};
        }
        std::string upper = e->value;
        for (char& c : upper) {
            if (c >= 'a' && c <= 'z')
                c = static_cast<char>(c - 'a' + 'A');
        }
        if (upper == "DROP") {
            out_.policy.action = BlockAction::Drop;
            record("DROP_OUT", "dropped (the caller times out)");
        } else if (upper == "REJECT") {
            out_.policy.action = BlockAction::Reject;
            record("DROP_OUT", "refused (TCP reset)");
        } else {
            return fail(0, where(e),
                        "DROP_OUT: bad value " + quoted(e->value) +
                            ": expected \"DROP\" or \"REJECT\" (the iptables targets CSF uses)");
        }
        if (upper != e->value)
            note(e, "DROP_OUT", quoted(e->value) + " read as " + quoted(upper));
        return {};
    }

    void map_logging() {
        const conf::Entry* drop_logging = conf_.find("DROP_LOGGING");
        const conf::Entry* out_logging = conf_.find("DROP_OUT_LOGGING");
        const bool all = drop_logging != nullptr && perl_true(drop_logging->value);
        const bool out = out_logging != nullptr && perl_true(out_logging->value);
        record("DROP_LOGGING", all ? "kernel log lines for dropped packets"
                                   : "no kernel log lines for dropped packets");
        // CSF writes its LOGDROPOUT log rule only when DROP_LOGGING is on as well.
        out_.policy.log_blocked = all && out;
        record("DROP_OUT_LOGGING", out_.policy.log_blocked
                                       ? "a kernel log line per refused SYN (30/min, burst 5)"
                                       : "no log line for refused SYNs");
        if (out && !all) {
            note(out_logging, "DROP_OUT_LOGGING",
                 "on, but DROP_LOGGING is off: CSF wrote no line for blocked SYNs then, and "
                 "neither does smtpfence");
        }
        const conf::Entry* uid = conf_.find("DROP_UID_LOGGING");
        out_.policy.log_uid = uid != nullptr && perl_true(uid->value);
        record("DROP_UID_LOGGING",
               out_.policy.log_uid ? "log lines carry UID= and GID=" : "log lines without the uid");
    }

    void explain_combinations() {
        const Policy& p = out_.policy;
        if (p.redirect && !p.allow_local) {
            note(conf_.find("SMTP_REDIRECT"), "SMTP_REDIRECT",
                 "with SMTP_REDIRECT on, the server's own addresses stay reachable whatever "
                 "SMTP_ALLOWLOCAL says (the redirected connections go there too); blocked "
                 "users' connections to them are redirected to the local MTA's port and counted");
        }
        if (p.redirect && p.log_blocked) {
            note(conf_.find("SMTP_REDIRECT"), "SMTP_REDIRECT",
                 "redirected connections are not logged, as with CSF; only refused ones are");
        }
    }

    // "smtp_block", "SMTP_BLOCK " after a byte order mark, ...: a setting that looks
    // like one of ours but is not. CSF ignored it; say so rather than be silent.
    void warn_if_lookalike(const conf::Entry& e) {
        std::string normal;
        for (const char c : e.key) {
            if (c >= 'a' && c <= 'z')
                normal.push_back(static_cast<char>(c - 'a' + 'A'));
            else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')
                normal.push_back(c);
        }
        const auto it = std::find(kSmtpKeys.begin(), kSmtpKeys.end(), normal);
        if (it == kSmtpKeys.end())
            return;
        out_.notes.push_back(Note{conf_.path + ":" + std::to_string(e.line), text::printable(e.key),
                                  "is not " + std::string(*it) +
                                      " (names are exact and case-sensitive); CSF ignored "
                                      "it, and so does smtpfence"});
    }

    const conf::ConfFile& conf_;
    CsfPolicy out_;
};

}  // namespace

Result<CsfPolicy> policy_from_csf(const conf::ConfFile& conf, Policy base) {
    return Mapper(conf, std::move(base)).run();
}

Result<CsfPolicy> load_csf_policy(const std::string& path, Policy base) {
    auto conf = conf::read_conf_file(path);
    if (!conf)
        return std::unexpected(conf.error());
    return policy_from_csf(*conf, std::move(base));
}

Result<LoadedPolicy> load_csf_mode(const std::string& csf_path, const std::string& config_path,
                                   bool config_must_exist) {
    std::vector<std::string> warnings;
    conf::ConfFile own;
    own.path = config_path;
    if (auto read = conf::read_conf_file(config_path)) {
        own = std::move(*read);
    } else if (config_must_exist || read.error().code != ENOENT) {
        return std::unexpected(read.error());
    }
    std::erase_if(own.entries, [&](const conf::Entry& e) {
        if (std::find(kDecidedByCsf.begin(), kDecidedByCsf.end(), e.key) == kDecidedByCsf.end())
            return false;
        warnings.push_back(own.path + ":" + std::to_string(e.line) + ": " + e.key +
                           ": ignored: with --csf-conf, " + csf_path + " decides it");
        return true;
    });
    auto base = policy_from_conf(own);
    if (!base)
        return std::unexpected(base.error());
    warnings.insert(warnings.end(), base->warnings.begin(), base->warnings.end());
    auto csf = load_csf_policy(csf_path, std::move(base->policy));
    if (!csf)
        return std::unexpected(csf.error());
    LoadedPolicy loaded = to_loaded_policy(std::move(*csf));
    loaded.warnings.insert(loaded.warnings.begin(), warnings.begin(), warnings.end());
    return loaded;
}

LoadedPolicy to_loaded_policy(CsfPolicy csf) {
    LoadedPolicy loaded;
    loaded.policy = std::move(csf.policy);
    for (const Note& n : csf.notes)
        loaded.warnings.push_back(n.message());
    return loaded;
}

}  // namespace smtpfence::csf
