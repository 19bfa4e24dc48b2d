#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "common/conf_reader.h"
#include "common/files.h"
#include "common/text.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::conf {
namespace {

using namespace std::string_literals;
using text::printable;

const std::string kDataDir = std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data";

using testing::TempDir;

ConfFile parse_ok(std::string_view text) {
    auto conf = parse_conf(text, "t.conf");
    EXPECT_TRUE(conf.has_value()) << conf.error().message();
    return conf.value_or(ConfFile{});
}

std::string parse_error(std::string_view text) {
    auto conf = parse_conf(text, "t.conf");
    EXPECT_FALSE(conf.has_value());
    return conf ? std::string("(no error)") : conf.error().message();
}

std::string value_of(const ConfFile& conf, std::string_view key) {
    const Entry* e = conf.find(key);
    EXPECT_NE(e, nullptr) << "missing key " << key;
    return e != nullptr ? e->value : std::string("(missing)");
}

bool is_printable_ascii(const std::string& s) {
    for (const char c : s) {
        if (c < 0x20 || c > 0x7e)
            return false;
    }
    return true;
}

TEST(CsfReader, ReadsQuotedSettings) {
    const ConfFile conf = parse_ok("SMTP_BLOCK = \"1\"\nSMTP_PORTS = \"25,465,587\"\n");
    ASSERT_EQ(conf.entries.size(), 2U);
    EXPECT_EQ(conf.path, "t.conf");
    EXPECT_EQ(conf.entries[0].key, "SMTP_BLOCK");
    EXPECT_EQ(conf.entries[0].value, "1");
    EXPECT_EQ(conf.entries[0].line, 1);
    EXPECT_EQ(conf.entries[1].key, "SMTP_PORTS");
    EXPECT_EQ(conf.entries[1].value, "25,465,587");
    EXPECT_EQ(conf.entries[1].line, 2);
}

TEST(CsfReader, EmptyTextHasNoEntries) {
    EXPECT_TRUE(parse_ok("").entries.empty());
    EXPECT_TRUE(parse_ok("\n\n\r\n").entries.empty());
}

TEST(CsfReader, SkipsCommentsAndEmptyLines) {
    const ConfFile conf = parse_ok(
        "# a comment with = \"quotes\"\n"
        "\n"
        "#SMTP_BLOCK = \"0\"\n"
        "   \t  \n"
        "SMTP_BLOCK = \"1\"\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].value, "1");
    EXPECT_EQ(conf.entries[0].line, 5);
}

// CSF's $cleanreg strips leading whitespace before it tests /^(\s|\#|$)/, so an indented
// comment is a comment and an indented setting is a setting (skipping it would make
// smtpfence read a different policy than CSF from the same file).
TEST(CsfReader, LeadingWhitespaceIsTrimmedNotSkipped) {
    const ConfFile conf = parse_ok(
        "   # indented comment = \"x\"\n"
        "\t  SMTP_ALLOWUSER = \"bob\"\n"
        "  \tan indented line without equals\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].key, "SMTP_ALLOWUSER");
    EXPECT_EQ(conf.entries[0].value, "bob");
    EXPECT_EQ(conf.entries[0].line, 2);
}

TEST(CsfReader, SkipsLinesWithoutEquals) {
    const ConfFile conf = parse_ok(
        "This line has no equals sign and \"quotes\"\n"
        "Include /etc/csf/csf.other\n"
        "KEY = \"v\"\n"
        "trailing words\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].line, 3);
}

TEST(CsfReader, UnquotedValueIsAnError) {
    EXPECT_EQ(parse_error("A = \"1\"\n\nSMTP_BLOCK = 1\n"),
              "t.conf:3: Invalid configuration line: SMTP_BLOCK = 1 (the value must be in "
              "double quotes)");
}

TEST(CsfReader, ErrorCarriesLocationAndNoErrno) {
    auto conf = parse_conf("X = 1", "/etc/smtpfence/smtpfence.conf");
    ASSERT_FALSE(conf);
    EXPECT_EQ(conf.error().code, 0);
    EXPECT_EQ(conf.error().what, "/etc/smtpfence/smtpfence.conf:1");
    EXPECT_EQ(conf.error().detail.rfind("Invalid configuration line: X = 1", 0), 0U);
}

TEST(CsfReader, OtherQuotingIsAnError) {
    EXPECT_NE(parse_error("KEY = '1'").find("t.conf:1: Invalid configuration line"),
              std::string::npos);
    EXPECT_NE(parse_error("KEY = \"1").find("t.conf:1: Invalid configuration line"),
              std::string::npos);
    EXPECT_NE(parse_error("KEY =").find("Invalid configuration line: KEY ="), std::string::npos);
    EXPECT_NE(parse_error("KEY = 1 \"").find("Invalid configuration line"), std::string::npos);
}

TEST(CsfReader, QuoteMatchIsGreedy) {
    const ConfFile conf = parse_ok(
        "A = \"1\" # note\n"
        "B = \"1\" # \"note\"\n"
        "C = \"say \"hi\"\"\n"
        "D = prefix\"2\"suffix\n");
    EXPECT_EQ(value_of(conf, "A"), "1");
    EXPECT_EQ(value_of(conf, "B"), "1\" # \"note");
    EXPECT_EQ(value_of(conf, "C"), "say \"hi\"");
    EXPECT_EQ(value_of(conf, "D"), "2");
}

TEST(CsfReader, RepeatedKeyIsAnError) {
    EXPECT_EQ(parse_error("# head\nSMTP_BLOCK = \"1\"\nX = \"2\"\nSMTP_BLOCK = \"1\"\n"),
              "t.conf:4: Setting SMTP_BLOCK is repeated (first set on line 2)");
}

TEST(CsfReader, RepeatedKeyIsFoundAfterWhitespaceIsStripped) {
    EXPECT_EQ(parse_error("SMTP_BLOCK=\"1\"\nSMTP _BLOCK\t= \"0\"\n"),
              "t.conf:2: Setting SMTP_BLOCK is repeated (first set on line 1)");
}

TEST(CsfReader, KeysAreCaseSensitive) {
    const ConfFile conf = parse_ok("smtp_block = \"1\"\nSMTP_BLOCK = \"0\"\n");
    EXPECT_EQ(conf.entries.size(), 2U);
    EXPECT_EQ(value_of(conf, "smtp_block"), "1");
}

TEST(CsfReader, CrlfLines) {
    const ConfFile conf = parse_ok("# c\r\nA = \"1\"\r\n\r\nB = \"x y\" \r\n");
    ASSERT_EQ(conf.entries.size(), 2U);
    EXPECT_EQ(conf.entries[0].value, "1");
    EXPECT_EQ(conf.entries[0].line, 2);
    EXPECT_EQ(conf.entries[1].value, "x y");
    EXPECT_EQ(conf.entries[1].line, 4);
    EXPECT_EQ(parse_error("A = \"1\"\r\nB = 2\r\n"),
              "t.conf:2: Invalid configuration line: B = 2 (the value must be in double quotes)");
}

TEST(CsfReader, CrOnlyAndMixedLineEnds) {
    const ConfFile conf = parse_ok("A = \"1\"\rB = \"2\"\nC = \"3\"\r\nD = \"4\"");
    ASSERT_EQ(conf.entries.size(), 4U);
    EXPECT_EQ(conf.entries[1].line, 2);
    EXPECT_EQ(conf.entries[3].line, 4);
    EXPECT_EQ(value_of(conf, "D"), "4");  // no newline at the end
}

// VT and FF end a record for CSF's slurp() as well; they are not an editor's line break,
// so the line number stays.
TEST(CsfReader, VerticalTabAndFormFeedSplitRecords) {
    const ConfFile conf = parse_ok("A = \"1\"\fB = \"2\"\vC = \"3\"\nD = \"4\"\n");
    ASSERT_EQ(conf.entries.size(), 4U);
    EXPECT_EQ(conf.entries[1].key, "B");
    EXPECT_EQ(conf.entries[1].line, 1);
    EXPECT_EQ(conf.entries[2].line, 1);
    EXPECT_EQ(conf.entries[3].line, 2);
}

// 0x85 (NEL) is a separator in CSF's regex, but on undecoded bytes that cuts UTF-8
// characters in two ("Å" is C3 85). We keep the bytes whole.
TEST(CsfReader, Utf8IsNotSplitAtNelBytes) {
    const ConfFile conf = parse_ok("# \xc3\x85lesund KEY = \"x\"\nA = \"\xc3\x85\"\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].value, "\xc3\x85");
    EXPECT_EQ(conf.entries[0].line, 2);
}

TEST(CsfReader, EmptyValue) {
    const ConfFile conf = parse_ok("SMTP_ALLOWUSER = \"\"\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].value, "");
}

TEST(CsfReader, WhitespaceInsideQuotesIsKept) {
    EXPECT_EQ(value_of(parse_ok("A = \"  a b \t\"\n"), "A"), "  a b \t");
}

TEST(CsfReader, WhitespaceAroundAndInsideNameIsStripped) {
    const ConfFile conf = parse_ok("SMTP_BLOCK\t=\"1\"\nSMTP _ PORTS   =   \"25\"   \n");
    EXPECT_EQ(value_of(conf, "SMTP_BLOCK"), "1");
    EXPECT_EQ(value_of(conf, "SMTP_PORTS"), "25");
}

TEST(CsfReader, SplitsAtTheFirstEquals) {
    const ConfFile conf = parse_ok(
        "URLPROXY = \"http://u:p@proxy/?a=b\"\n"
        "KEY = \"a=b # not a comment\" # a comment\n"
        "EQ = \"=\"\n");
    EXPECT_EQ(value_of(conf, "URLPROXY"), "http://u:p@proxy/?a=b");
    EXPECT_EQ(value_of(conf, "KEY"), "a=b # not a comment");
    EXPECT_EQ(value_of(conf, "EQ"), "=");
}

// CSF accepts a line that starts with '=' (an empty name); we read what CSF reads and
// leave the complaint to the code that knows which names are valid.
TEST(CsfReader, EmptyNameIsReadAsCsfDoes) {
    const ConfFile conf = parse_ok("= \"x\"\n");
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].key, "");
    EXPECT_EQ(parse_error("= \"x\"\n = \"y\"\n"),
              "t.conf:2: Setting  is repeated (first set on line 1)");
}

TEST(CsfReader, FindReturnsNullForMissingKey) {
    const ConfFile conf = parse_ok("A = \"1\"\n");
    EXPECT_EQ(conf.find("B"), nullptr);
    EXPECT_EQ(conf.find("a"), nullptr);
    ASSERT_NE(conf.find("A"), nullptr);
    EXPECT_EQ(conf.find("A")->line, 1);
}

TEST(CsfReader, NonPrintableBytesAreEscapedInMessages) {
    const std::string text = "KEY = \x01\x00\xff\x1b[31m"s + "\n";
    const std::string message = parse_error(text);
    EXPECT_EQ(message,
              "t.conf:1: Invalid configuration line: KEY = \\x01\\x00\\xff\\x1b[31m (the value "
              "must be in double quotes)");
}

TEST(CsfReader, NulBytesInsideNamesAndValuesAreKept) {
    const ConfFile conf = parse_ok("A\0B = \"x\0y\"\n"s);
    ASSERT_EQ(conf.entries.size(), 1U);
    EXPECT_EQ(conf.entries[0].key, "A\0B"s);
    EXPECT_EQ(conf.entries[0].value, "x\0y"s);
}

// Random bytes, with the characters that matter to the parser mixed in: no crash, no
// exception, and every error is one short printable line.
TEST(CsfReader, BinaryGarbageNeverCrashes) {
    std::mt19937 rng(20250831);
    const std::string specials = "=\"#\r\n \t\f\v\0"s;
    int errors = 0;
    int successes = 0;
    for (int round = 0; round < 500; ++round) {
        std::string text;
        const std::size_t size = rng() % 4096;
        for (std::size_t i = 0; i < size; ++i) {
            text.push_back(rng() % 4 == 0 ? specials[rng() % specials.size()]
                                          : static_cast<char>(rng() & 0xffU));
        }
        auto conf = parse_conf(text, "garbage.conf");
        if (conf) {
            ++successes;
            for (const Entry& e : conf->entries)
                EXPECT_GE(e.line, 1);
        } else {
            ++errors;
            const std::string m = conf.error().message();
            EXPECT_EQ(m.rfind("garbage.conf:", 0), 0U) << m;
            EXPECT_LT(m.size(), 300U) << m;
            EXPECT_TRUE(is_printable_ascii(m)) << m;
        }
    }
    EXPECT_GT(errors, 0);  // the generator does produce unquoted values
    EXPECT_EQ(errors + successes, 500);
}

TEST(CsfReader, BinaryFileFromDisk) {
    TempDir dir;
    std::string bytes;
    for (int i = 0; i < 256; ++i)
        bytes.push_back(static_cast<char>(i));
    const std::string path = dir.write("bin.conf", bytes + bytes);
    auto conf = read_conf_file(path);
    // 0x0a ends line 1; 0x0b and 0x0c end (empty) records on line 2; 0x0d ends line 2.
    // The record from 0x0e on holds '"' (0x22) before its first '=' (0x3d), so its value
    // has no quotes: invalid for CSF, on line 3.
    ASSERT_FALSE(conf);
    EXPECT_EQ(conf.error().what, path + ":3");
    EXPECT_LT(conf.error().message().size(), path.size() + 200);
    EXPECT_TRUE(is_printable_ascii(conf.error().message()));
}

TEST(CsfReader, TenMegabyteLineKeepsMessagesShort) {
    const std::string huge(10U << 20U, 'x');
    // Unquoted: an error quoting the start of the line only.
    auto bad = parse_conf("KEY = " + huge + "\n", "big.conf");
    ASSERT_FALSE(bad);
    const std::string m = bad.error().message();
    EXPECT_LT(m.size(), 250U);
    EXPECT_EQ(m.rfind("big.conf:1: Invalid configuration line: KEY = xxxx", 0), 0U) << m;
    EXPECT_NE(m.find("... (10485766 bytes)"), std::string::npos) << m;

    // Quoted: a valid 10 MB value.
    auto good = parse_conf("KEY = \"" + huge + "\"\n", "big.conf");
    ASSERT_TRUE(good) << good.error().message();
    EXPECT_EQ(good->entries[0].value.size(), huge.size());

    // A 10 MB name repeated: the message names it shortened.
    const std::string line = huge + " = \"1\"\n";
    auto repeated = parse_conf(line + line, "big.conf");
    ASSERT_FALSE(repeated);
    EXPECT_LT(repeated.error().message().size(), 250U);
    EXPECT_NE(repeated.error().message().find("is repeated (first set on line 1)"),
              std::string::npos);
}

TEST(CsfReader, TenMegabyteLineFromDisk) {
    TempDir dir;
    const std::string path =
        dir.write("big.conf", "A = \"1\"\nKEY = " + std::string(10U << 20U, '\0') + "\n");
    auto conf = read_conf_file(path);
    ASSERT_FALSE(conf);
    EXPECT_EQ(conf.error().what, path + ":2");
    EXPECT_LT(conf.error().message().size(), path.size() + 250);
    EXPECT_NE(conf.error().message().find("KEY = \\x00\\x00"), std::string::npos);
}

TEST(CsfReader, ReadConfFileErrorsNameThePath) {
    TempDir dir;
    auto missing = read_conf_file(dir.path() + "/nope.conf");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
    EXPECT_EQ(missing.error().what, dir.path() + "/nope.conf");

    auto directory = read_conf_file(dir.path());
    ASSERT_FALSE(directory);
    EXPECT_EQ(directory.error().code, EISDIR);
}

// A full csf.conf in the shape of CSF's DirectAdmin file (395 settings, comment blocks,
// values with ':', '!', '=', '#', backslashes and inner quotes).
TEST(CsfReader, FullSizeCsfConf) {
    auto conf = read_conf_file(kDataDir + "/csf.conf");
    ASSERT_TRUE(conf) << conf.error().message();
    EXPECT_EQ(conf->entries.size(), 395U);
    EXPECT_EQ(conf->entries.front().key, "TESTING");
    EXPECT_EQ(conf->entries.front().line, 14);
    EXPECT_EQ(conf->entries.back().key, "DEBUG");
    EXPECT_EQ(conf->entries.back().line, 669);

    ASSERT_NE(conf->find("SMTP_BLOCK"), nullptr);
    EXPECT_EQ(conf->find("SMTP_BLOCK")->value, "1");
    EXPECT_EQ(conf->find("SMTP_BLOCK")->line, 187);
    EXPECT_EQ(value_of(*conf, "SMTP_PORTS"), "25,465,587");
    EXPECT_EQ(value_of(*conf, "SMTP_ALLOWUSER"), "");  // the commented example is not read
    EXPECT_EQ(value_of(*conf, "SMTP_ALLOWGROUP"), "mail,mailman");
    EXPECT_EQ(value_of(*conf, "SMTP_ALLOWLOCAL"), "1");
    EXPECT_EQ(value_of(*conf, "DROP_OUT"), "REJECT");
    EXPECT_EQ(value_of(*conf, "TCP_IN"),
              "20,21,22,25,53,80,110,143,443,465,587,993,995,2222,35000:35999");
    EXPECT_EQ(value_of(*conf, "CLUSTER_KEY"), "change = this \"key\" # not a comment");
    EXPECT_EQ(value_of(*conf, "SSH_REGEX"), "(sshd|sshd-session)\\[\\d+\\]: Failed");
    EXPECT_EQ(value_of(*conf, "UI_CIPHER"),
              "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:!aNULL:!MD5:!DSS");
    EXPECT_EQ(value_of(*conf, "PORTS_pure-ftpd"), "20,21");
    EXPECT_EQ(value_of(*conf, "ETH_DEVICE"), "");
    EXPECT_EQ(conf->find("SMTP_BLOCKS"), nullptr);
}

// The same file saved by a Windows editor reads the same, line numbers included.
TEST(CsfReader, FullSizeCsfConfWithCrlf) {
    auto lf = read_conf_file(kDataDir + "/csf.conf");
    ASSERT_TRUE(lf) << lf.error().message();
    auto content = read_text_file(kDataDir + "/csf.conf");
    ASSERT_TRUE(content) << content.error().message();
    std::string crlf;
    for (const char c : *content) {
        if (c == '\n')
            crlf.push_back('\r');
        crlf.push_back(c);
    }
    auto conf = parse_conf(crlf, "csf.conf");
    ASSERT_TRUE(conf) << conf.error().message();
    ASSERT_EQ(conf->entries.size(), lf->entries.size());
    for (std::size_t i = 0; i < conf->entries.size(); ++i) {
        EXPECT_EQ(conf->entries[i].key, lf->entries[i].key);
        EXPECT_EQ(conf->entries[i].value, lf->entries[i].value);
        EXPECT_EQ(conf->entries[i].line, lf->entries[i].line);
    }
}

// Appending one existing setting to the full file is CSF's "repeated" error.
TEST(CsfReader, FullSizeCsfConfWithADuplicate) {
    auto text = read_text_file(kDataDir + "/csf.conf");
    ASSERT_TRUE(text) << text.error().message();
    const std::string content = *text + "SMTP_ALLOWUSER = \"admin\"\n";
    auto conf = parse_conf(content, "csf.conf");
    ASSERT_FALSE(conf);
    EXPECT_EQ(conf.error().message(),
              "csf.conf:672: Setting SMTP_ALLOWUSER is repeated (first set on line 206)");
}

TEST(SplitList, TrimsItemsAndDropsEmptyOnes) {
    EXPECT_EQ(split_list("mail,mailman"), (std::vector<std::string>{"mail", "mailman"}));
    EXPECT_EQ(split_list(" a , b,,c ,\t"), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(split_list("one"), (std::vector<std::string>{"one"}));
    EXPECT_TRUE(split_list("").empty());
    EXPECT_TRUE(split_list(" , ,, ").empty());
    EXPECT_EQ(split_list("a b,c"), (std::vector<std::string>{"a b", "c"}));
}

}  // namespace
}  // namespace smtpfence::conf
