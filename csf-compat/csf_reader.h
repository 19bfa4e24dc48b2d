// A reader of csf.conf's syntax that accepts and refuses exactly what CSF's own loader
// (ConfigServer::Config::loadconfig) does. smtpfence.conf uses the same syntax, so both
// files go through this one reader. See ../shared/CSF.md for the rules.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace smtpfence::csf {

struct Entry {
    std::string key;    // name with whitespace stripped
    std::string value;  // the text between the first and the last double quote
    int line = 0;       // 1-based line number in the file
};

struct ConfFile {
    std::string path;  // as given, used in every message
    std::vector<Entry> entries;

    // The entry for key, or nullptr. Keys are unique (a repeat is a parse error).
    [[nodiscard]] const Entry* find(std::string_view key) const;
};

// Parses text in csf.conf syntax. path is only used in messages.
// Errors: "PATH:LINE: Invalid configuration line" (value not in double quotes),
//         "PATH:LINE: Setting NAME is repeated (first set on line N)".
[[nodiscard]] Result<ConfFile> parse_conf(std::string_view text, const std::string& path);

// Reads and parses a file (bounded size, regular files only; see common/files.h).
[[nodiscard]] Result<ConfFile> read_conf_file(const std::string& path);

// Splits a comma-separated list as CSF does: items trimmed, empty items dropped.
[[nodiscard]] std::vector<std::string> split_list(std::string_view value);

}  // namespace smtpfence::csf
