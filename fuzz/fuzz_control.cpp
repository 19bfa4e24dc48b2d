// The control protocol as smtpfenced reads it: one request line from any local user
// (ctl::parse_request), and the response lines it writes back (encode_error, encode_ok).
// Invariants: nothing throws; an accepted request holds only what its checks allow
// (valid names, numeric addresses in the worker's text, values in range) and survives
// encode_request -> parse_request unchanged; every response is one line of JSON that a client reads
// back to the same code and (when the message is UTF-8) the same message.
#include <arpa/inet.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "ctl/protocol.h"
#include "fuzz/fuzz_check.h"
#include "nfq/history_query.h"
#include "policy/destination.h"

namespace smtpfence::fuzz {
namespace {

using nlohmann::json;

bool same_request(const ctl::Request& a, const ctl::Request& b) {
    return a.command == b.command && a.user == b.user && a.group == b.group &&
           a.address == b.address && a.port == b.port && a.since == b.since && a.limit == b.limit &&
           a.everyone == b.everyone && a.to == b.to && a.until == b.until &&
           a.account == b.account && a.exe == b.exe && a.dst == b.dst;
}

bool is_numeric_address(const std::string& s) {
    in6_addr buf{};
    return s.find('\0') == std::string::npos &&
           (inet_pton(AF_INET, s.c_str(), &buf) == 1 || inet_pton(AF_INET6, s.c_str(), &buf) == 1);
}

// One response line, as a client parses it.
json read_response(const std::string& line) {
    check(!line.empty() && line.back() == '\n', "a response without its newline");
    check(line.find('\n') == line.size() - 1, "a response of more than one line");
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    check(j.is_object(), "a response that is not a JSON object");
    check(j.value("v", 0) == ctl::kProtocolVersion, "a response without the version");
    return j;
}

void check_error_response(const ctl::ProtocolError& error) {
    const json j = read_response(ctl::encode_error(error));
    check(!j.value("ok", true), "an error response with ok");
    const json& e = j.at("error");
    check(ctl::error_code_from_string(e.value("code", "")) == error.code,
          "an error code that does not read back");
    const std::string message = e.value("message", "");
    check(!message.empty() || error.message.empty(), "an error message lost");
}

void check_accepted(const ctl::Request& r) {
    for (const auto* name : {&r.user, &r.group, &r.account}) {
        if (*name)
            check(ctl::name_problem(**name).empty(), "an invalid name accepted");
    }
    if (r.address)
        check(is_numeric_address(*r.address), "a non-numeric address accepted");
    check(r.port >= 1, "port 0 accepted");
    check(r.limit >= 1 && r.limit <= 100000, "a limit out of range accepted");
    check(!r.since || *r.since >= 0, "a negative since accepted");
    check(!r.until || *r.until >= 0, "a negative until accepted");
    check(!r.since || !r.until || *r.until > *r.since, "an until not after since accepted");
    if (r.exe) {
        check(!r.exe->empty() && r.exe->front() == '/' && r.exe->find('\0') == std::string::npos,
              "an exe that is not an absolute path accepted");
    }
    if (r.dst) {
        // The worker's text of an address: it reads back to itself.
        const auto canonical = nfq::canonical_address(*r.dst);
        check(canonical.has_value() && *canonical == *r.dst, "a dst not in canonical form");
    }
    if (r.to) {
        // Kept in its canonical form: it parses back to the very same text.
        auto dest = parse_destination(*r.to);
        check(dest.has_value() && dest->text() == *r.to, "a destination not in canonical form");
        check(!dest->network || dest->network->prefix > 0, "a /0 destination accepted");
    }
    switch (r.command) {
        case ctl::Command::Allow:
        case ctl::Command::Deny:
            check((r.user ? 1 : 0) + (r.group ? 1 : 0) + (r.everyone ? 1 : 0) == 1,
                  "allow/deny without exactly one subject");
            check(!r.everyone || r.to.has_value(), "everyone without a destination");
            break;
        case ctl::Command::Check:
            check(r.user.has_value() && !r.everyone, "check without user");
            break;
        case ctl::Command::Test:
            check(r.user && r.address, "test without user and address");
            break;
        default:
            break;
    }
}

void fuzz_one(std::string_view line) {
    auto request = ctl::parse_request(line);
    if (!request) {
        check(!request.error().message.empty(), "an error without a message");
        check_error_response(request.error());
        return;
    }
    check_accepted(*request);

    const std::string encoded = ctl::encode_request(*request);
    check(encoded.find('\n') == encoded.size() - 1, "an encoded request of more than one line");
    auto again = ctl::parse_request(std::string_view(encoded).substr(0, encoded.size() - 1));
    check(again.has_value(), "an accepted request, encoded, is refused");
    check(same_request(*request, *again), "an accepted request, encoded, reads differently");

    // The daemon answers with what the client sent it (check, test echo the name).
    const json echoed = {{"line", std::string(line)}, {"user", request->user.value_or("")}};
    const json ok = read_response(ctl::encode_ok(echoed));
    check(ok.value("ok", false), "an ok response without ok");
    check(ok.at("result").value("user", "") == request->user.value_or(""), "a name not echoed");
}

}  // namespace
}  // namespace smtpfence::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view line = smtpfence::fuzz::as_text(std::span(data, size));
    smtpfence::fuzz::fuzz_one(line);
    // The daemon's reply to garbage: any bytes as the message (replaced when not UTF-8).
    smtpfence::fuzz::check_error_response(
        {smtpfence::ctl::ErrorCode::BadRequest, std::string(line)});
    return 0;
}
