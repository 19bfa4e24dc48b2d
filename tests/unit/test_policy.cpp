#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>

#include "policy/policy.h"
#include "tests/support/temp_dir.h"

namespace smtpfence {
namespace {

using namespace std::string_literals;

using testing::TempDir;

// Parses text as smtpfence.conf and maps it.
Result<LoadedPolicy> map(const std::string& text) {
    auto conf = conf::parse_conf(text, "smtpfence.conf");
    if (!conf)
        return std::unexpected(conf.error());
    return policy_from_conf(*conf);
}

Policy map_ok(const std::string& text) {
    auto loaded = map(text);
    EXPECT_TRUE(loaded.has_value()) << loaded.error().message();
    return loaded ? loaded->policy : Policy{};
}

std::string map_error(const std::string& text) {
    auto loaded = map(text);
    EXPECT_FALSE(loaded.has_value()) << "accepted: " << text;
    return loaded ? std::string("(no error)") : loaded.error().message();
}

// The error of KEY = "value" on line 1.
std::string bad(const std::string& key, const std::string& value) {
    return map_error(key + " = \"" + value + "\"\n");
}

void expect_defaults(const Policy& p) {
    EXPECT_TRUE(p.enabled);
    EXPECT_EQ(p.ports, (std::vector<std::uint16_t>{25, 465, 587}));
    EXPECT_TRUE(p.allow_users.empty());
    EXPECT_EQ(p.allow_groups, (std::vector<std::string>{"mail", "mailman"}));
    EXPECT_EQ(p.mta_users, kAutoMtaUsers);
    EXPECT_TRUE(p.mta_users_auto);
    EXPECT_TRUE(p.allow_local);
    EXPECT_EQ(p.action, BlockAction::Reject);
    EXPECT_EQ(p.queue_num, 2525);
    EXPECT_EQ(p.observe_rate, 20U);
    EXPECT_EQ(p.observe_burst, 40U);
}

TEST(Policy, EmptyFileKeepsDefaults) {
    auto loaded = map("# nothing set\n");
    ASSERT_TRUE(loaded) << loaded.error().message();
    expect_defaults(loaded->policy);
    EXPECT_EQ(loaded->policy.source, "smtpfence.conf");
    EXPECT_TRUE(loaded->warnings.empty());
}

TEST(Policy, EveryKeyMapped) {
    const Policy p = map_ok(
        "SMTP_BLOCK = \"0\"\n"
        "SMTP_PORTS = \"587, 25 ,2525\"\n"
        "SMTP_ALLOWUSER = \"admin, 1001,cpanel\"\n"
        "SMTP_ALLOWGROUP = \"mail,12\"\n"
        "SMTP_ALLOWLOCAL = \"0\"\n"
        "MTA_USERS = \"exim,Debian-exim\"\n"
        "DROP_OUT = \"DROP\"\n"
        "NFQUEUE_NUM = \"7\"\n"
        "OBSERVE_RATE = \"100\"\n"
        "OBSERVE_BURST = \"200\"\n");
    EXPECT_FALSE(p.enabled);
    EXPECT_EQ(p.ports, (std::vector<std::uint16_t>{25, 587, 2525}));
    EXPECT_EQ(p.allow_users, (std::vector<std::string>{"admin", "1001", "cpanel"}));
    EXPECT_EQ(p.allow_groups, (std::vector<std::string>{"mail", "12"}));
    EXPECT_FALSE(p.allow_local);
    EXPECT_EQ(p.mta_users, (std::vector<std::string>{"exim", "Debian-exim"}));
    EXPECT_FALSE(p.mta_users_auto);
    EXPECT_EQ(p.action, BlockAction::Drop);
    EXPECT_EQ(p.queue_num, 7);
    EXPECT_EQ(p.observe_rate, 100U);
    EXPECT_EQ(p.observe_burst, 200U);
    EXPECT_EQ(p.source, "smtpfence.conf");
}

TEST(Policy, Booleans) {
    EXPECT_TRUE(map_ok("SMTP_BLOCK = \"1\"").enabled);
    EXPECT_FALSE(map_ok("SMTP_BLOCK = \"0\"").enabled);
    EXPECT_TRUE(map_ok("SMTP_ALLOWLOCAL = \"1\"").allow_local);
    EXPECT_FALSE(map_ok("SMTP_ALLOWLOCAL = \"0\"").allow_local);
    EXPECT_EQ(bad("SMTP_BLOCK", "yes"),
              "smtpfence.conf:1: SMTP_BLOCK: bad value \"yes\": expected \"0\" or \"1\"");
    EXPECT_EQ(bad("SMTP_ALLOWLOCAL", ""),
              "smtpfence.conf:1: SMTP_ALLOWLOCAL: bad value \"\": expected \"0\" or \"1\"");
    for (const char* v : {" 1", "1 ", "2", "01", "true", "on", "-1"}) {
        EXPECT_NE(bad("SMTP_BLOCK", v).find("expected \"0\" or \"1\""), std::string::npos) << v;
    }
}

TEST(Policy, BadValueErrorCarriesFileAndLine) {
    auto loaded = map("# c\n\nSMTP_BLOCK = \"1\"\nSMTP_ALLOWLOCAL = \"maybe\"\n");
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().code, 0);
    EXPECT_EQ(loaded.error().what, "smtpfence.conf:4");
    EXPECT_EQ(loaded.error().detail,
              "SMTP_ALLOWLOCAL: bad value \"maybe\": expected \"0\" or \"1\"");
}

TEST(Policy, PortsAreSortedAndDeduplicated) {
    auto loaded = map("SMTP_PORTS = \"587,25,465,25\"\n");
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_EQ(loaded->policy.ports, (std::vector<std::uint16_t>{25, 465, 587}));
    ASSERT_EQ(loaded->warnings.size(), 1U);
    EXPECT_EQ(loaded->warnings[0],
              "smtpfence.conf:1: SMTP_PORTS: port 25 is listed more than once");
}

TEST(Policy, PortsHaveAllWhitespaceRemovedAsCsfDoes) {
    EXPECT_EQ(map_ok("SMTP_PORTS = \" 2 5 ,\t587 \"").ports, (std::vector<std::uint16_t>{25, 587}));
    EXPECT_EQ(map_ok("SMTP_PORTS = \"25,,587,\"").ports, (std::vector<std::uint16_t>{25, 587}));
    EXPECT_EQ(map_ok("SMTP_PORTS = \"1,65535\"").ports, (std::vector<std::uint16_t>{1, 65535}));
    EXPECT_EQ(map_ok("SMTP_PORTS = \"0025\"").ports, (std::vector<std::uint16_t>{25}));
}

TEST(Policy, BadPorts) {
    EXPECT_EQ(bad("SMTP_PORTS", ""),
              "smtpfence.conf:1: SMTP_PORTS: bad value \"\": expected a comma-separated list of "
              "ports 1-65535, not an empty list");
    EXPECT_NE(bad("SMTP_PORTS", " , ").find("not an empty list"), std::string::npos);
    EXPECT_EQ(bad("SMTP_PORTS", "25,abc,587"),
              "smtpfence.conf:1: SMTP_PORTS: bad value \"25,abc,587\": expected a comma-separated "
              "list of ports 1-65535; \"abc\" is not a port");
    for (const char* item : {"0", "65536", "-25", "25:30", "99999999999999999999999", "2e1"}) {
        EXPECT_NE(bad("SMTP_PORTS", std::string("25,") + item)
                      .find(std::string("\"") + item + "\" is not a port"),
                  std::string::npos)
            << item;
    }
}

TEST(Policy, AllowUsers) {
    EXPECT_TRUE(map_ok("SMTP_ALLOWUSER = \"\"").allow_users.empty());
    EXPECT_EQ(map_ok("SMTP_ALLOWUSER = \"a.b_c-d, _x,.hidden, smb$,0, 4294967294\"").allow_users,
              (std::vector<std::string>{"a.b_c-d", "_x", ".hidden", "smb$", "0", "4294967294"}));
    const std::string name32(32, 'u');
    EXPECT_EQ(map_ok("SMTP_ALLOWUSER = \"" + name32 + "\"").allow_users,
              (std::vector<std::string>{name32}));
    EXPECT_EQ(map_ok("SMTP_ALLOWUSER = \"" + std::string(31, 'u') + "$\"").allow_users.size(), 1U);
}

TEST(Policy, AllowUsersRepeatsDroppedWithWarning) {
    auto loaded = map("SMTP_ALLOWUSER = \"bob,alice,bob\"\n");
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_EQ(loaded->policy.allow_users, (std::vector<std::string>{"bob", "alice"}));
    ASSERT_EQ(loaded->warnings.size(), 1U);
    EXPECT_EQ(loaded->warnings[0],
              "smtpfence.conf:1: SMTP_ALLOWUSER: \"bob\" is listed more than once");
}

// CSF's syntax skips a line without "=" (so does the reader), but `SMTP_BLOCK "0"` is
// then no setting at all: the admin is told, naming the line, and the rest applies.
TEST(Policy, LinesWithoutAnEqualsSignAreIgnoredWithAWarning) {
    auto loaded = map("# comment\nSMTP_BLOCK \"0\"\n\n  \nSMTP_PORTS = \"25\"\nnonsense\x1b[2J\n");
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_TRUE(loaded->policy.enabled);
    EXPECT_EQ(loaded->policy.ports, (std::vector<std::uint16_t>{25}));
    ASSERT_EQ(loaded->warnings.size(), 2U);
    EXPECT_EQ(loaded->warnings[0],
              "smtpfence.conf:2: SMTP_BLOCK \"0\" is ignored: a setting needs \"=\" (KEY = "
              "\"value\"); CSF's syntax skips lines without one");
    EXPECT_TRUE(loaded->warnings[1].starts_with("smtpfence.conf:6: nonsense\\x1b[2J is ignored"))
        << loaded->warnings[1];
}

TEST(Policy, BadAllowUsers) {
    EXPECT_EQ(bad("SMTP_ALLOWUSER", "bob,b@d"),
              "smtpfence.conf:1: SMTP_ALLOWUSER: bad value \"bob,b@d\": expected a "
              "comma-separated list of user names or numeric uids (0-4294967294); \"b@d\" is not "
              "one");
    for (const std::string& item :
         {std::string(65, 'u'), std::string("-bob"), std::string("bo b"), std::string("a$b"),
          std::string("$"), std::string("4294967295"), std::string("99999999999999999999"),
          std::string("j\xc3\xb6rg"), std::string("x:y"), std::string("a/b")}) {
        const std::string m = bad("SMTP_ALLOWUSER", item);
        EXPECT_NE(m.find("is not one"), std::string::npos) << item << ": " << m;
    }
    EXPECT_NE(bad("SMTP_ALLOWUSER", "j\xc3\xb6rg").find("\"j\\xc3\\xb6rg\" is not one"),
              std::string::npos);
}

TEST(Policy, AllowGroups) {
    EXPECT_TRUE(map_ok("SMTP_ALLOWGROUP = \"\"").allow_groups.empty());
    EXPECT_FALSE(map_ok("SMTP_ALLOWGROUP = \"mail\"").allow_groups_default);
    EXPECT_TRUE(Policy{}.allow_groups_default);
    EXPECT_EQ(map_ok("SMTP_ALLOWGROUP = \"mail , 12,postdrop\"").allow_groups,
              (std::vector<std::string>{"mail", "12", "postdrop"}));
    EXPECT_EQ(bad("SMTP_ALLOWGROUP", "mail,wheel!"),
              "smtpfence.conf:1: SMTP_ALLOWGROUP: bad value \"mail,wheel!\": expected a "
              "comma-separated list of group names or numeric gids (0-4294967294); \"wheel!\" is "
              "not one");
}

TEST(Policy, MtaUsers) {
    Policy p = map_ok("MTA_USERS = \"auto\"");
    EXPECT_EQ(p.mta_users, kAutoMtaUsers);
    EXPECT_TRUE(p.mta_users_auto);
    p = map_ok("MTA_USERS = \"AUTO\"");
    EXPECT_TRUE(p.mta_users_auto);
    p = map_ok("MTA_USERS = \"postfix\"");
    EXPECT_EQ(p.mta_users, (std::vector<std::string>{"postfix"}));
    EXPECT_FALSE(p.mta_users_auto);
    p = map_ok("MTA_USERS = \"\"");
    EXPECT_TRUE(p.mta_users.empty());
    EXPECT_FALSE(p.mta_users_auto);
    p = map_ok("MTA_USERS = \"mail, 8\"");
    EXPECT_EQ(p.mta_users, (std::vector<std::string>{"mail", "8"}));
    EXPECT_EQ(bad("MTA_USERS", "auto,exim"),
              "smtpfence.conf:1: MTA_USERS: bad value \"auto,exim\": expected \"auto\" alone, or "
              "a list of user names without \"auto\"");
    EXPECT_NE(bad("MTA_USERS", "mail,b@d").find("\"b@d\" is not one"), std::string::npos);
}

TEST(Policy, DropOut) {
    EXPECT_EQ(map_ok("DROP_OUT = \"REJECT\"").action, BlockAction::Reject);
    EXPECT_EQ(map_ok("DROP_OUT = \"reject\"").action, BlockAction::Reject);
    EXPECT_EQ(map_ok("DROP_OUT = \"DROP\"").action, BlockAction::Drop);
    EXPECT_EQ(map_ok("DROP_OUT = \"Drop\"").action, BlockAction::Drop);
    EXPECT_EQ(bad("DROP_OUT", "DENY"),
              "smtpfence.conf:1: DROP_OUT: bad value \"DENY\": expected \"REJECT\" or \"DROP\"");
    EXPECT_NE(bad("DROP_OUT", "").find("expected \"REJECT\" or \"DROP\""), std::string::npos);
    EXPECT_NE(bad("DROP_OUT", " DROP").find("bad value \" DROP\""), std::string::npos);
}

TEST(Policy, QueueNumber) {
    EXPECT_EQ(map_ok("NFQUEUE_NUM = \"0\"").queue_num, 0);
    EXPECT_EQ(map_ok("NFQUEUE_NUM = \"65535\"").queue_num, 65535);
    EXPECT_EQ(bad("NFQUEUE_NUM", "65536"),
              "smtpfence.conf:1: NFQUEUE_NUM: bad value \"65536\": expected a number from 0 to "
              "65535");
    for (const char* v : {"", "-1", "1.5", "x", " 7", "99999999999999999999999"}) {
        EXPECT_NE(bad("NFQUEUE_NUM", v).find("expected a number from 0 to 65535"),
                  std::string::npos)
            << v;
    }
}

TEST(Policy, ObserveRateAndBurst) {
    EXPECT_EQ(map_ok("OBSERVE_RATE = \"1\"").observe_rate, 1U);
    EXPECT_EQ(map_ok("OBSERVE_RATE = \"100000\"").observe_rate, 100000U);
    EXPECT_EQ(map_ok("OBSERVE_BURST = \"1\"").observe_burst, 1U);
    EXPECT_EQ(map_ok("OBSERVE_BURST = \"100000\"").observe_burst, 100000U);
    EXPECT_EQ(bad("OBSERVE_RATE", "0"),
              "smtpfence.conf:1: OBSERVE_RATE: bad value \"0\": expected a number from 1 to "
              "100000");
    EXPECT_EQ(bad("OBSERVE_BURST", "100001"),
              "smtpfence.conf:1: OBSERVE_BURST: bad value \"100001\": expected a number from 1 to "
              "100000");
    EXPECT_NE(bad("OBSERVE_RATE", "20/s").find("bad value \"20/s\""), std::string::npos);
    EXPECT_NE(bad("OBSERVE_BURST", "").find("expected a number"), std::string::npos);
}

TEST(Policy, HistoryRetention) {
    const Policy defaults = map_ok("");
    EXPECT_EQ(defaults.history_days, 90U);
    EXPECT_EQ(defaults.history_max_mb, 1024U);
    EXPECT_EQ(map_ok("HISTORY_DAYS = \"1\"").history_days, 1U);
    EXPECT_EQ(map_ok("HISTORY_DAYS = \"3650\"").history_days, 3650U);
    EXPECT_EQ(map_ok("HISTORY_MAX_MB = \"16\"").history_max_mb, 16U);
    EXPECT_EQ(map_ok("HISTORY_MAX_MB = \"1048576\"").history_max_mb, 1048576U);
    EXPECT_EQ(bad("HISTORY_DAYS", "0"),
              "smtpfence.conf:1: HISTORY_DAYS: bad value \"0\": expected a number from 1 to 3650");
    EXPECT_EQ(bad("HISTORY_MAX_MB", "15"),
              "smtpfence.conf:1: HISTORY_MAX_MB: bad value \"15\": expected a number from 16 to "
              "1048576");
    EXPECT_NE(bad("HISTORY_DAYS", "90d").find("bad value \"90d\""), std::string::npos);
}

TEST(Policy, UnknownKeyWithHint) {
    EXPECT_EQ(map_error("SMTP_BLOCK = \"1\"\nSMTP_BLOK = \"1\"\n"),
              "smtpfence.conf:2: unknown setting \"SMTP_BLOK\" (did you mean SMTP_BLOCK?)");
    EXPECT_EQ(map_error("smtp_ports = \"25\"\n"),
              "smtpfence.conf:1: unknown setting \"smtp_ports\" (did you mean SMTP_PORTS?)");
    EXPECT_EQ(map_error("SMTP_ALLOWUSERS = \"x\"\n"),
              "smtpfence.conf:1: unknown setting \"SMTP_ALLOWUSERS\" (did you mean "
              "SMTP_ALLOWUSER?)");
    EXPECT_EQ(map_error("OBSERVE_RAT = \"1\"\n"),
              "smtpfence.conf:1: unknown setting \"OBSERVE_RAT\" (did you mean OBSERVE_RATE?)");
    EXPECT_EQ(map_error("NFQUEUE = \"1\"\n"), "smtpfence.conf:1: unknown setting \"NFQUEUE\"");
}

TEST(Policy, UnknownKeyWithoutHint) {
    EXPECT_EQ(map_error("TCP_IN = \"22\"\n"), "smtpfence.conf:1: unknown setting \"TCP_IN\"");
    EXPECT_EQ(map_error("UID_INTERVAL = \"0\"\n"),
              "smtpfence.conf:1: unknown setting \"UID_INTERVAL\"");
    EXPECT_EQ(map_error("= \"0\"\n"), "smtpfence.conf:1: unknown setting \"\"");
    const std::string huge(10U << 20U, 'K');
    const std::string m = map_error(huge + " = \"1\"\n");
    EXPECT_LT(m.size(), 200U);
    EXPECT_EQ(m.rfind("smtpfence.conf:1: unknown setting \"KKKK", 0), 0U);
}

TEST(Policy, ValuesInMessagesAreEscapedAndShort) {
    EXPECT_EQ(bad("SMTP_BLOCK", "1\0"s),
              "smtpfence.conf:1: SMTP_BLOCK: bad value \"1\\x00\": expected \"0\" or \"1\"");
    const std::string m = bad("SMTP_PORTS", std::string(10U << 20U, '9'));
    EXPECT_LT(m.size(), 400U);
}

// csf.conf has hundreds of settings smtpfence does not know; it is not an smtpfence.conf.
TEST(Policy, FullCsfConfIsNotAnSmtpfenceConf) {
    auto conf =
        conf::read_conf_file(std::string(SMTPFENCE_SOURCE_DIR) + "/tests/unit/data/csf.conf");
    ASSERT_TRUE(conf) << conf.error().message();
    auto loaded = policy_from_conf(*conf);
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().detail, "unknown setting \"TESTING\"");
    EXPECT_EQ(loaded.error().what, conf->path + ":14");
}

