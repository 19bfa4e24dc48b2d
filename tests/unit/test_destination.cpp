// Destinations of relay exceptions: what HOST[:PORT] accepts, its canonical text, and
// an error for every malformed value that names the value and what is wrong.
#include <gtest/gtest.h>

#include <string>

#include "policy/destination.h"

namespace smtpfence {
namespace {

Destination parsed(std::string_view text) {
    auto d = parse_destination(text);
    if (!d) {
        ADD_FAILURE() << text << ": " << d.error().message();
        return {};
    }
    return *d;
}

std::string error_of(std::string_view text) {
    auto d = parse_destination(text);
    if (d) {
        ADD_FAILURE() << "accepted: " << text << " as " << d->text();
        return "<accepted>";
    }
    EXPECT_EQ(d.error().code, 0);
    return d.error().message();
}

TEST(Destination, NameWithPort) {
    const Destination d = parsed("smtp.sendgrid.net:587");
    EXPECT_TRUE(d.is_name());
    EXPECT_EQ(d.host, "smtp.sendgrid.net");
    EXPECT_EQ(d.port, 587);
    EXPECT_EQ(d.text(), "smtp.sendgrid.net:587");
}

TEST(Destination, NameIsLowercasedWithoutTrailingDot) {
    const Destination d = parsed("SMTP.Example-Relay.NET.");
    EXPECT_EQ(d.host, "smtp.example-relay.net");
    EXPECT_FALSE(d.port);
    EXPECT_EQ(d.text(), "smtp.example-relay.net");
    EXPECT_EQ(parsed("_relay.example.com").host, "_relay.example.com");
    EXPECT_EQ(parsed("localhost").host, "localhost");
}

TEST(Destination, Ipv4AddressAndNetwork) {
    const Destination a = parsed("198.51.100.7:25");
    ASSERT_TRUE(a.network);
    EXPECT_EQ(a.network->family, Family::V4);
    EXPECT_EQ(a.network->prefix, 32);
    EXPECT_EQ(a.text(), "198.51.100.7:25");

    const Destination n = parsed("198.51.100.0/24");
    ASSERT_TRUE(n.network);
    EXPECT_EQ(n.network->prefix, 24);
    EXPECT_EQ(n.host, "198.51.100.0/24");
    EXPECT_EQ(n.text(), "198.51.100.0/24");
    EXPECT_EQ(parsed("198.51.100.0/24:587").text(), "198.51.100.0/24:587");
    EXPECT_EQ(parsed("198.51.100.7/32").text(), "198.51.100.7");
}

TEST(Destination, Ipv6InBracketsOrBareWithoutPort) {
    const Destination a = parsed("[2001:DB8:0::25]:25");
    ASSERT_TRUE(a.network);
    EXPECT_EQ(a.network->family, Family::V6);
    EXPECT_EQ(a.network->prefix, 128);
    EXPECT_EQ(a.host, "2001:db8::25");
    EXPECT_EQ(a.text(), "[2001:db8::25]:25");

    EXPECT_EQ(parsed("2001:db8::25").text(), "2001:db8::25");
    EXPECT_EQ(parsed("[2001:db8::25]").text(), "2001:db8::25");
    EXPECT_EQ(parsed("2001:db8::/32").text(), "2001:db8::/32");
    EXPECT_EQ(parsed("[2001:db8::/32]:587").text(), "[2001:db8::/32]:587");
}

TEST(Destination, CanonicalTextRoundTrips) {
    for (const char* text :
         {"smtp.sendgrid.net:587", "smtp.gmail.com", "198.51.100.7", "198.51.100.0/24:25",
          "10.0.0.0/8", "[2001:db8::25]:25", "2001:db8::/32", "[2001:db8::/48]:465", "::1",
          "[::1]:25", "2001:db8::102:304", "relay.example.com:65535", "192.0.2.1:1"}) {
        const Destination d = parsed(text);
        EXPECT_EQ(d.text(), text);
        EXPECT_EQ(parsed(d.text()), d) << text;
    }
}

TEST(Destination, PortsOutOfRange) {
    EXPECT_EQ(error_of("smtp.example.com:0"),
              "smtp.example.com:0: port 0 is out of range (1-65535)");
    EXPECT_EQ(error_of("smtp.example.com:65536"),
              "smtp.example.com:65536: port 65536 is out of range (1-65535)");
    EXPECT_EQ(error_of("smtp.example.com:99999999999999999999999"),
              "smtp.example.com:99999999999999999999999: port 99999999999999999999999 is out "
              "of range (1-65535)");
    EXPECT_EQ(error_of("smtp.example.com:smtp"),
              "smtp.example.com:smtp: port \"smtp\" is not a number");
    EXPECT_EQ(error_of("smtp.example.com:-1"), "smtp.example.com:-1: port \"-1\" is not a number");
    EXPECT_EQ(error_of("smtp.example.com:"), "smtp.example.com:: no port after ':'");
    EXPECT_EQ(error_of("[2001:db8::25]:0"), "[2001:db8::25]:0: port 0 is out of range (1-65535)");
    EXPECT_EQ(error_of("198.51.100.7:65536"),
              "198.51.100.7:65536: port 65536 is out of range (1-65535)");
}

TEST(Destination, BadNetworks) {
    EXPECT_EQ(error_of("198.51.100.7/24"),
              "198.51.100.7/24: host bits set (did you mean 198.51.100.0/24?)");
    EXPECT_EQ(error_of("198.51.100.7/24:25"),
              "198.51.100.7/24:25: host bits set (did you mean 198.51.100.0/24?)");
    EXPECT_EQ(error_of("2001:db8::1/32"),
              "2001:db8::1/32: host bits set (did you mean 2001:db8::/32?)");
    EXPECT_EQ(error_of("198.51.100.0/33"),
              "198.51.100.0/33: prefix \"33\" is not a number from 0 to 32");
    EXPECT_EQ(error_of("2001:db8::/129"),
              "2001:db8::/129: prefix \"129\" is not a number from 0 to 128");
    EXPECT_EQ(error_of("198.51.100.0/"), "198.51.100.0/: prefix \"\" is not a number from 0 to 32");
    EXPECT_EQ(error_of("198.51.100.0/x"),
              "198.51.100.0/x: prefix \"x\" is not a number from 0 to 32");
    EXPECT_EQ(error_of("198.51.100.256"), "198.51.100.256: not an IPv4 address");
    EXPECT_EQ(error_of("198.51.100"), "198.51.100: not an IPv4 address");
    EXPECT_EQ(error_of("010.0.0.1"), "010.0.0.1: not an IPv4 address");
    EXPECT_EQ(error_of("smtp.example.com/24"), "smtp.example.com/24: not an IPv4 address");
    EXPECT_EQ(error_of("2001:db8::g"), "2001:db8::g: not an IPv6 address");
    EXPECT_EQ(error_of("[2001:db8::g]:25"), "[2001:db8::g]:25: not an IPv6 address");
}

TEST(Destination, EverythingIsRefusedWithAdvice) {
    const std::string advice =
        ": a /0 network covers every address; to let an account reach any host, use "
        "`smtpfencectl allow USER` (or --group GROUP) instead";
    EXPECT_EQ(error_of("0.0.0.0/0"), "0.0.0.0/0" + advice);
    EXPECT_EQ(error_of("0.0.0.0/0:25"), "0.0.0.0/0:25" + advice);
    EXPECT_EQ(error_of("::/0"), "::/0" + advice);
    EXPECT_EQ(error_of("[::/0]:587"), "[::/0]:587" + advice);
    EXPECT_EQ(error_of("::ffff:0.0.0.0/96"), "::ffff:0.0.0.0/96" + advice);
    EXPECT_EQ(error_of("198.51.100.7/0"),
              "198.51.100.7/0: host bits set (did you mean 0.0.0.0/0?)");
}

TEST(Destination, Ipv4MappedIpv6IsRefusedWithTheIpv4Form) {
    EXPECT_EQ(error_of("::ffff:198.51.100.1"),
              "::ffff:198.51.100.1: an IPv4-mapped IPv6 address: connections to it are IPv4 "
              "packets, write the IPv4 form 198.51.100.1");
    EXPECT_EQ(error_of("[::ffff:c633:6400/120]:25"),
              "[::ffff:c633:6400/120]:25: an IPv4-mapped IPv6 address: connections to it are "
              "IPv4 packets, write the IPv4 form 198.51.100.0/24");
}

TEST(Destination, Ipv6WithPortNeedsBrackets) {
    EXPECT_EQ(error_of("2001:db8:1:2:3:4:5:6:25"),
              "2001:db8:1:2:3:4:5:6:25: an IPv6 address with a port needs brackets: "
              "[2001:db8:1:2:3:4:5:6]:25");
    EXPECT_EQ(error_of("2001:db8::/32:587"),
              "2001:db8::/32:587: an IPv6 address with a port needs brackets: "
              "[2001:db8::/32]:587");
    EXPECT_EQ(error_of("[2001:db8::25"), "[2001:db8::25: '[' without ']'");
    EXPECT_EQ(error_of("[2001:db8::25]25"),
              "[2001:db8::25]25: expected ':PORT' or nothing after ']'");
    EXPECT_EQ(error_of("[198.51.100.7]:25"),
              "[198.51.100.7]:25: brackets are for IPv6 addresses only");
}

TEST(Destination, BadNames) {
    const std::string label(64, 'a');
    EXPECT_EQ(error_of(label + ".example.com"),
              label +
                  ".example.com: label \"aaaaaaaaaaaaaaaaaaaa... (64 bytes)\" is 64 bytes "
                  "long (at most 63)");
    EXPECT_TRUE(parse_destination(std::string(63, 'a') + ".example.com"));

    std::string long_name;
    while (long_name.size() < 254)
        long_name += "abcdefghi.";
    long_name.resize(254);  // ends in a letter
    EXPECT_NE(error_of(long_name).find(": the name is 254 bytes long (at most 253)"),
              std::string::npos);
    long_name.resize(253);
    if (long_name.back() == '.')
        long_name.back() = 'x';
    EXPECT_TRUE(parse_destination(long_name));
    EXPECT_TRUE(parse_destination(long_name + "."));  // the trailing dot is not counted

    EXPECT_EQ(error_of("smtp..example.com"),
              "smtp..example.com: empty label in the name (\"..\" or a leading '.')");
    EXPECT_EQ(error_of(".example.com"),
              ".example.com: empty label in the name (\"..\" or a leading '.')");
    EXPECT_EQ(error_of("."), ".: empty label in the name (\"..\" or a leading '.')");
    EXPECT_EQ(error_of("smtp.exa mple.com"),
              "smtp.exa mple.com: character ' ' is not allowed in a name (letters, digits, "
              "'-', '_')");
    EXPECT_EQ(error_of("sm\xc3\xa9tp.com"),
              "sm\\xc3\\xa9tp.com: character '\\xc3' is not allowed in a name (letters, "
              "digits, '-', '_')");
    EXPECT_EQ(error_of("user@example.com"),
              "user@example.com: character '@' is not allowed in a name (letters, digits, "
              "'-', '_')");
}

TEST(Destination, ControlCharactersAndEmptyHost) {
    EXPECT_EQ(error_of(std::string("smtp.example.com\n")),
              "smtp.example.com\\x0a: control characters are not allowed");
    EXPECT_EQ(error_of(std::string("smtp\0.com", 9)),
              "smtp\\x00.com: control characters are "
              "not allowed");
    EXPECT_EQ(error_of("a\tb"), "a\\tb: control characters are not allowed");
    EXPECT_EQ(error_of("a\x7f"), "a\\x7f: control characters are not allowed");
    EXPECT_EQ(error_of(""), "destination: empty (expected HOST[:PORT])");
    EXPECT_EQ(error_of(":25"), ":25: empty host");
}

TEST(Network, ParseAndText) {
    auto n = parse_network("198.51.100.0/24");
    ASSERT_TRUE(n);
    EXPECT_EQ(n->text(), "198.51.100.0/24");
    EXPECT_EQ(n->first()[3], 0);
    EXPECT_EQ(n->last()[3], 255);
    EXPECT_EQ(n->last()[2], 100);
    EXPECT_EQ(n->last()[4], 0);  // IPv4 uses the first 4 bytes only
    auto v6 = parse_network("2001:db8::/127");
    ASSERT_TRUE(v6);
    EXPECT_EQ(v6->last()[15], 1);
    EXPECT_EQ(ipv4_address({192, 0, 2, 1}).text(), "192.0.2.1");
    EXPECT_EQ(ipv6_address({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x25}).text(),
              "2001:db8::25");
    EXPECT_EQ(parse_network("0.0.0.0/0")->text(), "0.0.0.0/0");  // a network; only DEST refuses
}

TEST(DestException, Text) {
    const Destination relay = parsed("smtp.sendgrid.net:587");
    EXPECT_EQ((DestException{{SubjectKind::User, "alice"}, relay, ""}.text()),
              "alice to smtp.sendgrid.net:587");
    EXPECT_EQ(
        (DestException{{SubjectKind::Group, "webmail"}, parsed("198.51.100.0/24"), ""}.text()),
        "group webmail to 198.51.100.0/24");
    EXPECT_EQ((DestException{{SubjectKind::Everyone, ""}, parsed("[2001:db8::25]:25"), ""}.text()),
              "everyone to [2001:db8::25]:25");
    const DestException a{{SubjectKind::User, "alice"}, relay, "a.conf:1"};
    const DestException b{{SubjectKind::User, "alice"}, relay, "allow.list:3"};
    const DestException c{{SubjectKind::Group, "alice"}, relay, "a.conf:1"};
    EXPECT_TRUE(a.same_rule(b));
    EXPECT_FALSE(a.same_rule(c));
}

}  // namespace
}  // namespace smtpfence
