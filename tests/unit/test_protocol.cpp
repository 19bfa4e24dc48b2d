// The control protocol's requests and responses, byte for byte: what the daemon accepts,
// what it refuses with which code and message, and what goes on the wire.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ctl/protocol.h"

namespace smtpfence::ctl {
namespace {

using nlohmann::json;

// The request parsed, or a failure naming the line and the error it got.
Request parsed(const std::string& line) {
    auto r = parse_request(line);
    if (!r) {
        ADD_FAILURE() << line << " -> " << to_string(r.error().code) << ": " << r.error().message;
        return {};
    }
    return *r;
}

// The error a line gets; a failure if it parses.
ProtocolError refused(const std::string& line) {
    auto r = parse_request(line);
    if (r) {
        ADD_FAILURE() << line << " was accepted as " << to_string(r->command);
        return {ErrorCode::Failed, "<accepted>"};
    }
    return r.error();
}

void expect_refused(const std::string& line, ErrorCode code, const std::string& message) {
    const ProtocolError e = refused(line);
    EXPECT_EQ(to_string(e.code), to_string(code)) << line;
    EXPECT_EQ(e.message, message) << line;
}

TEST(Protocol, CommandsWithoutArgumentsKeepTheDefaults) {
    const std::vector<std::pair<std::string, Command>> cases = {
        {"version", Command::Version},   {"status", Command::Status}, {"list", Command::List},
        {"reload", Command::Reload},     {"remove", Command::Remove}, {"top", Command::Top},
        {"attempts", Command::Attempts},
    };
    for (const auto& [name, command] : cases) {
        const Request r = parsed(R"({"v":1,"cmd":")" + name + R"("})");
        EXPECT_EQ(r.command, command) << name;
        EXPECT_EQ(to_string(r.command), name);
        EXPECT_FALSE(r.user.has_value()) << name;
        EXPECT_FALSE(r.group.has_value()) << name;
        EXPECT_FALSE(r.address.has_value()) << name;
        EXPECT_FALSE(r.since.has_value()) << name;
        EXPECT_EQ(r.port, 25) << name;
        EXPECT_EQ(r.limit, 100U) << name;
    }
}

TEST(Protocol, AllowAndDenyTakeExactlyOneOfUserAndGroup) {
    const Request user = parsed(R"({"v":1,"cmd":"allow","user":"alice"})");
    EXPECT_EQ(user.command, Command::Allow);
    EXPECT_EQ(user.user, "alice");
    EXPECT_FALSE(user.group.has_value());

    const Request group = parsed(R"({"cmd":"deny","group":"webmail","v":1})");
    EXPECT_EQ(group.command, Command::Deny);
    EXPECT_EQ(group.group, "webmail");
    EXPECT_FALSE(group.user.has_value());

    expect_refused(R"({"v":1,"cmd":"allow"})", ErrorCode::BadRequest,
                   R"(allow takes exactly one of "user", "group" and "everyone")");
    expect_refused(R"({"v":1,"cmd":"deny","user":"alice","group":"mail"})", ErrorCode::BadRequest,
                   R"(deny takes exactly one of "user", "group" and "everyone")");
}

TEST(Protocol, ExceptionsTakeADestinationInItsCanonicalForm) {
    const Request user =
        parsed(R"({"v":1,"cmd":"allow","user":"alice","to":"SMTP.SendGrid.net.:587"})");
    EXPECT_EQ(user.user, "alice");
    EXPECT_EQ(user.to, "smtp.sendgrid.net:587");
    EXPECT_FALSE(user.everyone);

    const Request group =
        parsed(R"({"v":1,"cmd":"deny","group":"webmail","to":"198.51.100.0/24"})");
    EXPECT_EQ(group.to, "198.51.100.0/24");

    const Request all = parsed(R"({"v":1,"cmd":"allow","everyone":true,"to":"[2001:db8::25]:25"})");
    EXPECT_TRUE(all.everyone);
    EXPECT_FALSE(all.user.has_value());
    EXPECT_EQ(all.to, "[2001:db8::25]:25");

    const Request check = parsed(R"({"v":1,"cmd":"check","user":"bob","to":"192.0.2.25"})");
    EXPECT_EQ(check.to, "192.0.2.25");

    expect_refused(
        R"({"v":1,"cmd":"allow","everyone":true})", ErrorCode::BadRequest,
        R"("everyone" needs "to": every user to every host is SMTP_BLOCK = "0", not an exception)");
    expect_refused(R"({"v":1,"cmd":"allow","everyone":true,"user":"alice","to":"192.0.2.25"})",
                   ErrorCode::BadRequest,
                   R"(allow takes exactly one of "user", "group" and "everyone")");
    expect_refused(R"({"v":1,"cmd":"allow","everyone":false,"to":"192.0.2.25"})",
                   ErrorCode::BadRequest, R"(field "everyone" must be true when given)");
    expect_refused(R"({"v":1,"cmd":"allow","user":"alice","to":25})", ErrorCode::BadRequest,
                   R"(field "to" must be a string)");
    expect_refused(R"({"v":1,"cmd":"test","user":"alice","address":"192.0.2.25","to":"x.test"})",
                   ErrorCode::BadRequest, R"(command test takes no field "to")");
}

TEST(Protocol, MalformedDestinationsAreInvalidArgumentsNamingTheValue) {
    for (const char* to : {"relay.test:0", "relay.test:65536", "relay.test:smtp", "198.51.100.0/33",
                           "198.51.100.7/24", "0.0.0.0/0", "::/0", "[2001:db8::25:25", "",
                           "bad\\u0001name.test", "a..b.test"}) {
        const std::string line =
            std::string(R"({"v":1,"cmd":"allow","user":"alice","to":")") + to + "\"}";
        const ProtocolError e = refused(line);
        EXPECT_EQ(to_string(e.code), to_string(ErrorCode::InvalidArgument)) << line;
        EXPECT_EQ(e.message.rfind("to ", 0), 0U) << e.message;
        EXPECT_EQ(e.message.find('\x01'), std::string::npos)
            << "control byte echoed: " << e.message;
    }
    const std::string long_name(250, 'a');
    const ProtocolError e =
        refused(R"({"v":1,"cmd":"allow","user":"alice","to":")" + long_name + ".test\"}");
    EXPECT_EQ(to_string(e.code), to_string(ErrorCode::InvalidArgument));
    EXPECT_NE(e.message.find("253"), std::string::npos) << e.message;
}

TEST(Protocol, CheckAndTestNeedTheirFields) {
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"check","user":"bob"})").user, "bob");
    expect_refused(R"({"v":1,"cmd":"check"})", ErrorCode::BadRequest, R"(check needs "user")");
    expect_refused(R"({"v":1,"cmd":"test","user":"bob"})", ErrorCode::BadRequest,
                   R"(test needs "user" and "address")");
    expect_refused(R"({"v":1,"cmd":"test","address":"192.0.2.25"})", ErrorCode::BadRequest,
                   R"(test needs "user" and "address")");
}