TEST(LoadPolicy, MissingFileGivesDefaultsWhenAllowed) {
    TempDir dir;
    const std::string path = dir.path() + "/smtpfence.conf";
    auto loaded = load_policy(path, true);
    ASSERT_TRUE(loaded) << loaded.error().message();
    expect_defaults(loaded->policy);
    EXPECT_EQ(loaded->policy.source, "(built-in defaults; " + path + " not found)");
    EXPECT_TRUE(loaded->warnings.empty());
}

TEST(LoadPolicy, MissingFileIsAnErrorWhenNotAllowed) {
    TempDir dir;
    const std::string path = dir.path() + "/smtpfence.conf";
    auto loaded = load_policy(path, false);
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().code, ENOENT);
    EXPECT_EQ(loaded.error().message(), path + ": No such file or directory");
}

TEST(LoadPolicy, OtherReadErrorsAreNeverDefaults) {
    TempDir dir;
    auto loaded = load_policy(dir.path(), true);  // a directory
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().code, EISDIR);
    // A missing parent directory component that is a file: ENOTDIR, not "missing".
    const std::string file = dir.write("plain", "");
    auto under_file = load_policy(file + "/smtpfence.conf", true);
    ASSERT_FALSE(under_file);
    EXPECT_EQ(under_file.error().code, ENOTDIR);
}

