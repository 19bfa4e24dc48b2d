#include "ctl/protocol.h"

#include <arpa/inet.h>

#include <array>
#include <limits>
#include <set>
#include <utility>

#include "nfq/history_query.h"
#include "policy/allow_store.h"
#include "policy/destination.h"

namespace smtpfence::ctl {
namespace {

using nlohmann::json;

constexpr std::array<std::pair<Command, std::string_view>, 11> kCommands{{
    {Command::Version, "version"},
    {Command::Status, "status"},
    {Command::List, "list"},
    {Command::Check, "check"},
    {Command::Attempts, "attempts"},
    {Command::Top, "top"},
    {Command::Allow, "allow"},
    {Command::Deny, "deny"},
    {Command::Test, "test"},
    {Command::Reload, "reload"},
    {Command::Remove, "remove"},
}};

constexpr std::array<std::pair<ErrorCode, std::string_view>, 8> kErrors{{
    {ErrorCode::BadRequest, "bad_request"},
    {ErrorCode::UnsupportedVersion, "unsupported_version"},
    {ErrorCode::UnknownCommand, "unknown_command"},
    {ErrorCode::PermissionDenied, "permission_denied"},
    {ErrorCode::NotFound, "not_found"},
    {ErrorCode::InvalidArgument, "invalid_argument"},
    {ErrorCode::Conflict, "conflict"},
    {ErrorCode::Failed, "failed"},
}};

// The fields each command takes besides "v" and "cmd".
std::set<std::string_view> allowed_fields(Command c) {
    switch (c) {
        case Command::Allow:
        case Command::Deny:
            return {"user", "group", "everyone", "to"};
        case Command::Check:
            return {"user", "to"};
        case Command::Test:
            return {"user", "address", "port"};
        case Command::Attempts:
            return {"since", "until", "user", "account", "exe", "dst", "limit"};
        case Command::Top:
            return {"since", "until"};
        default:
            return {};
    }
}

// PATH_MAX: longer is no path the kernel hands the worker.
constexpr std::size_t kMaxPathBytes = 4096;

std::unexpected<ProtocolError> bad(ErrorCode code, std::string message) {
    return std::unexpected(ProtocolError{code, std::move(message)});
}

// Quotes at most 80 bytes of a client-supplied value for an error message, with
// control bytes escaped: an error must not become a vehicle for terminal escapes.
std::string quote_value(std::string_view s) {
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size() && i < 80; ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
            constexpr std::string_view hex = "0123456789abcdef";
            out += "\\x";
            out += hex[c >> 4U];
            out += hex[c & 0xfU];
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > 80)
        out += "...";
    return out + "\"";
}

std::expected<std::string, ProtocolError> string_field(const json& j, std::string_view field) {
    const json& v = j.at(std::string(field));
    if (!v.is_string())
        return bad(ErrorCode::BadRequest, "field \"" + std::string(field) + "\" must be a string");
    return v.get<std::string>();
}

std::expected<std::string, ProtocolError> name_field(const json& j, std::string_view field) {
    auto s = string_field(j, field);
    if (!s)
        return s;
    if (const std::string problem = name_problem(*s); !problem.empty()) {
        return bad(ErrorCode::InvalidArgument,
                   std::string(field) + " name " + quote_value(*s) + ": " + problem);
    }
    return s;
}

// The envelope every request shares: a JSON object of at most kMaxRequestBytes with
// the protocol version, a known command and only the fields that command takes.
std::expected<json, ProtocolError> parse_envelope(std::string_view line, Request& r) {
    if (line.size() > kMaxRequestBytes) {
        return bad(ErrorCode::BadRequest,
                   "request longer than " + std::to_string(kMaxRequestBytes) + " bytes");
    }
    json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const json& j = parsed;
    if (j.is_discarded())
        return bad(ErrorCode::BadRequest, "request is not valid JSON");
    if (!j.is_object())
        return bad(ErrorCode::BadRequest, "request must be a JSON object");
    if (!j.contains("v") || !j["v"].is_number_integer())
        return bad(ErrorCode::BadRequest,
                   "field \"v\" (protocol version) missing or not an integer");
    if (j["v"].get<std::int64_t>() != kProtocolVersion) {
        return bad(ErrorCode::UnsupportedVersion, "protocol version " + j["v"].dump() +
                                                      " is not supported; this daemon speaks " +
                                                      std::to_string(kProtocolVersion));
    }
    if (!j.contains("cmd") || !j["cmd"].is_string())
        return bad(ErrorCode::BadRequest, "field \"cmd\" missing or not a string");
    const std::string cmd = j["cmd"].get<std::string>();
    bool known = false;
    for (const auto& [c, name] : kCommands) {
        if (name == cmd) {
            r.command = c;
            known = true;
        }
    }
    if (!known)
        return bad(ErrorCode::UnknownCommand, "unknown command " + quote_value(cmd));

    const auto fields = allowed_fields(r.command);
    for (const auto& [key, value] : j.items()) {
        if (key == "v" || key == "cmd")
            continue;
        if (!fields.contains(key)) {
            return bad(ErrorCode::BadRequest,
                       "command " + cmd + " takes no field " + quote_value(key));
        }
    }
    return parsed;
}

std::expected<std::string, ProtocolError> address_field(const json& j) {
    auto a = string_field(j, "address");
    if (!a)
        return a;
    // inet_pton reads a C string: "192.0.2.25\u0000..." would pass on its prefix and
    // the whole string, NUL and all that follows, reach the log and the reply.
    in6_addr buf{};
    if (a->find('\0') != std::string::npos ||
        (inet_pton(AF_INET, a->c_str(), &buf) != 1 && inet_pton(AF_INET6, a->c_str(), &buf) != 1)) {
        return bad(ErrorCode::InvalidArgument,
                   "address " + quote_value(*a) + " is not a numeric IPv4 or IPv6 address");
    }
    return a;
}

// "to": a destination exception's HOST[:PORT], kept in its canonical text.
std::expected<std::string, ProtocolError> destination_field(const json& j) {
    auto text = string_field(j, "to");
    if (!text)
        return text;
    auto dest = parse_destination(*text);
    if (!dest)
        return bad(ErrorCode::InvalidArgument, "to " + dest.error().message());
    return dest->text();
}

// "since" and "until": epoch seconds, until after since.
std::expected<void, ProtocolError> read_times(const json& j, Request& r) {
    for (const auto& [field, time] : {std::pair{"since", &r.since}, std::pair{"until", &r.until}}) {
        if (!j.contains(field))
            continue;
        const json& t = j[field];
        if (!t.is_number_integer() || t.get<std::int64_t>() < 0)
            return bad(ErrorCode::InvalidArgument,
                       std::string(field) + " must be a non-negative epoch time");
        *time = t.get<std::int64_t>();
    }
    if (r.since && r.until && *r.until <= *r.since)
        return bad(ErrorCode::InvalidArgument, "until must be after since");
    return {};
}

// The filters of attempts besides user and the times: account, exe, dst.
std::expected<void, ProtocolError> read_filters(const json& j, Request& r) {
    if (j.contains("account")) {
        auto a = name_field(j, "account");
        if (!a)
            return std::unexpected(a.error());
        r.account = std::move(*a);
    }
    if (j.contains("exe")) {
        auto e = string_field(j, "exe");
        if (!e)
            return std::unexpected(e.error());
        if (e->empty() || e->front() != '/' || e->find('\0') != std::string::npos ||
            e->size() > kMaxPathBytes)
            return bad(ErrorCode::InvalidArgument,
                       "exe " + quote_value(*e) + " is not an absolute path");
        r.exe = std::move(*e);
    }
    if (j.contains("dst")) {
        auto d = string_field(j, "dst");
        if (!d)
            return std::unexpected(d.error());
        auto canonical = nfq::canonical_address(*d);
        if (!canonical)
            return bad(ErrorCode::InvalidArgument,
                       "dst " + quote_value(*d) + " is not an IPv4 or IPv6 address");
        r.dst = std::move(*canonical);
    }
    return {};
}

// The value fields, each checked for its type and range in a fixed order: the error
// names the first bad one in that order, whatever the order in the line.
std::expected<void, ProtocolError> read_fields(const json& j, Request& r) {
    if (j.contains("user")) {
        auto u = name_field(j, "user");
        if (!u)
            return std::unexpected(u.error());
        r.user = std::move(*u);
    }
    if (j.contains("group")) {
        auto g = name_field(j, "group");
        if (!g)
            return std::unexpected(g.error());
        r.group = std::move(*g);
    }
    if (j.contains("everyone")) {
        if (!j["everyone"].is_boolean() || !j["everyone"].get<bool>())
            return bad(ErrorCode::BadRequest, "field \"everyone\" must be true when given");
        r.everyone = true;
    }
    if (j.contains("to")) {
        auto to = destination_field(j);
        if (!to)
            return std::unexpected(to.error());
        r.to = std::move(*to);
    }
    if (j.contains("address")) {
        auto a = address_field(j);
        if (!a)
            return std::unexpected(a.error());
        r.address = std::move(*a);
    }
    if (j.contains("port")) {
        const json& p = j["port"];
        if (!p.is_number_integer() || p.get<std::int64_t>() < 1 || p.get<std::int64_t>() > 65535)
            return bad(ErrorCode::InvalidArgument, "port must be an integer from 1 to 65535");
        r.port = static_cast<std::uint16_t>(p.get<std::int64_t>());
    }
    if (auto times = read_times(j, r); !times)
        return times;
    if (j.contains("limit")) {
        const json& l = j["limit"];
        if (!l.is_number_integer() || l.get<std::int64_t>() < 1 || l.get<std::int64_t>() > 100000)
            return bad(ErrorCode::InvalidArgument, "limit must be an integer from 1 to 100000");
        r.limit = static_cast<std::uint32_t>(l.get<std::int64_t>());
    }
    return read_filters(j, r);
}

// What each command requires.
std::expected<void, ProtocolError> check_required(const Request& r) {
    switch (r.command) {
        case Command::Allow:
        case Command::Deny: {
            const int subjects = (r.user ? 1 : 0) + (r.group ? 1 : 0) + (r.everyone ? 1 : 0);
            if (subjects != 1)
                return bad(ErrorCode::BadRequest,
                           std::string(to_string(r.command)) +
                               " takes exactly one of \"user\", \"group\" and \"everyone\"");
            if (r.everyone && !r.to)
                return bad(ErrorCode::BadRequest,
                           "\"everyone\" needs \"to\": every user to every host is "
                           "SMTP_BLOCK = \"0\", not an exception");
            break;
        }
        case Command::Check:
            if (!r.user)
                return bad(ErrorCode::BadRequest, "check needs \"user\"");
            break;
        case Command::Test:
            if (!r.user || !r.address)
                return bad(ErrorCode::BadRequest, "test needs \"user\" and \"address\"");
            break;
        default:
            break;
    }
    return {};
}

}  // namespace

