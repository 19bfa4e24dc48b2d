#include "csf-compat/csf_rules.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <optional>

#include "common/error.h"
#include "common/fd.h"

namespace smtpfence::csf {
namespace {

// One line of iptables-save split into words; a double-quoted word (a --comment) is
// one word, so text inside it is never taken for an option.
std::vector<std::string_view> words(std::string_view line) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t'))
            ++i;
        if (i == line.size())
            break;
        const std::size_t start = i;
        if (line[i] == '"') {
            ++i;
            while (i < line.size() && line[i] != '"')
                i += line[i] == '\\' && i + 1 < line.size() ? 2 : 1;
            i = std::min(i + 1, line.size());
        } else {
            while (i < line.size() && line[i] != ' ' && line[i] != '\t')
                ++i;
        }
        out.push_back(line.substr(start, i - start));
    }
    return out;
}

// The chain of an "-A CHAIN ..." rule and its target (-j, or -g for a goto).
struct Rule {
    std::string_view chain;
    std::string_view target;
    bool has_dports = false;
};

std::optional<Rule> parse_rule(std::string_view line) {
    std::vector<std::string_view> w = words(line);
    // iptables-save -c puts the counters first: "[12:720] -A ...".
    if (!w.empty() && w.front().starts_with('['))
        w.erase(w.begin());
    if (w.size() < 2 || w[0] != "-A")
        return std::nullopt;
    Rule r{w[1], {}, false};
    for (std::size_t i = 2; i < w.size(); ++i) {
        if ((w[i] == "-j" || w[i] == "-g" || w[i] == "--jump" || w[i] == "--goto") &&
            i + 1 < w.size())
            r.target = w[i + 1];
        if (w[i] == "--dports" || w[i] == "--dport" || w[i] == "--destination-ports" ||
            w[i] == "--destination-port")
            r.has_dports = true;
    }
    return r;
}

constexpr std::string_view kChain = "SMTPOUTPUT";

std::string describe(const CsfSmtpRules& r, std::string_view tool) {
    std::vector<std::string> parts;
    if (r.chain) {
        std::string part = "chain SMTPOUTPUT with " + std::to_string(r.rules) + " rule(s)";
        if (r.blocking > 0)
            part += ", " + std::to_string(r.blocking) + " of them refusing or dropping";
        part += r.hooked ? ", hooked into OUTPUT" : ", not hooked into OUTPUT";
        parts.push_back(part);
    }
    if (r.nat_redirects > 0) {
        parts.push_back(std::to_string(r.nat_redirects) +
                        " REDIRECT rule(s) for ports in the nat table's OUTPUT chain");
    }
    std::string out = std::string(tool) + ": ";
    for (std::size_t i = 0; i < parts.size(); ++i)
        out += (i > 0 ? "; " : "") + parts[i];
    return out;
}

// The first of the usual sbin directories holding name.
std::optional<std::string> find_tool(std::string_view name) {
    for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
        std::string path = std::string(dir) + std::string(name);
        if (::access(path.c_str(), X_OK) == 0)
            return path;
    }
    return std::nullopt;
}

// Runs path without arguments (every table), stdout captured (at most kLimit bytes,
// within kTimeout), stdin and stderr on /dev/null. A saved ruleset with a few hundred
// thousand rules is some tens of MB; 64 MiB is far beyond any CSF install.
Result<std::string> run_capture(const std::string& path) {
    constexpr std::size_t kLimit = 64U << 20U;
    constexpr auto kTimeout = std::chrono::seconds(10);
    std::array<int, 2> fds{};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0)
        return fail(errno, "pipe for " + path);
    UniqueFd read_end(fds[0]);
    UniqueFd write_end(fds[1]);
    const pid_t pid = ::fork();
    if (pid < 0)
        return fail(errno, "fork for " + path);
    if (pid == 0) {
        // Only async-signal-safe calls from here on.
        const int null = ::open("/dev/null", O_RDWR);
        if (null >= 0) {
            ::dup2(null, STDIN_FILENO);
            ::dup2(null, STDERR_FILENO);
        }
        ::dup2(write_end.get(), STDOUT_FILENO);
        char* const argv[] = {const_cast<char*>(path.c_str()), nullptr};
        char* const envp[] = {const_cast<char*>("PATH=/usr/sbin:/sbin:/usr/bin:/bin"), nullptr};
        ::execve(path.c_str(), argv, envp);
        ::_exit(127);
    }
    write_end.reset();
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + kTimeout;
    bool timed_out = false;
    while (true) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{read_end.get(), POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0) {
            timed_out = ready == 0;
            break;
        }
        std::array<char, 65536> buf{};
        const ssize_t n = ::read(read_end.get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        out.append(buf.data(), static_cast<std::size_t>(n));
        if (out.size() > kLimit) {
            timed_out = true;  // treated alike: stop it and say so
            break;
        }
    }
    if (timed_out)
        ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out)
        return fail(ETIMEDOUT, path, "stopped: no end of output within 10 s or 64 MiB");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return fail(0, path,
                    WIFEXITED(status) ? "exited with " + std::to_string(WEXITSTATUS(status))
                                      : "killed by signal " + std::to_string(WTERMSIG(status)));
    }
    return out;
}

}  // namespace