TEST(LoadPolicy, ReadsAFile) {
    TempDir dir;
    const std::string path = dir.write(
        "smtpfence.conf",
        "# smtpfence\r\nSMTP_PORTS = \"25\"\r\nSMTP_ALLOWUSER = \"admin\" # the boss\r\n");
    auto loaded = load_policy(path, true);
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_EQ(loaded->policy.ports, (std::vector<std::uint16_t>{25}));
    EXPECT_EQ(loaded->policy.allow_users, (std::vector<std::string>{"admin"}));
    EXPECT_EQ(loaded->policy.source, path);
}

TEST(LoadPolicy, ErrorsInTheFileNameFileAndLine) {
    TempDir dir;
    const std::string path = dir.write("smtpfence.conf", "SMTP_BLOCK = \"1\"\nSMTP_PORTS = 25\n");
    auto loaded = load_policy(path, true);
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().what, path + ":2");
    const std::string path2 = dir.write("b.conf", "SMTP_PORTS = \"smtp\"\n");
    auto loaded2 = load_policy(path2, false);
    ASSERT_FALSE(loaded2);
    EXPECT_EQ(loaded2.error().message(),
              path2 +
                  ":1: SMTP_PORTS: bad value \"smtp\": expected a comma-separated list of "
                  "ports 1-65535; \"smtp\" is not a port");
}

