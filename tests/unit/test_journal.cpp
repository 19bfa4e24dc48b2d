// The fields a journal entry is sent with (common/journal.h): the standard ones, the
// kind's MESSAGE_ID, and SMTPFENCE_* values that stay one printable string whatever
// bytes they came from. The entries in a real journald: tests/worker/test_journal.cpp.
#include <gtest/gtest.h>

#include <set>

#include "common/journal.h"

namespace smtpfence::journal {
namespace {

TEST(JournalFields, StandardFieldsFirstThenOursWithThePrefix) {
    Entry e{Kind::Counted, log::Level::Notice, "3 more direct SMTP attempt(s)", {}};
    e.add("ACCOUNT", "bob").add("COUNT", std::uint64_t{3});
    EXPECT_EQ(fields_of(e),
              (std::vector<std::string>{"MESSAGE=3 more direct SMTP attempt(s)", "PRIORITY=5",
                                        "MESSAGE_ID=932b397ac20b46c49cc3a316230f105c",
                                        "SYSLOG_IDENTIFIER=" + log::program(),
                                        "SMTPFENCE_ACCOUNT=bob", "SMTPFENCE_COUNT=3"}));
}

TEST(JournalFields, OutsideBytesAreEscapedAndCannotAddAField) {
    Entry e{Kind::Attempt, log::Level::Notice, "m", {}};
    e.add("CWD", "a\"b\\c\nMESSAGE=forged").add("CMDLINE", "x\ty\x01\xc3\xa9");
    const std::vector<std::string> f = fields_of(e);
    ASSERT_EQ(f.size(), 6U);
    EXPECT_EQ(f[4], "SMTPFENCE_CWD=a\"b\\\\c\\x0aMESSAGE=forged");
    EXPECT_EQ(f[5], "SMTPFENCE_CMDLINE=x\\ty\\x01\\xc3\\xa9");
    for (const std::string& field : f)
        EXPECT_EQ(field.find('\n'), std::string::npos) << field;
}

TEST(JournalFields, OurTextKeepsItsFormUnlessAControlByteSlippedIn) {
    Entry e{Kind::ConfigError, log::Level::Error, "bad\nline", {}};
    e.add_text("ERROR", "conf:3: unknown setting \"A\\x0aB\"").add_text("WHEN", "re\x7fload");
    const std::vector<std::string> f = fields_of(e);
    EXPECT_EQ(f[0], "MESSAGE=bad\\x0aline");
    EXPECT_EQ(f[4], "SMTPFENCE_ERROR=conf:3: unknown setting \"A\\x0aB\"");
    EXPECT_EQ(f[5], "SMTPFENCE_WHEN=re\\x7fload");
}

TEST(JournalFields, LongValuesAreCutWithTheirSize) {
    Entry e{Kind::ConfigError, log::Level::Error, std::string(5000, 'm'), {}};
    e.add_text("ERROR", std::string(5000, 'e')).add("CWD", std::string(5000, 'c'));
    const std::vector<std::string> f = fields_of(e);
    EXPECT_EQ(f[0], "MESSAGE=" + std::string(kValueMaxChars, 'm') + "... (5000 bytes)");
    EXPECT_EQ(f[4], "SMTPFENCE_ERROR=" + std::string(kValueMaxChars, 'e') + "... (5000 bytes)");
    EXPECT_EQ(f[5], "SMTPFENCE_CWD=" + std::string(kValueMaxChars, 'c') + "... (5000 bytes)");
}

TEST(JournalFields, EveryKindHasItsOwnId) {
    std::set<std::string_view> ids;
    for (Kind k : {Kind::Attempt, Kind::Counted, Kind::SelfHeal, Kind::ConfigError, Kind::Alert}) {
        EXPECT_EQ(message_id(k).size(), 32U);
        ids.insert(message_id(k));
    }
    EXPECT_EQ(ids.size(), 5U);
}

}  // namespace
}  // namespace smtpfence::journal
