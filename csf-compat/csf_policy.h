// csf.conf as smtpfence's policy: `smtpfenced --csf-conf /etc/csf/csf.conf` enforces
// what CSF's SMTP_BLOCK settings say, read the way CSF reads them, and fixes where CSF
// fell short (IPv6 left open, supplementary groups, names resolved once). Every such
// difference is a Note naming the file and line, so the admin sees what changed.
// See ../shared/CSF.md for CSF's semantics.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "common/conf_reader.h"
#include "common/error.h"
#include "policy/policy.h"

namespace smtpfence::csf {

// The csf.conf settings that decide CSF's SMTP blocking; every other setting is read
// (it must parse) and ignored.
inline constexpr std::array<std::string_view, 11> kSmtpKeys = {
    "SMTP_BLOCK",       "SMTP_PORTS", "SMTP_ALLOWUSER", "SMTP_ALLOWGROUP", "SMTP_ALLOWLOCAL",
    "SMTP_REDIRECT",    "IPV6",       "DROP_OUT",       "DROP_LOGGING",    "DROP_OUT_LOGGING",
    "DROP_UID_LOGGING",
};

// Something the admin should know about one setting: how it was read, or where
// smtpfence does something else than CSF did.
struct Note {
    std::string where;  // "PATH:LINE", or PATH for a setting the file does not have
    std::string key;
    std::string text;
    [[nodiscard]] std::string message() const { return where + ": " + key + ": " + text; }
};

// One of kSmtpKeys as the file has it and what smtpfence made of it.
struct Mapped {
    std::string key;
    std::string value;    // as written between the quotes ("" when missing)
    int line = 0;         // 0: not in the file (CSF then reads it as "")
    std::string meaning;  // e.g. "ports 25, 465, 587"
};

struct CsfPolicy {
    Policy policy;                     // policy.source is the csf.conf path
    std::vector<Mapped> mapped;        // kSmtpKeys, in that order
    std::vector<Note> notes;           // differences from CSF, values read CSF's way
    std::vector<std::string> ignored;  // every other setting of the file, in file order
};

// The smtpfence.conf settings whose Policy fields the mapping sets: in CSF mode csf.conf
// decides them (and they are ignored in smtpfence.conf).
inline constexpr std::array<std::string_view, 9> kDecidedByCsf = {
    "SMTP_BLOCK",    "SMTP_PORTS", "SMTP_ALLOWUSER",   "SMTP_ALLOWGROUP",  "SMTP_ALLOWLOCAL",
    "SMTP_REDIRECT", "DROP_OUT",   "DROP_OUT_LOGGING", "DROP_UID_LOGGING",
};

// Maps a parsed csf.conf onto base (whose other fields stay). Booleans are Perl truth as in CSF (""
// and "0" off, anything else on), a missing setting reads as "" as in CSF; list items lose all
// whitespace. Errors (naming file and line) only where CSF itself failed to load its rules:
// SMTP_PORTS that are not ports or port ranges, DROP_OUT other than DROP or REJECT.
[[nodiscard]] Result<CsfPolicy> policy_from_csf(const conf::ConfFile& conf, Policy base = {});

// Reads and maps path; read and syntax errors name file and line.
[[nodiscard]] Result<CsfPolicy> load_csf_policy(const std::string& path, Policy base = {});

// `smtpfenced --csf-conf`: csf.conf decides every SMTP setting CSF has; smtpfence.conf
// (config_path; a missing file is fine unless config_must_exist) still gives what only
// smtpfence has (MTA_USERS, NFQUEUE_NUM, the control socket, DirectAdmin's pipeline).
// A setting of kDecidedByCsf in smtpfence.conf is ignored with a warning. The notes of
// the mapping are warnings too.
[[nodiscard]] Result<LoadedPolicy> load_csf_mode(const std::string& csf_path,
                                                 const std::string& config_path,
                                                 bool config_must_exist);

// For the daemon: the policy with every note as a warning line.
[[nodiscard]] LoadedPolicy to_loaded_policy(CsfPolicy csf);

// CSF's truth test on a setting's value (Perl): false for "" and "0" only.
[[nodiscard]] constexpr bool perl_true(std::string_view value) {
    return !value.empty() && value != "0";
}

}  // namespace smtpfence::csf