TEST(Policy, DirectAdminKeysDefaults) {
    const Policy p = map_ok("# nothing set\n");
    EXPECT_EQ(p.da_pipeline, DaPipeline::Auto);
    EXPECT_EQ(p.da_attempt_weight, 1U);
    EXPECT_FALSE(p.da_block_cracking);
}

TEST(Policy, DirectAdminPipeline) {
    EXPECT_EQ(map_ok("DA_PIPELINE = \"auto\"").da_pipeline, DaPipeline::Auto);
    EXPECT_EQ(map_ok("DA_PIPELINE = \"AUTO\"").da_pipeline, DaPipeline::Auto);
    EXPECT_EQ(map_ok("DA_PIPELINE = \"1\"").da_pipeline, DaPipeline::On);
    EXPECT_EQ(map_ok("DA_PIPELINE = \"0\"").da_pipeline, DaPipeline::Off);
    EXPECT_EQ(bad("DA_PIPELINE", "yes"),
              "smtpfence.conf:1: DA_PIPELINE: bad value \"yes\": expected \"auto\" (when "
              "/etc/virtual exists), \"1\" or \"0\"");
    for (const char* v : {"", " 1", "on", "2", "auto,1"})
        EXPECT_NE(bad("DA_PIPELINE", v).find("DA_PIPELINE: bad value"), std::string::npos) << v;
}

