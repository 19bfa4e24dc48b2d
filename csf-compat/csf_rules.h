// Whether CSF's own SMTP_BLOCK rules are loaded next to ours. CSF puts them in the
// iptables chain SMTPOUTPUT (hooked into OUTPUT, one owner-match rule per allowed user
// and group, then REJECT/DROP or its logging chain), and for SMTP_REDIRECT REDIRECT
// rules into the nat table's OUTPUT chain; in IPv6 only with IPV6 = "1". Both sets of
// rules then decide every SMTP SYN, which an admin must be told. The parser works on
// iptables-save's text, so it is tested without root; detect_csf_rules() runs the tools.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace smtpfence::csf {

// CSF's SMTP rules in one family's iptables-save output.
struct CsfSmtpRules {
    bool chain = false;             // table filter declares chain SMTPOUTPUT
    bool hooked = false;            // -A OUTPUT ... -j SMTPOUTPUT
    std::size_t rules = 0;          // -A SMTPOUTPUT ... rules
    std::size_t blocking = 0;       // of those, ending in -j REJECT, DROP or LOGDROPOUT
    std::size_t nat_redirects = 0;  // table nat: -A OUTPUT ... --dports ... -j REDIRECT
    // Something of CSF's SMTP blocking decides packets.
    [[nodiscard]] bool active() const {
        return (chain && hooked && rules > 0) || nat_redirects > 0;
    }
};

// Parses iptables-save (or ip6tables-save) output, of either backend.
[[nodiscard]] CsfSmtpRules parse_iptables_save(std::string_view text);

struct CsfRulesReport {
    CsfSmtpRules ipv4;
    CsfSmtpRules ipv6;
    std::vector<std::string> sources;   // the tools whose output was read
    std::vector<std::string> problems;  // tools that failed (not installed is no problem)
    [[nodiscard]] bool active() const { return ipv4.active() || ipv6.active(); }
};

// For status: "" when CSF's SMTP rules are not loaded; otherwise what is loaded, what
// the double enforcement means, and how to hand SMTP over to smtpfence. csf_mode: the
// daemon runs with --csf-conf (switching SMTP_BLOCK off in csf.conf would then switch
// smtpfence off as well, so the advice differs).
[[nodiscard]] std::string explain(const CsfRulesReport& report, bool csf_mode);

// Runs iptables-save and ip6tables-save (the nft and legacy backends when both are
// installed, each with a time limit) in the caller's network namespace and parses
// their output. Needs CAP_NET_ADMIN; a missing tool is skipped.
[[nodiscard]] CsfRulesReport detect_csf_rules();

}  // namespace smtpfence::csf
