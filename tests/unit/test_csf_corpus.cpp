// The csf.conf reader against a corpus of files: one per syntax edge of CSF's loader
// (tests/unit/data/csf/syntax/NAME.conf, with what CSF reads from it in NAME.expect),
// and two full-size files in the shape of CSF's generic and DirectAdmin csf.conf.
// The .expect files were written from CSF's loader (ConfigServer::Config::loadconfig
// and ConfigServer::Slurp), and cross-checked against it run under perl; the one
// deliberate difference (byte 0x85) says so in its .expect file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/conf_reader.h"
#include "common/files.h"
#include "common/text.h"

namespace smtpfence::csf {
namespace {

const std::string kCsfData = std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data/csf";

// Larger than any value in the corpus: text::printable() must not shorten anything here.
constexpr std::size_t kNoTruncation = 1U << 20U;

// What a parse gives, in the .expect notation: "LINE KEY=VALUE" per setting (bytes
// escaped as text::printable() does), or one "error: MESSAGE" line.
std::string describe(const Result<conf::ConfFile>& conf) {
    if (!conf)
        return "error: " + conf.error().message() + "\n";
    std::string out;
    for (const conf::Entry& e : conf->entries) {
        out += std::to_string(e.line) + " " + text::printable(e.key, kNoTruncation) + "=" +
               text::printable(e.value, kNoTruncation) + "\n";
    }
    return out;
}

// The .expect file without its comment lines.
std::string expected(const std::string& path) {
    auto text = read_text_file(path);
    if (!text) {
        ADD_FAILURE() << text.error().message();
        return {};
    }
    std::string out;
    std::size_t pos = 0;
    while (pos < text->size()) {
        std::size_t end = text->find('\n', pos);
        if (end == std::string::npos)
            end = text->size();
        const std::string line = text->substr(pos, end - pos);
        if (!line.empty() && line.front() != '#')
            out += line + "\n";
        pos = end + 1;
    }
    return out;
}

std::vector<std::filesystem::path> corpus(const std::string& extension) {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(kCsfData + "/syntax")) {
        if (entry.path().extension() == extension)
            files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    return files;
}

TEST(CsfCorpus, EverySyntaxEdgeReadsAsCsfReadsIt) {
    const auto files = corpus(".conf");
    ASSERT_GE(files.size(), 30U);
    for (const auto& file : files) {
        auto text = read_text_file(file.string());
        ASSERT_TRUE(text) << text.error().message();
        // Named by file name only, so the messages in .expect do not depend on where
        // the source tree is.
        const std::string got = describe(conf::parse_conf(*text, file.filename().string()));
        std::filesystem::path expect = file;
        expect.replace_extension(".expect");
        EXPECT_EQ(got, expected(expect.string())) << file.filename();
    }
}

TEST(CsfCorpus, EveryFileHasItsExpectation) {
    std::set<std::string> conf;
    std::set<std::string> expect;
    for (const auto& f : corpus(".conf"))
        conf.insert(f.stem().string());
    for (const auto& f : corpus(".expect"))
        expect.insert(f.stem().string());
    EXPECT_EQ(conf, expect);
}

// The same corpus read from disk (conf::read_conf_file) gives the same answers with the
// full path in messages.
TEST(CsfCorpus, ReadingFromDiskNamesTheFullPath) {
    auto bad = conf::read_conf_file(kCsfData + "/syntax/error-repeated.conf");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().what, kCsfData + "/syntax/error-repeated.conf:4");
    auto good = conf::read_conf_file(kCsfData + "/syntax/crlf.conf");
    ASSERT_TRUE(good) << good.error().message();
    EXPECT_EQ(good->entries.size(), 3U);
}

struct FullFile {
    const char* name;
    std::size_t settings;
};

const FullFile kGeneric{"csf-generic.conf", 402};
const FullFile kDirectAdmin{"csf-directadmin.conf", 411};

conf::ConfFile read_full(const FullFile& f) {
    auto conf = conf::read_conf_file(kCsfData + "/" + f.name);
    EXPECT_TRUE(conf) << conf.error().message();
    return conf.value_or(conf::ConfFile{});
}

std::string value_of(const conf::ConfFile& conf, std::string_view key) {
    const conf::Entry* e = conf.find(key);
    EXPECT_NE(e, nullptr) << "missing " << key;
    return e != nullptr ? e->value : "(missing)";
}

TEST(CsfCorpus, FullSizeGenericFile) {
    auto text = read_text_file(kCsfData + "/" + kGeneric.name);
    ASSERT_TRUE(text);
    EXPECT_GT(std::count(text->begin(), text->end(), '\n'), 2000);
    const conf::ConfFile conf = read_full(kGeneric);
    EXPECT_EQ(conf.entries.size(), kGeneric.settings);
    EXPECT_EQ(conf.entries.front().key, "TESTING");
    EXPECT_EQ(conf.entries.back().key, "DEBUG");
    EXPECT_EQ(value_of(conf, "SMTP_BLOCK"), "1");
    EXPECT_EQ(conf.find("SMTP_BLOCK")->line, 316);
    EXPECT_EQ(value_of(conf, "SMTP_PORTS"), "25,465,587");
    EXPECT_EQ(value_of(conf, "SMTP_ALLOWUSER"), "postfix");  // not the commented example
    EXPECT_EQ(conf.find("SMTP_ALLOWUSER")->line, 340);
    EXPECT_EQ(value_of(conf, "SMTP_ALLOWGROUP"), "mail,mailman,postdrop");
    EXPECT_EQ(value_of(conf, "SMTP_ALLOWLOCAL"), "1");
    EXPECT_EQ(value_of(conf, "SMTP_REDIRECT"), "0");
    EXPECT_EQ(value_of(conf, "IPV6"), "0");
    EXPECT_EQ(value_of(conf, "DROP_OUT"), "DROP");
    EXPECT_EQ(value_of(conf, "DROP_LOGGING"), "1");
    EXPECT_EQ(value_of(conf, "DROP_OUT_LOGGING"), "1");
    EXPECT_EQ(value_of(conf, "DROP_UID_LOGGING"), "1");
    // The syntax edges placed in the file.
    EXPECT_EQ(value_of(conf, "LF_PARSE"), "5");      // trailing comment after the quote
    EXPECT_EQ(value_of(conf, "UI_CHILDREN"), "5");   // no spaces around =
    EXPECT_EQ(value_of(conf, "UI_TIMEOUT"), "300");  // indented, tab before =
    EXPECT_EQ(value_of(conf, "CLUSTER_KEY"), "change=me #not a comment");
    EXPECT_EQ(value_of(conf, "ST_DISKW_DD"),
              "if=/dev/zero of=/var/lib/csf/dd_test bs=1MB count=64 conv=fdatasync");
    EXPECT_EQ(value_of(conf, "PORTS_bind"), "53;udp,53;tcp");
    EXPECT_EQ(value_of(conf, "GENERIC"), "1");
    EXPECT_EQ(conf.find("DIRECTADMIN"), nullptr);
}

TEST(CsfCorpus, FullSizeDirectAdminFileHasEveryGenericSettingAndDirectAdminsOwn) {
    const conf::ConfFile generic = read_full(kGeneric);
    const conf::ConfFile da = read_full(kDirectAdmin);
    EXPECT_EQ(da.entries.size(), kDirectAdmin.settings);
    std::set<std::string> generic_keys;
    for (const conf::Entry& e : generic.entries)
        generic_keys.insert(e.key);
    std::set<std::string> extra;
    for (const conf::Entry& e : da.entries) {
        if (!generic_keys.contains(e.key))
            extra.insert(e.key);
    }
    EXPECT_EQ(extra,
              (std::set<std::string>{"LF_DIRECTADMIN", "LF_DIRECTADMIN_PERM", "SMTPRELAY_LOG",
                                     "DIRECTADMIN_LOG", "DIRECTADMIN_LOG_R", "DIRECTADMIN_LOG_S",
                                     "DIRECTADMIN_LOG_P", "PORTS_directadmin", "DIRECTADMIN"}));
    EXPECT_EQ(da.entries.size(), generic.entries.size() + extra.size());
    EXPECT_EQ(value_of(da, "SMTP_BLOCK"), "1");
    EXPECT_EQ(value_of(da, "SMTP_PORTS"), "25, 465, 587");  // CSF strips the spaces
    EXPECT_EQ(value_of(da, "SMTP_ALLOWUSER"), "");
    EXPECT_EQ(value_of(da, "IPV6"), "1");
    EXPECT_EQ(value_of(da, "DROP_OUT"), "REJECT");
    EXPECT_EQ(value_of(da, "TCP_IN"),
              "20,21,22,25,53,853,80,110,143,443,465,587,993,995,2222,35000:35999");
    EXPECT_EQ(value_of(da, "DIRECTADMIN"), "1");
}

// Saved by a Windows editor (CRLF) or an old Mac one (CR): the same settings on the
// same lines.
TEST(CsfCorpus, FullSizeFilesReadTheSameWithOtherLineEnds) {
    for (const FullFile& f : {kGeneric, kDirectAdmin}) {
        const conf::ConfFile lf = read_full(f);
        auto text = read_text_file(kCsfData + "/" + f.name);
        ASSERT_TRUE(text);
        for (const char* ending : {"\r\n", "\r"}) {
            std::string converted;
            for (const char c : *text) {
                if (c == '\n')
                    converted += ending;
                else
                    converted.push_back(c);
            }
            auto conf = conf::parse_conf(converted, f.name);
            ASSERT_TRUE(conf) << conf.error().message();
            ASSERT_EQ(conf->entries.size(), lf.entries.size()) << f.name;
            for (std::size_t i = 0; i < lf.entries.size(); ++i) {
                EXPECT_EQ(conf->entries[i].key, lf.entries[i].key);
                EXPECT_EQ(conf->entries[i].value, lf.entries[i].value);
                EXPECT_EQ(conf->entries[i].line, lf.entries[i].line);
            }
        }
    }
}

// An admin's edit that CSF refuses is refused here with the same line.
TEST(CsfCorpus, FullSizeFilesWithABrokenLine) {
    auto text = read_text_file(kCsfData + "/" + kDirectAdmin.name);
    ASSERT_TRUE(text);
    std::string broken = *text;
    const std::string from = "SMTP_ALLOWUSER = \"\"";
    const std::size_t at = broken.find(from);
    ASSERT_NE(at, std::string::npos);
    broken.replace(at, from.size(), "SMTP_ALLOWUSER = bob");
    auto conf = conf::parse_conf(broken, "csf.conf");
    ASSERT_FALSE(conf);
    EXPECT_EQ(conf.error().what,
              "csf.conf:" + std::to_string(
                                std::count(broken.begin(),
                                           broken.begin() + static_cast<std::ptrdiff_t>(at), '\n') +
                                1));

    auto repeated = conf::parse_conf(*text + "SMTP_BLOCK = \"0\"\n", "csf.conf");
    ASSERT_FALSE(repeated);
    EXPECT_NE(repeated.error().message().find("Setting SMTP_BLOCK is repeated (first set on line"),
              std::string::npos);
}

}  // namespace
}  // namespace smtpfence::csf