TEST(Policy, TableOwner) {
    EXPECT_EQ(map_ok("").table_owner, TableOwner::Auto);
    EXPECT_EQ(map_ok("TABLE_OWNER = \"auto\"").table_owner, TableOwner::Auto);
    EXPECT_EQ(map_ok("TABLE_OWNER = \"1\"").table_owner, TableOwner::On);
    EXPECT_EQ(map_ok("TABLE_OWNER = \"0\"").table_owner, TableOwner::Off);
    EXPECT_EQ(bad("TABLE_OWNER", "yes"),
              "smtpfence.conf:1: TABLE_OWNER: bad value \"yes\": expected \"auto\" (when the "
              "kernel has persistent owned tables), \"1\" or \"0\"");
    for (const char* v : {"", "on", "2", "-1"})
        EXPECT_NE(bad("TABLE_OWNER", v).find("TABLE_OWNER: bad value"), std::string::npos) << v;
}

TEST(Policy, DirectAdminAttemptWeight) {
    EXPECT_EQ(map_ok("DA_ATTEMPT_WEIGHT = \"0\"").da_attempt_weight, 0U);
    EXPECT_EQ(map_ok("DA_ATTEMPT_WEIGHT = \"3\"").da_attempt_weight, 3U);
    EXPECT_EQ(map_ok("DA_ATTEMPT_WEIGHT = \"1000\"").da_attempt_weight, 1000U);
    EXPECT_EQ(bad("DA_ATTEMPT_WEIGHT", "1001"),
              "smtpfence.conf:1: DA_ATTEMPT_WEIGHT: bad value \"1001\": expected a number from 0 "
              "to 1000");
    for (const char* v : {"", "-1", "1.5", "two", " 2", "99999999999999999999"}) {
        EXPECT_NE(bad("DA_ATTEMPT_WEIGHT", v).find("expected a number from 0 to 1000"),
                  std::string::npos)
            << v;
    }
}

