// import-csf: the smtpfence.conf written from a csf.conf loads to the very policy
// `smtpfenced --csf-conf` enforces with that csf.conf; the report lists what was
// mapped and what was ignored.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "common/files.h"
#include "csf-compat/import.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::csf {
namespace {

const std::string kCsfData = std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data/csf";

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

ImportResult import_ok(const std::string& text) {
    auto conf = conf::parse_conf(text, "/etc/csf/csf.conf");
    EXPECT_TRUE(conf) << conf.error().message();
    if (!conf)
        return {};
    auto imported = import_csf(*conf);
    EXPECT_TRUE(imported) << imported.error().message();
    return imported.value_or(ImportResult{});
}

// The imported smtpfence.conf read back by smtpfence's own loader.
Policy reload(const ImportResult& imported) {
    auto conf = conf::parse_conf(imported.config_text, "smtpfence.conf");
    EXPECT_TRUE(conf) << conf.error().message() << "\n" << imported.config_text;
    if (!conf)
        return {};
    auto loaded = policy_from_conf(*conf);
    EXPECT_TRUE(loaded) << loaded.error().message() << "\n" << imported.config_text;
    if (!loaded)
        return {};
    EXPECT_TRUE(loaded->warnings.empty()) << ::testing::PrintToString(loaded->warnings);
    return loaded->policy;
}

void expect_same_enforcement(const Policy& a, const Policy& b) {
    EXPECT_EQ(a.enabled, b.enabled);
    EXPECT_EQ(a.ports, b.ports);
    EXPECT_EQ(a.allow_users, b.allow_users);
    EXPECT_EQ(a.allow_groups, b.allow_groups);
    EXPECT_EQ(a.allow_groups_default, b.allow_groups_default);
    EXPECT_EQ(a.mta_users, b.mta_users);
    EXPECT_EQ(a.mta_users_auto, b.mta_users_auto);
    EXPECT_EQ(a.allow_local, b.allow_local);
    EXPECT_EQ(a.action, b.action);
    EXPECT_EQ(a.redirect, b.redirect);
    EXPECT_EQ(a.log_blocked, b.log_blocked);
    EXPECT_EQ(a.log_uid, b.log_uid);
    EXPECT_EQ(a.queue_num, b.queue_num);
}

TEST(ImportCsf, FullSizeFilesRoundTripToTheSamePolicy) {
    for (const char* name : {"csf-generic.conf", "csf-directadmin.conf"}) {
        auto imported = import_csf_file(kCsfData + "/" + name);
        ASSERT_TRUE(imported) << imported.error().message();
        expect_same_enforcement(reload(*imported), imported->mapping.policy);
        EXPECT_TRUE(contains(imported->report, "Ignored (not about outgoing SMTP): ")) << name;
    }
}

TEST(ImportCsf, ConfigTextNamesTheLinesAndSaysWhatDiffers) {
    auto imported = import_csf_file(kCsfData + "/csf-generic.conf");
    ASSERT_TRUE(imported) << imported.error().message();
    const std::string& text = imported->config_text;
    EXPECT_TRUE(contains(text, "\nSMTP_BLOCK = \"1\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nSMTP_PORTS = \"25,465,587\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nSMTP_ALLOWUSER = \"postfix\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nSMTP_ALLOWGROUP = \"mail,mailman,postdrop\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nMTA_USERS = \"auto\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nDROP_OUT = \"DROP\"\n")) << text;
    EXPECT_TRUE(contains(text, "\nDROP_OUT_LOGGING = \"1\"\n")) << text;
    EXPECT_TRUE(contains(text, "# csf.conf line 316: SMTP_BLOCK = \"1\": SMTP is guarded."))
        << text;
    EXPECT_TRUE(contains(text, "# - " + kCsfData + "/csf-generic.conf:126: IPV6: \"0\": CSF"))
        << text;
    // Comment lines stay within 79 columns (a long value may overflow on its own).
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t end = text.find('\n', pos);
        const std::string line = text.substr(pos, end - pos);
        if (line.rfind('#', 0) == 0 && line.find("csf.conf line") == std::string::npos) {
            EXPECT_LE(line.size(), 79U) << line;
        }
        pos = end + 1;
    }
}

