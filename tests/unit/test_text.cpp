#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/names.h"
#include "common/text.h"

namespace smtpfence::text {
namespace {

using namespace std::string_literals;

TEST(Printable, EscapesAndTruncates) {
    EXPECT_EQ(printable("plain text"), "plain text");
    EXPECT_EQ(printable("a\0b"s), "a\\x00b");
    EXPECT_EQ(printable("tab\there"), "tab\\there");
    EXPECT_EQ(printable("back\\slash"), "back\\\\slash");
    EXPECT_EQ(printable("\xc3\xa9\x7f\n"), "\\xc3\\xa9\\x7f\\x0a");
    EXPECT_EQ(printable(std::string(100, 'y'), 10), "yyyyyyyyyy... (100 bytes)");
    // An escape is never cut in half.
    EXPECT_EQ(printable("abc\x01\x02", 5), "abc... (5 bytes)");
    EXPECT_EQ(printable(std::string(80, 'z')), std::string(80, 'z'));
}

TEST(ParseUnsigned, DigitsOnlyWithinMax) {
    EXPECT_EQ(parse_unsigned("0", 10), 0U);
    EXPECT_EQ(parse_unsigned("000", 10), 0U);
    EXPECT_EQ(parse_unsigned("007", 10), 7U);
    EXPECT_EQ(parse_unsigned("65535", 65535), 65535U);
    EXPECT_EQ(parse_unsigned("00000000000000000000000000001", 1), 1U);
    EXPECT_EQ(parse_unsigned("18446744073709551615", UINT64_MAX), UINT64_MAX);
    EXPECT_FALSE(parse_unsigned("65536", 65535));
    EXPECT_FALSE(parse_unsigned("18446744073709551616", UINT64_MAX));
    EXPECT_FALSE(parse_unsigned("", 10));
    EXPECT_FALSE(parse_unsigned("-1", 10));
    EXPECT_FALSE(parse_unsigned("+1", 10));
    EXPECT_FALSE(parse_unsigned(" 1", 10));
    EXPECT_FALSE(parse_unsigned("1 ", 10));
    EXPECT_FALSE(parse_unsigned("0x10", 100));
    EXPECT_FALSE(parse_unsigned("1e3", 10000));
}

TEST(Trim, StripsAsciiWhitespaceOnly) {
    EXPECT_EQ(trim(" \t a b \r\n\v\f"), "a b");
    EXPECT_EQ(trim(""), "");
    EXPECT_EQ(trim(" \t "), "");
    // A NUL or a no-break space (0xA0) is text, as it is for CSF's Perl \s.
    EXPECT_EQ(trim("\0x\xa0"s), "\0x\xa0"s);
}

TEST(Join, PutsTheSeparatorBetweenItems) {
    EXPECT_EQ(join({}, ", "), "");
    EXPECT_EQ(join({"a"}, ", "), "a");
    EXPECT_EQ(join({"a", "", "b"}, ","), "a,,b");
}

TEST(Upper, AsciiOnlyWhateverTheLocale) {
    EXPECT_EQ(upper("drop Reject"), "DROP REJECT");
    EXPECT_EQ(upper("caf\xc3\xa9"), "CAF\xc3\xa9");
}

TEST(AccountName, OneRuleForEveryInput) {
    for (const std::string& ok :
         std::vector<std::string>{"alice", "web-admin.1", "_apt", "Debian-exim", "1001", "a-", "x$",
                                  ".hidden", std::string(kMaxAccountNameBytes, 'u')}) {
        EXPECT_EQ(account_name_problem(ok), "") << ok;
        EXPECT_TRUE(is_valid_account_name(ok)) << ok;
    }
    EXPECT_EQ(account_name_problem(""), "empty");
    EXPECT_EQ(account_name_problem("-alice"), "starts with '-'");
    EXPECT_EQ(account_name_problem(std::string(kMaxAccountNameBytes + 1, 'a')),
              "longer than 64 bytes");
    EXPECT_EQ(account_name_problem("$"),
              R"(contains "$" (allowed: letters, digits, '.', '_', '-', a final '$'))");
    EXPECT_EQ(account_name_problem("a$b"),
              R"(contains "$" (allowed: letters, digits, '.', '_', '-', a final '$'))");
    EXPECT_FALSE(is_valid_account_name("web mail"));
}

}  // namespace
}  // namespace smtpfence::text