TEST(Protocol, TestTakesNumericAddressesAndAPort) {
    const Request v4 = parsed(R"({"v":1,"cmd":"test","user":"bob","address":"192.0.2.25"})");
    EXPECT_EQ(v4.command, Command::Test);
    EXPECT_EQ(v4.user, "bob");
    EXPECT_EQ(v4.address, "192.0.2.25");
    EXPECT_EQ(v4.port, 25);

    const Request v6 =
        parsed(R"({"v":1,"cmd":"test","user":"bob","address":"2001:db8::25","port":587})");
    EXPECT_EQ(v6.address, "2001:db8::25");
    EXPECT_EQ(v6.port, 587);

    EXPECT_EQ(parsed(R"({"v":1,"cmd":"test","user":"b","address":"::1","port":1})").port, 1);
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"test","user":"b","address":"::1","port":65535})").port,
              65535);

    expect_refused(R"({"v":1,"cmd":"test","user":"bob","address":"mx.example.com"})",
                   ErrorCode::InvalidArgument,
                   R"(address "mx.example.com" is not a numeric IPv4 or IPv6 address)");
    expect_refused(R"({"v":1,"cmd":"test","user":"bob","address":"192.0.2.256"})",
                   ErrorCode::InvalidArgument,
                   R"(address "192.0.2.256" is not a numeric IPv4 or IPv6 address)");
    expect_refused(R"({"v":1,"cmd":"test","user":"bob","address":25})", ErrorCode::BadRequest,
                   R"(field "address" must be a string)");
    for (const std::string port :
         {"0", "65536", "-25", "25.0", "\"25\"", "true", "null", "18446744073709551615"}) {
        expect_refused(R"({"v":1,"cmd":"test","user":"b","address":"::1","port":)" + port + "}",
                       ErrorCode::InvalidArgument, "port must be an integer from 1 to 65535");
    }
}