TEST(ImportCsf, ReportListsMappedNotesAndIgnored) {
    auto imported = import_csf_file(kCsfData + "/csf-directadmin.conf");
    ASSERT_TRUE(imported) << imported.error().message();
    const std::string& r = imported->report;
    EXPECT_TRUE(contains(r, "Imported " + kCsfData + "/csf-directadmin.conf (411 settings).")) << r;
    EXPECT_TRUE(contains(r, "  SMTP_PORTS = \"25, 465, 587\" (line 333): ports 25, 465, 587\n"))
        << r;
    EXPECT_TRUE(contains(r, "Ignored (not about outgoing SMTP): 400 setting(s)\n")) << r;
    EXPECT_TRUE(contains(r, " TESTING, TESTING_INTERVAL,")) << r;
    EXPECT_TRUE(contains(r, " DIRECTADMIN, DEBUG\n")) << r;
    EXPECT_FALSE(contains(r, "Notes:")) << r;
}

TEST(ImportCsf, EdgesRoundTrip) {
    const std::string cases[] = {
        // Blocking off, no groups, redirect, no logging.
        "SMTP_BLOCK = \"0\"\nSMTP_PORTS = \"25\"\nSMTP_ALLOWGROUP = \"\"\nSMTP_REDIRECT = "
        "\"1\"\nDROP_OUT_LOGGING = \"0\"\nDROP_OUT = \"REJECT\"\n",
        // Ranges, names with whitespace, numeric uid, a name CSF skipped, Perl truth.
        "SMTP_BLOCK = \"yes\"\nSMTP_PORTS = \"2525:2527, 25\"\nSMTP_ALLOWUSER = \"b ob,1001,x@y\"\n"
        "SMTP_ALLOWGROUP = \"mail\"\nSMTP_ALLOWLOCAL = \"0\"\nDROP_OUT = \"drop\"\n"
        "DROP_LOGGING = \"1\"\nDROP_OUT_LOGGING = \"1\"\nDROP_UID_LOGGING = \"0\"\nIPV6 = \"1\"\n",
        // Nothing at all: everything as CSF reads missing settings.
        "TCP_IN = \"22\"\n",
        // Ports empty: nothing enforced, default ports written for later.
        "SMTP_BLOCK = \"1\"\nSMTP_PORTS = \"\"\n",
    };
    for (const std::string& text : cases) {
        const ImportResult imported = import_ok(text);
        expect_same_enforcement(reload(imported), imported.mapping.policy);
    }
    const ImportResult off = import_ok(cases[3]);
    EXPECT_FALSE(off.mapping.policy.enabled);
    EXPECT_TRUE(contains(off.config_text, "\nSMTP_BLOCK = \"0\"\n")) << off.config_text;
    EXPECT_TRUE(contains(off.config_text, "csf.conf lists no port")) << off.config_text;
    const ImportResult ranges = import_ok(cases[1]);
    EXPECT_TRUE(contains(ranges.config_text, "\nSMTP_PORTS = \"25,2525,2526,2527\"\n"));
    EXPECT_TRUE(contains(ranges.config_text, "\nSMTP_ALLOWUSER = \"bob,1001\"\n"));
    EXPECT_TRUE(contains(ranges.report, "\"x@y\" is not a valid user name")) << ranges.report;
}

TEST(ImportCsf, ErrorsNameFileAndLine) {
    auto conf = conf::parse_conf("SMTP_BLOCK = \"1\"\nDROP_OUT = \"LOG\"\n", "/etc/csf/csf.conf");
    ASSERT_TRUE(conf);
    auto bad = import_csf(*conf);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().what, "/etc/csf/csf.conf:2");
    testing::TempDir dir;
    auto missing = import_csf_file(dir.path() + "/csf.conf");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ENOENT);
}

TEST(ImportCsf, WritingKeepsAnExistingConfigUnlessAskedToReplaceIt) {
    testing::TempDir dir;
    const ImportResult imported = import_ok("SMTP_BLOCK = \"1\"\nSMTP_PORTS = \"25\"\n");
    const std::string path = dir.path() + "/smtpfence.conf";
    ASSERT_TRUE(write_imported_config(imported, path, false));
    auto written = read_text_file(path);
    ASSERT_TRUE(written);
    EXPECT_EQ(*written, imported.config_text);

    const ImportResult other = import_ok("SMTP_BLOCK = \"0\"\n");
    auto kept = write_imported_config(other, path, false);
    ASSERT_FALSE(kept);
    EXPECT_EQ(kept.error().code, EEXIST);
    EXPECT_EQ(*read_text_file(path), imported.config_text);
    ASSERT_TRUE(write_imported_config(other, path, true));
    EXPECT_EQ(*read_text_file(path), other.config_text);
}

}  // namespace
}  // namespace smtpfence::csf
