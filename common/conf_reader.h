// A reader of csf.conf's syntax that accepts and refuses exactly what CSF's own loader
// (ConfigServer::Config::loadconfig) does. smtpfence.conf uses the same syntax, so both
// files go through this one reader. See ../shared/CSF.md for the rules.
// Where a summary of the rules and CSF's code disagree (an indented setting is read, not
// skipped: CSF trims a line before its comment test), the code wins; see conf_reader.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace smtpfence::conf {

struct Entry {
    std::string key;    // name with whitespace stripped
    std::string value;  // the text between the first and the last double quote
    int line = 0;       // 1-based line number in the file
};

// A line CSF's loader skips although it is neither blank nor a comment: it has no "=".
// Not an error (CSF reads such files), but worth a warning: `SMTP_BLOCK "0"` is no
// setting at all.
struct SkippedLine {
    std::string text;  // the record, trimmed, as read (show it through printable())
    int line = 0;
};

struct ConfFile {
    std::string path;  // as given, used in every message
    std::vector<Entry> entries;
    std::vector<SkippedLine> skipped;

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

}  // namespace smtpfence::conf