// Bug found by fuzz/fuzz_control.cpp (fuzz/corpus/control/crash-address-nul-accepted):
// the address was checked by inet_pton on its C string, so a NUL ended the check and
// whatever followed it (here a terminal escape) was accepted, into the log and the reply.
TEST(Protocol, AddressWithANulIsRefusedNotCheckedUpToTheNul) {
    expect_refused(R"({"v":1,"cmd":"test","user":"bob","address":"192.0.2.25\u0000\u001b[2J"})",
                   ErrorCode::InvalidArgument,
                   R"(address "192.0.2.25\x00\x1b[2J" is not a numeric IPv4 or IPv6 address)");
    expect_refused(R"({"v":1,"cmd":"test","user":"bob","address":"::1\u0000"})",
                   ErrorCode::InvalidArgument,
                   R"(address "::1\x00" is not a numeric IPv4 or IPv6 address)");
}

TEST(Protocol, AttemptsTakesSinceUserAndLimit) {
    const Request r =
        parsed(R"({"v":1,"cmd":"attempts","since":1767225600,"user":"carol","limit":100000})");
    EXPECT_EQ(r.command, Command::Attempts);
    EXPECT_EQ(r.since, 1767225600);
    EXPECT_EQ(r.user, "carol");
    EXPECT_EQ(r.limit, 100000U);
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"attempts","limit":1})").limit, 1U);
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"top","since":0})").since, 0);

    for (const std::string since : {"-1", "1.5", "\"yesterday\"", "18446744073709551615"}) {
        expect_refused(R"({"v":1,"cmd":"top","since":)" + since + "}", ErrorCode::InvalidArgument,
                       "since must be a non-negative epoch time");
    }
    for (const std::string limit : {"0", "100001", "-1", "\"10\"", "4294967297"}) {
        expect_refused(R"({"v":1,"cmd":"attempts","limit":)" + limit + "}",
                       ErrorCode::InvalidArgument, "limit must be an integer from 1 to 100000");
    }
}

TEST(Protocol, AttemptsTakesTheHistoryFilters) {
    const Request r = parsed(R"({"v":1,"cmd":"attempts","since":100,"until":200,"account":"shop",)"
                             R"("exe":"/usr/bin/php8.2","dst":"2001:DB8:0::1"})");
    EXPECT_EQ(r.since, 100);
    EXPECT_EQ(r.until, 200);
    EXPECT_EQ(r.account, "shop");
    EXPECT_EQ(r.exe, "/usr/bin/php8.2");
    EXPECT_EQ(r.dst, "2001:db8::1");  // as the worker writes it
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"top","until":5})").until, 5);

    expect_refused(R"({"v":1,"cmd":"top","since":200,"until":200})", ErrorCode::InvalidArgument,
                   "until must be after since");
    expect_refused(R"({"v":1,"cmd":"attempts","until":-5})", ErrorCode::InvalidArgument,
                   "until must be a non-negative epoch time");
    expect_refused(R"({"v":1,"cmd":"attempts","account":"a b"})", ErrorCode::InvalidArgument,
                   R"(account name "a b": )" + name_problem("a b"));
    // The value as JSON has it, and as the message quotes it.
    for (const auto& [exe, quoted] : std::vector<std::pair<std::string, std::string>>{
             {"php", "php"}, {"", ""}, {R"(/usr/bin/php\u0000x)", R"(/usr/bin/php\x00x)"}}) {
        expect_refused(R"({"v":1,"cmd":"attempts","exe":")" + exe + "\"}",
                       ErrorCode::InvalidArgument,
                       "exe \"" + quoted + "\" is not an absolute path");
    }
    for (const std::string dst : {"mail.example", "192.0.2.0/24", "2001:db8::1]"}) {
        expect_refused(R"({"v":1,"cmd":"attempts","dst":")" + dst + "\"}",
                       ErrorCode::InvalidArgument,
                       "dst \"" + dst + "\" is not an IPv4 or IPv6 address");
    }
    expect_refused(R"({"v":1,"cmd":"top","account":"shop"})", ErrorCode::BadRequest,
                   R"(command top takes no field "account")");
}