CsfSmtpRules parse_iptables_save(std::string_view text) {
    CsfSmtpRules r;
    std::string_view table;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string_view::npos)
            end = text.size();
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (line.starts_with('*')) {
            table = line.substr(1);
            continue;
        }
        if (table == "filter" && line.starts_with(":")) {
            const std::string_view name = line.substr(1, line.find(' ') - 1);
            if (name == kChain)
                r.chain = true;
            continue;
        }
        const auto rule = parse_rule(line);
        if (!rule)
            continue;
        if (table == "filter") {
            if (rule->chain == "OUTPUT" && rule->target == kChain)
                r.hooked = true;
            if (rule->chain == kChain) {
                ++r.rules;
                if (rule->target == "REJECT" || rule->target == "DROP" ||
                    rule->target == "LOGDROPOUT")
                    ++r.blocking;
            }
        } else if (table == "nat" && rule->chain == "OUTPUT" && rule->target == "REDIRECT" &&
                   rule->has_dports) {
            ++r.nat_redirects;
        }
    }
    return r;
}

std::string explain(const CsfRulesReport& report, bool csf_mode) {
    if (!report.active())
        return {};
    std::string out = "CSF's own SMTP_BLOCK rules are loaded as well (";
    bool first = true;
    for (const auto& [rules, tool] :
         {std::pair{&report.ipv4, "iptables"}, std::pair{&report.ipv6, "ip6tables"}}) {
        if (!rules->chain && rules->nat_redirects == 0)
            continue;
        out += (first ? "" : "; ") + describe(*rules, tool);
        first = false;
    }
    out +=
        "). Both decide every outgoing SMTP connection: it must pass CSF's iptables rules and "
        "smtpfence's table, so a user smtpfence allows but CSF does not is still refused "
        "(by CSF's rules, which run before smtpfence's enforce chain), CSF's allowlist is "
        "resolved once at `csf -r`, and its rules are gone for a moment at every `csf -r`. ";
    out += csf_mode ? "To leave SMTP to smtpfence alone: write smtpfence's own config with "
                      "`smtpfencectl import-csf`, run smtpfenced with --config instead of "
                      "--csf-conf, then set SMTP_BLOCK = \"0\" in csf.conf and run `csf -r` (with "
                      "--csf-conf, SMTP_BLOCK = \"0\" would switch smtpfence off as well)."
                    : "To leave SMTP to smtpfence alone: set SMTP_BLOCK = \"0\" in "
                      "/etc/csf/csf.conf and run `csf -r`.";
    return out;
}

CsfRulesReport detect_csf_rules() {
    CsfRulesReport report;
    for (const auto& [family, names] :
         {std::pair{&report.ipv4,
                    std::array<std::string_view, 3>{"iptables-nft-save", "iptables-legacy-save",
                                                    "iptables-save"}},
          std::pair{&report.ipv6,
                    std::array<std::string_view, 3>{"ip6tables-nft-save", "ip6tables-legacy-save",
                                                    "ip6tables-save"}}}) {
        // Both backends when both are installed (CSF used whichever `iptables` was);
        // the plain name only when neither is, so nothing is read twice.
        std::vector<std::string> tools;
        for (std::size_t i = 0; i < 2; ++i) {
            if (auto path = find_tool(names[i]))
                tools.push_back(*path);
        }
        if (tools.empty()) {
            if (auto path = find_tool(names[2]))
                tools.push_back(*path);
        }
        for (const std::string& tool : tools) {
            auto text = run_capture(tool);
            if (!text) {
                report.problems.push_back(text.error().message());
                continue;
            }
            report.sources.push_back(tool);
            const CsfSmtpRules found = parse_iptables_save(*text);
            family->chain = family->chain || found.chain;
            family->hooked = family->hooked || found.hooked;
            family->rules += found.rules;
            family->blocking += found.blocking;
            family->nat_redirects += found.nat_redirects;
        }
    }
    return report;
}

}  // namespace smtpfence::csf