bool is_change(Command c) {
    switch (c) {
        case Command::Allow:
        case Command::Deny:
        case Command::Test:  // runs a connection as another user
        case Command::Reload:
        case Command::Remove:
            return true;
        default:
            return false;
    }
}

std::string_view to_string(Command c) {
    for (const auto& [cmd, name] : kCommands) {
        if (cmd == c)
            return name;
    }
    return "?";
}

std::string_view to_string(ErrorCode c) {
    for (const auto& [code, name] : kErrors) {
        if (code == c)
            return name;
    }
    return "failed";
}

std::optional<ErrorCode> error_code_from_string(std::string_view s) {
    for (const auto& [code, name] : kErrors) {
        if (name == s)
            return code;
    }
    return std::nullopt;
}

std::string name_problem(std::string_view name) {
    return account_name_problem(name);
}

std::expected<Request, ProtocolError> parse_request(std::string_view line) {
    Request r;
    const auto j = parse_envelope(line, r);
    if (!j)
        return std::unexpected(j.error());
    if (auto fields = read_fields(*j, r); !fields)
        return std::unexpected(fields.error());
    if (auto required = check_required(r); !required)
        return std::unexpected(required.error());
    return r;
}

std::string encode_request(const Request& r) {
    json j = {{"v", kProtocolVersion}, {"cmd", std::string(to_string(r.command))}};
    if (r.user)
        j["user"] = *r.user;
    if (r.group)
        j["group"] = *r.group;
    if (r.everyone)
        j["everyone"] = true;
    if (r.to)
        j["to"] = *r.to;
    if (r.command == Command::Test) {
        j["address"] = r.address.value_or("");
        j["port"] = r.port;
    }
    if (r.since)
        j["since"] = *r.since;
    if (r.until)
        j["until"] = *r.until;
    if (r.account)
        j["account"] = *r.account;
    if (r.exe)
        j["exe"] = *r.exe;
    if (r.dst)
        j["dst"] = *r.dst;
    if (r.command == Command::Attempts)
        j["limit"] = r.limit;
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode_ok(const json& result) {
    const json j = {{"v", kProtocolVersion}, {"ok", true}, {"result", result}};
    // replace: a path from /proc is bytes, not necessarily UTF-8; never throw on it.
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string encode_error(const ProtocolError& e) {
    const json j = {{"v", kProtocolVersion},
                    {"ok", false},
                    {"error", {{"code", std::string(to_string(e.code))}, {"message", e.message}}}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace smtpfence::ctl