TEST(Policy, DirectAdminBlockCracking) {
    EXPECT_TRUE(map_ok("DA_BLOCK_CRACKING = \"1\"").da_block_cracking);
    EXPECT_FALSE(map_ok("DA_BLOCK_CRACKING = \"0\"").da_block_cracking);
    EXPECT_EQ(bad("DA_BLOCK_CRACKING", "on"),
              "smtpfence.conf:1: DA_BLOCK_CRACKING: bad value \"on\": expected \"0\" or \"1\"");
}

TEST(Policy, DirectAdminKeysTogetherAndTheirLines) {
    auto loaded =
        map("DA_PIPELINE = \"0\"\nDA_ATTEMPT_WEIGHT = \"5\"\nDA_BLOCK_CRACKING = \"1\"\n"
            "DA_ATTEMPT_WEIGHT2 = \"5\"\n");
    ASSERT_FALSE(loaded);
    EXPECT_EQ(loaded.error().what, "smtpfence.conf:4");
    EXPECT_EQ(loaded.error().detail,
              "unknown setting \"DA_ATTEMPT_WEIGHT2\" (did you mean DA_ATTEMPT_WEIGHT?)");
    const Policy p =
        map_ok("DA_PIPELINE = \"1\"\nDA_ATTEMPT_WEIGHT = \"5\"\nDA_BLOCK_CRACKING = \"1\"\n");
    EXPECT_EQ(p.da_pipeline, DaPipeline::On);
    EXPECT_EQ(p.da_attempt_weight, 5U);
    EXPECT_TRUE(p.da_block_cracking);
}

// Relay exceptions as "TEXT @ORIGIN", for one comparison.
std::vector<std::string> exceptions_of(const Policy& p) {
    std::vector<std::string> out;
    for (const DestException& e : p.allow_dest)
        out.push_back(e.text() + " @" + e.origin);
    return out;
}

TEST(Policy, RelayExceptionKeysDefaults) {
    const Policy p = map_ok("");
    EXPECT_TRUE(p.allow_dest.empty());
    EXPECT_EQ(p.dest_ttl_min, std::chrono::seconds(30));
    EXPECT_EQ(p.dest_ttl_max, std::chrono::seconds(3600));
    EXPECT_EQ(p.dest_grace, std::chrono::seconds(900));
}

TEST(Policy, AllowDest) {
    auto loaded =
        map("# relays\n"
            "SMTP_ALLOWDEST = \"alice=smtp.sendgrid.net:587, %webmail=198.51.100.0/24,"
            "*=SMTP.example-relay.net:587  bob=[2001:db8::25]:25,,1001=2001:db8::/32\t"
            "%2000=192.0.2.1 alice=smtp.sendgrid.net:587\"\n");
    ASSERT_TRUE(loaded) << loaded.error().message();
    EXPECT_EQ(exceptions_of(loaded->policy),
              (std::vector<std::string>{
                  "alice to smtp.sendgrid.net:587 @smtpfence.conf:2",
                  "group webmail to 198.51.100.0/24 @smtpfence.conf:2",
                  "everyone to smtp.example-relay.net:587 @smtpfence.conf:2",
                  "bob to [2001:db8::25]:25 @smtpfence.conf:2",
                  "1001 to 2001:db8::/32 @smtpfence.conf:2",
                  "group 2000 to 192.0.2.1 @smtpfence.conf:2",
              }));
    EXPECT_EQ(loaded->policy.allow_dest[2].who, (Subject{SubjectKind::Everyone, ""}));
    EXPECT_EQ(loaded->warnings,
              (std::vector<std::string>{"smtpfence.conf:2: SMTP_ALLOWDEST: \"alice to "
                                        "smtp.sendgrid.net:587\" is listed more than once"}));
    EXPECT_TRUE(map_ok("SMTP_ALLOWDEST = \"\"").allow_dest.empty());
}