TEST(Protocol, FieldsACommandDoesNotTakeAreRefused) {
    expect_refused(R"({"v":1,"cmd":"status","user":"alice"})", ErrorCode::BadRequest,
                   R"(command status takes no field "user")");
    expect_refused(R"({"v":1,"cmd":"top","limit":5})", ErrorCode::BadRequest,
                   R"(command top takes no field "limit")");
    expect_refused(R"({"v":1,"cmd":"check","user":"a","group":"b"})", ErrorCode::BadRequest,
                   R"(command check takes no field "group")");
    expect_refused(R"({"v":1,"cmd":"allow","user":"a","port":25})", ErrorCode::BadRequest,
                   R"(command allow takes no field "port")");
    // The unknown key is quoted with control bytes escaped.
    expect_refused("{\"v\":1,\"cmd\":\"list\",\"\\u001b[2J\":1}", ErrorCode::BadRequest,
                   R"(command list takes no field "\x1b[2J")");
}

TEST(Protocol, EnvelopeErrors) {
    expect_refused("", ErrorCode::BadRequest, "request is not valid JSON");
    expect_refused("hello", ErrorCode::BadRequest, "request is not valid JSON");
    expect_refused(R"({"v":1,"cmd":"status"} trailing)", ErrorCode::BadRequest,
                   "request is not valid JSON");
    expect_refused(R"([1,"status"])", ErrorCode::BadRequest, "request must be a JSON object");
    expect_refused(R"("status")", ErrorCode::BadRequest, "request must be a JSON object");
    const std::string no_version = R"(field "v" (protocol version) missing or not an integer)";
    expect_refused(R"({"cmd":"status"})", ErrorCode::BadRequest, no_version);
    expect_refused(R"({"v":"1","cmd":"status"})", ErrorCode::BadRequest, no_version);
    expect_refused(R"({"v":1.0,"cmd":"status"})", ErrorCode::BadRequest, no_version);
    expect_refused(R"({"v":2,"cmd":"status"})", ErrorCode::UnsupportedVersion,
                   "protocol version 2 is not supported; this daemon speaks 1");
    expect_refused(R"({"v":0,"cmd":"status"})", ErrorCode::UnsupportedVersion,
                   "protocol version 0 is not supported; this daemon speaks 1");
    expect_refused(R"({"v":1})", ErrorCode::BadRequest, R"(field "cmd" missing or not a string)");
    expect_refused(R"({"v":1,"cmd":7})", ErrorCode::BadRequest,
                   R"(field "cmd" missing or not a string)");
    expect_refused(R"({"v":1,"cmd":"frobnicate"})", ErrorCode::UnknownCommand,
                   R"(unknown command "frobnicate")");
    expect_refused(R"({"v":1,"cmd":"STATUS"})", ErrorCode::UnknownCommand,
                   R"(unknown command "STATUS")");
}

TEST(Protocol, ClientValuesInMessagesAreEscapedAndCut) {
    expect_refused("{\"v\":1,\"cmd\":\"x\\u001b]0;pwned\\u0007\\\"\"}", ErrorCode::UnknownCommand,
                   R"(unknown command "x\x1b]0;pwned\x07\x22")");
    const std::string long_command(100, 'c');
    expect_refused(R"({"v":1,"cmd":")" + long_command + R"("})", ErrorCode::UnknownCommand,
                   "unknown command \"" + std::string(80, 'c') + "...\"");
}

