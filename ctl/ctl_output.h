// What smtpfencectl prints: the daemon's replies as text for a terminal (every string
// from the daemon or a user's process made terminal-safe), and the exit codes they mean.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "ctl/protocol.h"

namespace smtpfence::cli {

using nlohmann::json;

// Exit codes (docs/commands.md, smtpfencectl(8)); 0-2 as smtpfenced.
constexpr int kExitUnreachable = 3;  // the daemon is not running / socket missing
constexpr int kExitDenied = 4;       // the daemon refused: not root or admin group
constexpr int kExitBlocked = 5;      // check: would be blocked; test: did not connect
constexpr int kExitConflict = 6;     // deny: still allowed by the config or a group

// j[key] as terminal-safe text, at most max bytes (paths and command lines come from
// users' processes).
[[nodiscard]] std::string safe(const json& j, const char* key, std::size_t max = 200);
// The daemon's own text with any control character that got in shown as \xHH.
[[nodiscard]] std::string terminal_safe(std::string_view text);
// j[key] as terminal-safe text ("" when missing or not a string).
[[nodiscard]] std::string field(const json& j, const char* key);
// An epoch as local "YYYY-MM-DD HH:MM:SS".
[[nodiscard]] std::string when(std::int64_t epoch);

void print_status(const json& r);
void print_list(const json& r);
// The destination exceptions of a list answer, with their addresses and uses.
void print_exceptions(const json& r);
void print_attempts(const json& r);
void print_top(const json& r);
// The result of command as text (or JSON with --json), and the exit code it means.
[[nodiscard]] int print_result(ctl::Command command, const json& r, bool as_json);

}  // namespace smtpfence::cli
