// `smtpfencectl import-csf [/etc/csf/csf.conf]`: CSF's SMTP settings moved into
// smtpfence's own config, for a clean migration off CSF. The mapping is the one
// `smtpfenced --csf-conf` enforces (csf_policy.h), so importing changes nothing that
// is enforced: the written smtpfence.conf loads to the same policy.
#pragma once

#include <string>
#include <string_view>

#include "common/conf_reader.h"
#include "common/error.h"
#include "csf-compat/csf_policy.h"

namespace smtpfence::csf {

inline constexpr const char* kDefaultCsfConfPath = "/etc/csf/csf.conf";

struct ImportResult {
    // smtpfence.conf in csf.conf syntax: every setting with a comment naming the
    // csf.conf line it came from and what smtpfence does differently.
    std::string config_text;
    // For the terminal: what was mapped (setting, line, meaning), the notes, and the
    // settings ignored because they are not about outgoing SMTP.
    std::string report;
    CsfPolicy mapping;  // the same, as data
};

// Imports a parsed csf.conf. Fails only where the mapping does (see policy_from_csf).
[[nodiscard]] Result<ImportResult> import_csf(const conf::ConfFile& conf);

// Reads, parses and imports path; errors name file and line.
[[nodiscard]] Result<ImportResult> import_csf_file(const std::string& path);

// Writes config_text to config_path atomically. An existing file is kept (EEXIST)
// unless replace: an admin's smtpfence.conf is never overwritten by surprise.
[[nodiscard]] Result<void> write_imported_config(const ImportResult& imported,
                                                 const std::string& config_path, bool replace);

}  // namespace smtpfence::csf