TEST(Protocol, NamesAreValidated) {
    expect_refused(R"({"v":1,"cmd":"allow","user":"-rf"})", ErrorCode::InvalidArgument,
                   R"(user name "-rf": starts with '-')");
    expect_refused(R"({"v":1,"cmd":"allow","user":""})", ErrorCode::InvalidArgument,
                   R"(user name "": empty)");
    expect_refused(R"({"v":1,"cmd":"deny","group":"web mail"})", ErrorCode::InvalidArgument,
                   R"(group name "web mail": contains " " (allowed: letters, digits, '.', '_', )"
                   R"('-', a final '$'))");
    expect_refused(R"({"v":1,"cmd":"check","user":"a$b"})", ErrorCode::InvalidArgument,
                   R"(user name "a$b": contains "$" (allowed: letters, digits, '.', '_', '-', )"
                   R"(a final '$'))");
    expect_refused(R"({"v":1,"cmd":"check","user":")" + std::string(65, 'u') + R"("})",
                   ErrorCode::InvalidArgument,
                   "user name \"" + std::string(65, 'u') + "\": longer than 64 bytes");
    expect_refused(R"({"v":1,"cmd":"check","user":1001})", ErrorCode::BadRequest,
                   R"(field "user" must be a string)");
    expect_refused(R"({"v":1,"cmd":"allow","group":null})", ErrorCode::BadRequest,
                   R"(field "group" must be a string)");

    EXPECT_EQ(parsed(R"({"v":1,"cmd":"allow","user":")" + std::string(64, 'u') + R"("})").user,
              std::string(64, 'u'));
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"allow","user":"1001"})").user, "1001");
    EXPECT_EQ(parsed(R"({"v":1,"cmd":"allow","user":"WS01$"})").user, "WS01$");
}

TEST(Protocol, NameProblem) {
    for (const std::string ok : {"alice", "web-admin.1", "_apt", "Debian-exim", "1001", "a-", "x$"})
        EXPECT_EQ(name_problem(ok), "") << ok;
    EXPECT_EQ(name_problem(""), "empty");
    EXPECT_EQ(name_problem("-alice"), "starts with '-'");
    EXPECT_EQ(name_problem(std::string(65, 'a')), "longer than 64 bytes");
    EXPECT_EQ(name_problem("al/ice"),
              R"(contains "/" (allowed: letters, digits, '.', '_', '-', a final '$'))");
    EXPECT_EQ(name_problem("$x"),
              R"(contains "$" (allowed: letters, digits, '.', '_', '-', a final '$'))");
    EXPECT_EQ(name_problem(std::string("a\nb")),
              R"(contains "\x0a" (allowed: letters, digits, '.', '_', '-', a final '$'))");
    EXPECT_EQ(name_problem("caf\xc3\xa9"),
              R"(contains "\xc3" (allowed: letters, digits, '.', '_', '-', a final '$'))");
}

TEST(Protocol, OverlongRequestsAreRefusedBeforeParsing) {
    // Valid JSON padded with whitespace past the limit: the length alone refuses it.
    const std::string padded = R"({"v":1,"cmd":"status"})" + std::string(kMaxRequestBytes, ' ');
    expect_refused(padded, ErrorCode::BadRequest, "request longer than 65536 bytes");
    // Exactly at the limit is still parsed.
    std::string at_limit = R"({"v":1,"cmd":"status"})";
    at_limit += std::string(kMaxRequestBytes - at_limit.size(), ' ');
    ASSERT_EQ(at_limit.size(), kMaxRequestBytes);
    EXPECT_EQ(parsed(at_limit).command, Command::Status);
}

TEST(Protocol, IsChange) {
    const std::vector<Command> changes = {Command::Allow, Command::Deny, Command::Test,
                                          Command::Reload, Command::Remove};
    const std::vector<Command> reads = {Command::Version, Command::Status,   Command::List,
                                        Command::Check,   Command::Attempts, Command::Top};
    for (const Command c : changes)
        EXPECT_TRUE(is_change(c)) << to_string(c);
    for (const Command c : reads)
        EXPECT_FALSE(is_change(c)) << to_string(c);
}

TEST(Protocol, ErrorCodeNamesRoundTrip) {
    const std::vector<std::pair<ErrorCode, std::string>> codes = {
        {ErrorCode::BadRequest, "bad_request"},
        {ErrorCode::UnsupportedVersion, "unsupported_version"},
        {ErrorCode::UnknownCommand, "unknown_command"},
        {ErrorCode::PermissionDenied, "permission_denied"},
        {ErrorCode::NotFound, "not_found"},
        {ErrorCode::InvalidArgument, "invalid_argument"},
        {ErrorCode::Conflict, "conflict"},
        {ErrorCode::Failed, "failed"},
    };
    for (const auto& [code, name] : codes) {
        EXPECT_EQ(to_string(code), name);
        EXPECT_EQ(error_code_from_string(name), code) << name;
    }
    EXPECT_EQ(error_code_from_string(""), std::nullopt);
    EXPECT_EQ(error_code_from_string("Not_Found"), std::nullopt);
    EXPECT_EQ(error_code_from_string("timeout"), std::nullopt);
}