TEST(Policy, BadAllowDestNamesFileLineKeyAndEntry) {
    const std::string who_problem =
        " is not a user, %group (names or numeric ids up to 4294967294) or *";
    const struct {
        std::string value;
        std::string entry;  // the entry named
        std::string problem;
    } cases[] = {
        {"alice=smtp.example.com:0", "alice=smtp.example.com:0",
         "port 0 is out of range (1-65535)"},
        {"alice=a.example, smtp.example.com:587", "smtp.example.com:587",
         "expected WHO=HOST[:PORT] (WHO: a user, %group or * for everyone)"},
        {"%=a.example", "%=a.example", "\"%\"" + who_problem},
        {"4294967295=a.example", "4294967295=a.example", "\"4294967295\"" + who_problem},
        {"=a.example", "=a.example", "\"\"" + who_problem},
        {"*=0.0.0.0/0", "*=0.0.0.0/0",
         "a /0 network covers every address; to let an account reach any host, use "
         "`smtpfencectl allow USER` (or --group GROUP) instead"},
        {"bob=2001:db8:1:2:3:4:5:6:25", "bob=2001:db8:1:2:3:4:5:6:25",
         "an IPv6 address with a port needs brackets: [2001:db8:1:2:3:4:5:6]:25"},
        {"bob=", "bob=", "empty (expected HOST[:PORT])"},
    };
    for (const auto& c : cases) {
        EXPECT_EQ(bad("SMTP_ALLOWDEST", c.value),
                  "smtpfence.conf:1: SMTP_ALLOWDEST: entry \"" + c.entry + "\": " + c.problem);
    }
    EXPECT_EQ(map_error("# c\nSMTP_ALLOWDEST = \"alice=a.example:587 bob=b\x01.example\"\n"),
              "smtpfence.conf:2: SMTP_ALLOWDEST: entry \"bob=b\\x01.example\": control "
              "characters are not allowed");
}

TEST(Policy, DestTimes) {
    const Policy p = map_ok("DEST_TTL_MIN = \"5\"\nDEST_TTL_MAX = \"86400\"\nDEST_GRACE = \"0\"\n");
    EXPECT_EQ(p.dest_ttl_min, std::chrono::seconds(5));
    EXPECT_EQ(p.dest_ttl_max, std::chrono::seconds(86400));
    EXPECT_EQ(p.dest_grace, std::chrono::seconds(0));
    EXPECT_EQ(map_ok("DEST_TTL_MIN = \"60\"\nDEST_TTL_MAX = \"60\"\n").dest_ttl_max,
              std::chrono::seconds(60));
    EXPECT_EQ(bad("DEST_TTL_MIN", "0"),
              "smtpfence.conf:1: DEST_TTL_MIN: bad value \"0\": expected a number from 1 to 86400");
    EXPECT_EQ(bad("DEST_TTL_MAX", "86401"),
              "smtpfence.conf:1: DEST_TTL_MAX: bad value \"86401\": expected a number from 1 to "
              "86400");
    EXPECT_EQ(bad("DEST_GRACE", "15m"),
              "smtpfence.conf:1: DEST_GRACE: bad value \"15m\": expected a number from 0 to 86400");
}

TEST(Policy, MetricsTextfile) {
    EXPECT_FALSE(Policy{}.metrics_textfile);
    EXPECT_EQ(map_ok("METRICS_TEXTFILE = \"/srv/m/a.prom\"\n").metrics_textfile, "/srv/m/a.prom");
    EXPECT_EQ(map_ok("METRICS_TEXTFILE = \"\"\n").metrics_textfile, "");
    for (const char* v : {"smtpfence.prom", "/var/lib/x/smtpfence.txt", "/var/lib/x/.prom", "/"}) {
        EXPECT_EQ(bad("METRICS_TEXTFILE", v),
                  std::string("smtpfence.conf:1: METRICS_TEXTFILE: bad value \"") + v +
                      "\": expected an absolute path ending in .prom, or \"\" for none");
    }
}

