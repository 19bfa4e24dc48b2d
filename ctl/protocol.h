// The control protocol between smtpfencectl and smtpfenced, version 1.
//
// Transport: a Unix stream socket (default /run/smtpfence/control.sock). The client
// sends ONE request, a JSON object on one line ending in '\n', and reads ONE response
// line; then the daemon closes the connection. One request per connection keeps the
// daemon's state per client tiny and makes a hung client cost one file descriptor
// until its deadline.
//
//   request:  {"v":1,"cmd":"allow","user":"alice"}
//   response: {"v":1,"ok":true,"result":{...}}
//             {"v":1,"ok":false,"error":{"code":"not_found","message":"..."}}
//
// The daemon authorises each request from the peer's kernel credentials
// (SO_PEERCRED, SO_PEERGROUPS), never from anything the client says.
#pragma once

#include <cstdint>
#include <expected>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace smtpfence::ctl {

inline constexpr int kProtocolVersion = 1;
// A request is a few hundred bytes; 64 KiB leaves room for long names and refuses a
// client that streams garbage before it costs memory.
inline constexpr std::size_t kMaxRequestBytes = std::size_t{64} * 1024U;
inline constexpr const char* kDefaultControlSocket = "/run/smtpfence/control.sock";

enum class Command {
    Version,   // protocol and daemon version
    Status,    // enforcing?, table, queue, worker, counters
    List,      // the allowlist with the reason of each entry
    Check,     // would USER be blocked, and why (not)
    Attempts,  // recorded attempts, filtered
    Top,       // accounts ranked by attempts since a time
    Allow,     // add a user or a group to the managed allowlist, or an exception (to)
    Deny,      // remove it
    Test,      // a real connection as USER to ADDRESS:PORT
    Reload,    // re-read config and accounts, re-apply (as SIGHUP)
    Remove,    // delete the table: SMTP is no longer guarded
};

// Read-only commands may be open to more peers than changes (CONTROL_READ).
[[nodiscard]] bool is_change(Command c);
[[nodiscard]] std::string_view to_string(Command c);

struct Request {
    Command command = Command::Version;
    std::optional<std::string> user;   // allow, deny, check, test; attempts: user, account or uid
    std::optional<std::string> group;  // allow, deny
    bool everyone = false;             // allow, deny: an exception for every user
    // allow, deny, check: a destination exception (HOST[:PORT], policy/destination.h),
    // in its canonical text once parsed.
    std::optional<std::string> to;
    std::optional<std::string> address;  // test: numeric IPv4 or IPv6
    std::uint16_t port = 25;             // test
    std::optional<std::int64_t> since;   // attempts, top: epoch seconds, [since, until)
    std::optional<std::int64_t> until;   // attempts, top: epoch seconds, after since
    std::optional<std::string> account;  // attempts: the hosting account
    std::optional<std::string> exe;      // attempts: an executable's absolute path
    std::optional<std::string> dst;      // attempts: a destination address, canonical text
    std::uint32_t limit = 100;           // attempts: newest N records
};

// Machine-readable error codes; the CLI maps them to exit codes.
enum class ErrorCode {
    BadRequest,          // not JSON, wrong types, unknown fields, too long
    UnsupportedVersion,  // "v" is not one we speak
    UnknownCommand,
    PermissionDenied,  // peer may not do this
    NotFound,          // unknown user or group
    InvalidArgument,   // malformed address, port, name
    Conflict,          // e.g. deny of a user that the config file allows
    Failed,            // the kernel refused, I/O failed
};

[[nodiscard]] std::string_view to_string(ErrorCode c);
[[nodiscard]] std::optional<ErrorCode> error_code_from_string(std::string_view s);

struct ProtocolError {
    ErrorCode code = ErrorCode::BadRequest;
    std::string message;
};

// Parses and validates one request line (without its '\n'). Every problem is a
// ProtocolError naming the field and what is wrong with it.
[[nodiscard]] std::expected<Request, ProtocolError> parse_request(std::string_view line);

// The request as a JSON line (with '\n'), as the client sends it.
[[nodiscard]] std::string encode_request(const Request& request);

// Response lines (with '\n').
[[nodiscard]] std::string encode_ok(const nlohmann::json& result);
[[nodiscard]] std::string encode_error(const ProtocolError& error);

// What is wrong with a user or group name in a request, "" when valid: the one rule
// of common/names.h (account_name_problem).
[[nodiscard]] std::string name_problem(std::string_view name);

}  // namespace smtpfence::ctl