TEST(Protocol, EncodeRequestIsOneLineThatParsesBack) {
    Request allow;
    allow.command = Command::Allow;
    allow.user = "alice";
    EXPECT_EQ(encode_request(allow), "{\"cmd\":\"allow\",\"user\":\"alice\",\"v\":1}\n");

    Request status;
    status.command = Command::Status;
    EXPECT_EQ(encode_request(status), "{\"cmd\":\"status\",\"v\":1}\n");

    Request test;
    test.command = Command::Test;
    test.user = "bob";
    test.address = "2001:db8::25";
    test.port = 465;
    EXPECT_EQ(encode_request(test),
              "{\"address\":\"2001:db8::25\",\"cmd\":\"test\",\"port\":465,\"user\":\"bob\","
              "\"v\":1}\n");

    Request attempts;
    attempts.command = Command::Attempts;
    attempts.since = 1767225600;
    attempts.user = "carol";
    attempts.limit = 7;
    const std::string line = encode_request(attempts);
    EXPECT_EQ(line,
              "{\"cmd\":\"attempts\",\"limit\":7,\"since\":1767225600,\"user\":\"carol\","
              "\"v\":1}\n");

    Request exception;
    exception.command = Command::Allow;
    exception.everyone = true;
    exception.to = "smtp.example-relay.net:587";
    EXPECT_EQ(encode_request(exception),
              "{\"cmd\":\"allow\",\"everyone\":true,\"to\":\"smtp.example-relay.net:587\","
              "\"v\":1}\n");

    for (const Request& r : {allow, status, test, attempts, exception}) {
        std::string wire = encode_request(r);
        ASSERT_EQ(wire.back(), '\n');
        wire.pop_back();
        EXPECT_EQ(wire.find('\n'), std::string::npos);
        const Request back = parsed(wire);
        EXPECT_EQ(back.command, r.command);
        EXPECT_EQ(back.user, r.user);
        EXPECT_EQ(back.group, r.group);
        EXPECT_EQ(back.address, r.address);
        EXPECT_EQ(back.port, r.port);
        EXPECT_EQ(back.since, r.since);
        EXPECT_EQ(back.limit, r.limit);
        EXPECT_EQ(back.everyone, r.everyone);
        EXPECT_EQ(back.to, r.to);
    }
}

TEST(Protocol, EncodeResponses) {
    EXPECT_EQ(encode_ok(json{{"allowed", true}, {"uid", 1001}}),
              "{\"ok\":true,\"result\":{\"allowed\":true,\"uid\":1001},\"v\":1}\n");
    EXPECT_EQ(encode_ok(json::object()), "{\"ok\":true,\"result\":{},\"v\":1}\n");
    EXPECT_EQ(encode_error({ErrorCode::NotFound, "no user \"zed\""}),
              "{\"error\":{\"code\":\"not_found\",\"message\":\"no user \\\"zed\\\"\"},"
              "\"ok\":false,\"v\":1}\n");
    // A newline inside a message must not split the response line.
    const std::string two_lines = encode_error({ErrorCode::Failed, "first\nsecond"});
    EXPECT_EQ(two_lines,
              "{\"error\":{\"code\":\"failed\",\"message\":\"first\\nsecond\"},\"ok\":false,"
              "\"v\":1}\n");
}

TEST(Protocol, EncodeOkReplacesInvalidUtf8InsteadOfThrowing) {
    // A process path from /proc is bytes; it must reach the client, not kill the daemon.
    std::string line;
    EXPECT_NO_THROW(line = encode_ok(json{{"exe", "/home/bob/\xff\xfe.sh"}}));
    EXPECT_EQ(line,
              "{\"ok\":true,\"result\":{\"exe\":\"/home/bob/\xef\xbf\xbd\xef\xbf\xbd.sh\"},"
              "\"v\":1}\n");
    const json back = json::parse(line);
    EXPECT_EQ(back["result"]["exe"], "/home/bob/\xef\xbf\xbd\xef\xbf\xbd.sh");
}

}  // namespace
}  // namespace smtpfence::ctl