TEST(Policy, LocalAlertSettings) {
    const Policy d = map_ok("");
    EXPECT_EQ(d.alert.attempts, 0U);
    EXPECT_EQ(d.alert.interval, std::chrono::seconds(600));
    EXPECT_EQ(d.alert.command, "");
    EXPECT_EQ(d.alert.email, "");
    const Policy p = map_ok(
        "ALERT_ATTEMPTS = \"1000000\"\nALERT_INTERVAL = \"60\"\nALERT_COMMAND = \"/bin/true\"\n"
        "ALERT_EMAIL = \"root@localhost\"\n");
    EXPECT_EQ(p.alert.attempts, 1000000U);
    EXPECT_EQ(p.alert.interval, std::chrono::seconds(60));
    // The program itself, links resolved (/bin is a link to /usr/bin on Debian 12).
    EXPECT_EQ(p.alert.command, std::filesystem::canonical("/bin/true").string());
    EXPECT_EQ(p.alert.email, "root@localhost");
    EXPECT_EQ(map_ok("ALERT_EMAIL = \"root\"").alert.email, "root");
    EXPECT_EQ(map_ok("ALERT_ATTEMPTS = \"0\"").alert.attempts, 0U);
    EXPECT_EQ(map_ok("ALERT_INTERVAL = \"86400\"").alert.interval, std::chrono::seconds(86400));
    EXPECT_EQ(bad("ALERT_ATTEMPTS", "1000001"),
              "smtpfence.conf:1: ALERT_ATTEMPTS: bad value \"1000001\": expected 0 (off) or a "
              "number from 1 to 1000000");
    EXPECT_EQ(bad("ALERT_INTERVAL", "59"),
              "smtpfence.conf:1: ALERT_INTERVAL: bad value \"59\": expected a number from 60 to "
              "86400");
    EXPECT_EQ(bad("ALERT_COMMAND", "notify.sh"),
              "smtpfence.conf:1: ALERT_COMMAND: bad value \"notify.sh\": expected the absolute "
              "path of a program (run without a shell, no arguments)");
    // Missing now: a warning, the rest of the configuration stays in force.
    auto missing = map("ALERT_COMMAND = \"/bin/true --now\"\n");
    ASSERT_TRUE(missing) << missing.error().message();
    EXPECT_EQ(missing->policy.alert.command, "/bin/true --now");
    ASSERT_EQ(missing->warnings.size(), 1U);
    EXPECT_EQ(missing->warnings[0],
              "smtpfence.conf:1: ALERT_COMMAND: No such file or directory: an alert runs it once "
              "it is there (/bin/true --now)");
    // Run as root: a program others could change is refused, and so is one in a folder
    // they could change (/tmp).
    const std::string dir = ::testing::TempDir() + "/alert-cmd";
    std::filesystem::create_directories(dir);
    const std::string script = dir + "/notify";
    { std::ofstream(script) << "#!/bin/sh\n"; }
    std::filesystem::permissions(script, std::filesystem::perms(0775));
    EXPECT_NE(bad("ALERT_COMMAND", script).find("expected a program only root can change"),
              std::string::npos)
        << bad("ALERT_COMMAND", script);
    std::filesystem::permissions(script, std::filesystem::perms(0755));
    std::filesystem::permissions(dir, std::filesystem::perms(0755));
    const std::string refused = bad("ALERT_COMMAND", script);
    EXPECT_NE(refused.find("is not owned by root or is writable by others"), std::string::npos)
        << refused;  // /tmp itself, mode 1777
    std::filesystem::remove_all(dir);
    EXPECT_EQ(bad("ALERT_COMMAND", "/etc/passwd"),
              "smtpfence.conf:1: ALERT_COMMAND: bad value \"/etc/passwd\": expected an executable "
              "file");
    EXPECT_EQ(bad("ALERT_COMMAND", "/bin"),
              "smtpfence.conf:1: ALERT_COMMAND: bad value \"/bin\": expected an executable file");
    for (const char* address : {"root@", "@localhost", "a b", "root,admin", "<root>",
                                "root@local..", "root@.x", "r\"oot"}) {
        EXPECT_NE(bad("ALERT_EMAIL", address).find("expected one mail address"), std::string::npos)
            << address;
    }
}

TEST(Policy, DestTtlMaxBelowMinBlamesTheLaterLine) {
    EXPECT_EQ(map_error("DEST_TTL_MIN = \"600\"\nDEST_TTL_MAX = \"300\"\n"),
              "smtpfence.conf:2: DEST_TTL_MAX: 300 is below DEST_TTL_MIN (600)");
    EXPECT_EQ(map_error("DEST_TTL_MAX = \"300\"\nDEST_TTL_MIN = \"600\"\n"),
              "smtpfence.conf:2: DEST_TTL_MIN: 600 is above DEST_TTL_MAX (300)");
    EXPECT_EQ(map_error("# c\nDEST_TTL_MIN = \"7200\"\n"),
              "smtpfence.conf:2: DEST_TTL_MIN: 7200 is above DEST_TTL_MAX (3600, the default)");
    EXPECT_EQ(map_error("DEST_TTL_MAX = \"10\"\n"),
              "smtpfence.conf:1: DEST_TTL_MAX: 10 is below DEST_TTL_MIN (30, the default)");
}

}  // namespace
}  // namespace smtpfence
