// The daemon's answers to control requests, for a given policy and state, against a
// fake kernel: status, list, check, allow/deny, reload and remove (attempts and top:
// test_history_query.cpp), and
// who may ask for a change under CONTROL_ADMIN_GROUP and CONTROL_READ.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "ctl/connect_test.h"
#include "tests/unit/daemon_fixture.h"

namespace smtpfence {
namespace {

using ctl::Command;
using ctl::ErrorCode;
using nlohmann::json;
using testing::DaemonPartsTest;

class HandlersTest : public DaemonPartsTest {
  protected:
    [[nodiscard]] std::vector<std::string> managed_users() const {
        return load_managed_allow(dir.path() + "/allow.list").value_or(ManagedAllow{}).users;
    }
};

std::vector<std::uint32_t> ids_of(const json& entries, const char* key) {
    std::vector<std::uint32_t> out;
    for (const json& e : entries)
        out.push_back(e.at(key).get<std::uint32_t>());
    return out;
}

TEST_F(HandlersTest, VersionNamesTheProtocol) {
    const Answer a = ask(Command::Version);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->at("protocol"), ctl::kProtocolVersion);
    EXPECT_TRUE(a->at("version").is_string());
}

TEST_F(HandlersTest, WithoutAPolicyOnlyStatusAnswers) {
    for (const Command c : {Command::List, Command::Check, Command::Allow, Command::Deny}) {
        const Answer a = ask_user(c, "alice");
        ASSERT_FALSE(a.has_value()) << ctl::to_string(c);
        EXPECT_EQ(a.error().code, ErrorCode::Failed);
        EXPECT_EQ(a.error().message, "no policy loaded");
    }
    const Answer s = ask(Command::Status);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->at("enforcing"), false);
    EXPECT_EQ(s->at("summary"), "no policy loaded");
    EXPECT_EQ(s->at("table").at("present"), false);
    EXPECT_FALSE(s->contains("config"));
    EXPECT_FALSE(s->contains("counters"));
    EXPECT_EQ(s->at("worker").at("wanted"), false);
}

TEST_F(HandlersTest, StatusWhileEnforcing) {
    ASSERT_NO_FATAL_FAILURE(load());
    // Two refused SYNs of alice, as the kernel's blocked set counts them.
    const std::uint32_t alice = 1001;
    const std::vector<std::uint8_t> key(reinterpret_cast<const std::uint8_t*>(&alice),
                                        reinterpret_cast<const std::uint8_t*>(&alice) + 4);
    kernel.tables["smtpfence"].sets["blocked"].elements[key] = 2;
    const Answer a = ask(Command::Status);
    ASSERT_TRUE(a.has_value());
    const json& s = *a;
    EXPECT_EQ(s.at("enforcing"), true);
    EXPECT_EQ(s.at("summary"), describe(*state.current));
    EXPECT_EQ(
        s.at("table"),
        json({{"family", "inet"}, {"name", "smtpfence"}, {"present", true}, {"owned", false}}));
    EXPECT_FALSE(s.contains("problem"));
    EXPECT_FALSE(s.contains("config_error"));
    EXPECT_EQ(s.at("config"), options.config_path);
    EXPECT_EQ(s.at("allow_list"), dir.path() + "/allow.list");
    EXPECT_EQ(s.at("ports"), json({25, 465, 587}));
    EXPECT_EQ(s.at("action"), "reject");
    EXPECT_EQ(s.at("allowed"), json({{"uids", 2}, {"gids", 1}}));  // root, mail; group mail
    EXPECT_EQ(s.at("queue").at("mode"), "native");
    EXPECT_EQ(s.at("queue").at("num"), 2525);
    EXPECT_EQ(s.at("counters"), json({{"uids_blocked", 1}, {"attempts", 2}}));
    EXPECT_EQ(s.at("self_heal"), json({{"events", false}, {"restored", 0}, {"failed", 0}}));
    EXPECT_EQ(s.at("worker").at("running"), false);
    EXPECT_EQ(s.at("worker").at("wanted"), false);  // --no-worker
    EXPECT_EQ(s.at("directadmin").at("reason"), "off: --no-worker (nothing is recorded)");
    EXPECT_EQ(s.at("csf").at("mode"), false);
    EXPECT_EQ(s.at("control").at("socket"), options.control_socket);
    EXPECT_EQ(s.at("applied_at"), state.applied_at);
}

TEST_F(HandlersTest, StatusSaysWhenTheTableIsGoneOrTheConfigBroken) {
    ASSERT_NO_FATAL_FAILURE(load());
    kernel.tables.clear();
    state.input_error = InputError{"smtpfence.conf:3: bad value", 1234, false};
    const Answer a = ask(Command::Status);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->at("table").at("present"), false);
    EXPECT_EQ(a->at("problem"),
              "the table is missing from the kernel (flushed by hand?); `smtpfencectl reload` "
              "puts it back");
    EXPECT_EQ(a->at("config_error"), json({{"message", "smtpfence.conf:3: bad value"},
                                           {"since", 1234},
                                           {"in_force", "the last configuration that loaded"}}));
    EXPECT_FALSE(a->contains("counters"));
}

TEST_F(HandlersTest, ListGivesEachEntryItsNameAndReason) {
    dir.write("allow.list", "user bob\n");
    ASSERT_NO_FATAL_FAILURE(load("SMTP_ALLOWUSER = \"1003\"\n"));
    const Answer a = ask(Command::List);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(ids_of(a->at("uids"), "uid"), (std::vector<std::uint32_t>{0, 8, 1002, 1003}));
    EXPECT_EQ(a->at("uids")[0],
              json({{"uid", 0}, {"name", "root"}, {"reason", "root (always allowed)"}}));
    EXPECT_EQ(a->at("uids")[1].at("reason"), "MTA user mail");
    EXPECT_EQ(a->at("uids")[2],
              json({{"uid", 1002}, {"name", "bob"}, {"reason", "smtpfencectl allow bob"}}));
    EXPECT_EQ(a->at("uids")[3].at("reason"), "SMTP_ALLOWUSER uid 1003");
    EXPECT_EQ(a->at("gids"),
              json::array({{{"gid", 8}, {"name", "mail"}, {"reason", "SMTP_ALLOWGROUP mail"}}}));
    EXPECT_EQ(a->at("managed"), json({{"file", dir.path() + "/allow.list"},
                                      {"users", {"bob"}},
                                      {"groups", json::array()}}));
    EXPECT_EQ(a->at("enforcing"), true);
}

TEST_F(HandlersTest, CheckExplainsWhyAUserIsBlockedOrNot) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer alice = ask_user(Command::Check, "alice");
    ASSERT_TRUE(alice.has_value());
    EXPECT_EQ(alice->at("uid"), 1001);
    EXPECT_EQ(alice->at("blocked"), true);
    EXPECT_EQ(alice->at("reason"),
              "blocked: not root, not an MTA user, not in SMTP_ALLOWUSER or " + dir.path() +
                  "/allow.list, no allowed group; connections to remote ports 25,465,587 are "
                  "refused (this server's own addresses are allowed)");
    const Answer mail = ask_user(Command::Check, "8");  // a uid names the user too
    ASSERT_TRUE(mail.has_value());
    EXPECT_EQ(mail->at("user"), "mail");
    EXPECT_EQ(mail->at("blocked"), false);
    EXPECT_EQ(mail->at("reason"), "allowed: MTA user mail");

    const Answer nobody = ask_user(Command::Check, "nobody\n");
    ASSERT_FALSE(nobody.has_value());
    EXPECT_EQ(nobody.error().code, ErrorCode::NotFound);
    EXPECT_EQ(nobody.error().message, "no user \"nobody\\x0a\" in " + options.passwd_path);
}

TEST_F(HandlersTest, CheckWhileNothingIsEnforced) {
    ASSERT_NO_FATAL_FAILURE(load("SMTP_BLOCK = \"0\"\nDROP_OUT = \"DROP\"\n"));
    EXPECT_EQ(table(), nullptr);
    const Answer a = ask_user(Command::Check, "alice");
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->at("blocked"), false);
    EXPECT_EQ(a->at("reason"),
              "nothing is enforced: SMTP_BLOCK is \"0\" in " + options.config_path);
}

TEST_F(HandlersTest, AllowAndDenyChangeTheFileAndTheKernelSet) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer allowed = ask_user(Command::Allow, "alice");
    ASSERT_TRUE(allowed.has_value()) << allowed.error().message;
    EXPECT_EQ(*allowed, json({{"kind", "user"},
                              {"name", "alice"},
                              {"changed", true},
                              {"file", dir.path() + "/allow.list"},
                              {"enforcing", true}}));
    EXPECT_EQ(managed_users(), std::vector<std::string>{"alice"});
    EXPECT_EQ(table()->sets.at("allow_uid").u32_elements(),
              (std::vector<std::uint32_t>{0, 8, 1001}));
    EXPECT_EQ(ask_user(Command::Check, "alice")->at("reason"), "allowed: smtpfencectl allow alice");
    EXPECT_EQ(ask_user(Command::Allow, "alice")->at("changed"), false);

    const Answer denied = ask_user(Command::Deny, "alice");
    ASSERT_TRUE(denied.has_value());
    EXPECT_EQ(denied->at("changed"), true);
    EXPECT_FALSE(denied->contains("still_allowed"));
    EXPECT_EQ(table()->sets.at("allow_uid").u32_elements(), (std::vector<std::uint32_t>{0, 8}));
    EXPECT_EQ(ask_user(Command::Check, "alice")->at("blocked"), true);
}

// allow/deny/check/list with "to", on addresses and networks (names need DNS: the
// root tests in tests/integration/test_relay.cpp).
class ExceptionHandlersTest : public HandlersTest {
  protected:
    [[nodiscard]] Answer change(Command command, const std::string& who, const std::string& to) {
        ctl::Request r;
        r.command = command;
        if (who == "*")
            r.everyone = true;
        else if (who.starts_with("%"))
            r.group = who.substr(1);
        else
            r.user = who;
        r.to = to;
        return handlers.answer(r);
    }
    [[nodiscard]] Answer check_to(const std::string& user, const std::string& to) {
        ctl::Request r;
        r.command = Command::Check;
        r.user = user;
        r.to = to;
        return handlers.answer(r);
    }
    [[nodiscard]] std::size_t elements(const char* set) const {
        return table()->sets.at(set).elements.size();
    }
};

TEST_F(ExceptionHandlersTest, AllowToANetworkIsStoredAppliedAndChecked) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer added = change(Command::Allow, "alice", "198.51.100.0/24:587");
    ASSERT_TRUE(added.has_value()) << added.error().message;
    EXPECT_EQ(*added, json({{"kind", "exception"},
                            {"name", "alice to 198.51.100.0/24:587"},
                            {"changed", true},
                            {"file", dir.path() + "/allow.list"},
                            {"enforcing", true}}));
    EXPECT_EQ(elements("dest_uid4"), 1U);
    EXPECT_EQ(elements("dest_uid6"), 0U);
    const auto managed = load_managed_allow(dir.path() + "/allow.list");
    ASSERT_TRUE(managed.has_value());
    ASSERT_EQ(managed->exceptions.size(), 1U);
    EXPECT_EQ(managed->exceptions[0].text(), "alice to 198.51.100.0/24:587");
    // The whole uid stays blocked: an exception is not an allowlist entry.
    EXPECT_EQ(table()->sets.at("allow_uid").u32_elements(), (std::vector<std::uint32_t>{0, 8}));

    const Answer in = check_to("alice", "198.51.100.7:587");
    ASSERT_TRUE(in.has_value());
    EXPECT_EQ(in->at("blocked"), false);
    EXPECT_EQ(in->at("reason"), "allowed by exception alice to 198.51.100.0/24:587");
    EXPECT_EQ(in->at("exceptions"), json::array({"alice to 198.51.100.0/24:587"}));
    const Answer other_port = check_to("alice", "198.51.100.7:25");
    EXPECT_EQ(other_port->at("blocked"), true);
    EXPECT_EQ(other_port->at("reason"),
              "blocked: no exception lets alice reach 198.51.100.7 on port 25");
    // Without a port: every guarded port must be covered.
    const Answer every = check_to("alice", "198.51.100.7");
    EXPECT_EQ(every->at("blocked"), true);
    EXPECT_EQ(every->at("reason"),
              "blocked: no exception lets alice reach 198.51.100.7 on port 25, 465 (partly "
              "covered by alice to 198.51.100.0/24:587)");
    EXPECT_EQ(check_to("bob", "198.51.100.7:587")->at("blocked"), true);
    EXPECT_EQ(check_to("alice", "203.0.113.5:587")->at("blocked"), true);
    // A name no exception names is not looked up.
    EXPECT_EQ(check_to("alice", "relay.test:587")->at("reason"),
              "blocked: no exception names relay.test (smtpfenced looks up only the names of "
              "exceptions; give an address to ask about one)");

    const Answer list = ask(Command::List);
    ASSERT_TRUE(list.has_value());
    ASSERT_EQ(list->at("exceptions").size(), 1U);
    const json& e = list->at("exceptions")[0];
    EXPECT_EQ(e.at("rule"), "alice to 198.51.100.0/24:587");
    EXPECT_EQ(e.at("who"), "alice");
    EXPECT_EQ(e.at("to"), "198.51.100.0/24:587");
    EXPECT_EQ(e.at("addresses"), json::array({"198.51.100.0/24"}));
    EXPECT_EQ(e.at("uses"), 0);

    EXPECT_EQ(change(Command::Allow, "alice", "198.51.100.0/24:587")->at("changed"), false);
    const Answer removed = change(Command::Deny, "alice", "198.51.100.0/24:587");
    ASSERT_TRUE(removed.has_value());
    EXPECT_EQ(removed->at("changed"), true);
    EXPECT_EQ(elements("dest_uid4"), 0U);
    EXPECT_EQ(check_to("alice", "198.51.100.7:587")->at("blocked"), true);
    EXPECT_EQ(change(Command::Deny, "alice", "198.51.100.0/24:587")->at("changed"), false);
}

TEST_F(ExceptionHandlersTest, GroupsAndEveryoneGoToTheirSets) {
    ASSERT_NO_FATAL_FAILURE(load());
    // admins (gid 50): carol's primary group, dave a member without an account here.
    ASSERT_TRUE(change(Command::Allow, "%admins", "[2001:db8::25]:25").has_value());
    EXPECT_EQ(elements("dest_gid6_host"), 1U);
    EXPECT_EQ(elements("dest_uid6_host"), 1U);  // carol by uid (her primary group)
    EXPECT_EQ(check_to("carol", "[2001:db8::25]:25")->at("blocked"), false);
    EXPECT_EQ(check_to("alice", "[2001:db8::25]:25")->at("blocked"), true);
    ASSERT_TRUE(change(Command::Allow, "*", "192.0.2.25").has_value());
    EXPECT_EQ(elements("dest_all4"), 1U);
    const Answer bob = check_to("bob", "192.0.2.25");
    EXPECT_EQ(bob->at("blocked"), false);
    EXPECT_EQ(bob->at("reason"), "allowed by exception everyone to 192.0.2.25");
}

TEST_F(ExceptionHandlersTest, UnknownSubjectsAreRefusedAndTheConfigsExceptionStays) {
    ASSERT_NO_FATAL_FAILURE(load("SMTP_ALLOWDEST = \"bob=192.0.2.25:587\"\n"));
    const Answer unknown = change(Command::Allow, "alcie", "192.0.2.25");
    ASSERT_FALSE(unknown.has_value());
    EXPECT_EQ(unknown.error().code, ErrorCode::NotFound);
    EXPECT_EQ(unknown.error().message, "no user \"alcie\" in " + options.passwd_path);
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/allow.list"));
    EXPECT_EQ(elements("dest_uid4_host"), 1U);  // bob's, from the config
    const Answer deny = change(Command::Deny, "bob", "192.0.2.25:587");
    ASSERT_TRUE(deny.has_value());
    EXPECT_EQ(deny->at("changed"), false);
    EXPECT_EQ(deny->at("still_allowed").get<std::string>().rfind("SMTP_ALLOWDEST in ", 0), 0U)
        << deny->dump();
    EXPECT_EQ(elements("dest_uid4_host"), 1U);
}

TEST_F(HandlersTest, AllowOfAnUnknownNameIsRefusedAndNothingStored) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer a = ask_user(Command::Allow, "alcie");
    ASSERT_FALSE(a.has_value());
    EXPECT_EQ(a.error().code, ErrorCode::NotFound);
    EXPECT_EQ(a.error().message, "no user \"alcie\" in " + options.passwd_path);
    ctl::Request r;
    r.command = Command::Allow;
    r.group = "mailmen";
    const Answer g = handlers.answer(r);
    ASSERT_FALSE(g.has_value());
    EXPECT_EQ(g.error().message, "no group \"mailmen\" in " + options.group_path);
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/allow.list"));
}

TEST_F(HandlersTest, DenySaysWhatStillAllowsTheUser) {
    ASSERT_NO_FATAL_FAILURE(load("SMTP_ALLOWUSER = \"alice\"\n"));
    const Answer a = ask_user(Command::Deny, "alice");
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->at("changed"), false);
    EXPECT_EQ(a->at("still_allowed"), "SMTP_ALLOWUSER alice");
    ctl::Request r;
    r.command = Command::Deny;
    r.group = "mail";
    const Answer g = handlers.answer(r);
    ASSERT_TRUE(g.has_value());
    EXPECT_EQ(g->at("kind"), "group");
    EXPECT_EQ(g->at("still_allowed"), "SMTP_ALLOWGROUP mail");
}

TEST_F(HandlersTest, AllowThatTheKernelRefusesSaysTheFileWasUpdated) {
    ASSERT_NO_FATAL_FAILURE(load());
    kernel.verdict = [](std::size_t, const nlmsghdr*, std::uint32_t*) { return EPERM; };
    const Answer a = ask_user(Command::Allow, "alice");
    ASSERT_FALSE(a.has_value());
    EXPECT_EQ(a.error().code, ErrorCode::Failed);
    const std::string& m = a.error().message;
    EXPECT_EQ(m.rfind(dir.path() + "/allow.list was updated, but applying it failed: ", 0), 0U)
        << m;
    EXPECT_NE(m.find("(the daemon retries when the file changes or on reload)"), std::string::npos);
    EXPECT_EQ(managed_users(), std::vector<std::string>{"alice"});
    // The state in force is unchanged: alice is still blocked, in the kernel as in check.
    EXPECT_EQ(table()->sets.at("allow_uid").u32_elements(), (std::vector<std::uint32_t>{0, 8}));
    kernel.verdict = [](std::size_t, const nlmsghdr*, std::uint32_t*) { return 0; };
    EXPECT_EQ(ask_user(Command::Check, "alice")->at("blocked"), true);
}

// Changes are for root and CONTROL_ADMIN_GROUP; reading is for them too unless
// CONTROL_READ = "all". The ControlServer applies what adopt() gives it.
TEST_F(HandlersTest, ChangesAreRefusedToANonAdmin) {
    ASSERT_NO_FATAL_FAILURE(load("CONTROL_ADMIN_GROUP = \"admins\"\n"));
    const ctl::AccessPolicy access = control_access(*state.current);
    ctl::Peer carol{.pid = 1, .uid = 1003, .gid = 50, .groups = {}};  // admins: primary
    ctl::Peer dave{.pid = 2, .uid = 1004, .gid = 1004, .groups = {50}};
    ctl::Peer alice{.pid = 3, .uid = 1001, .gid = 1001, .groups = {}};
    EXPECT_EQ(ctl::access_problem(access, carol, Command::Allow), "");
    EXPECT_EQ(ctl::access_problem(access, dave, Command::Deny), "");
    EXPECT_EQ(ctl::access_problem(access, alice, Command::Allow),
              "allow is not allowed for uid 1001: it needs root or a member of gid 50 "
              "(CONTROL_ADMIN_GROUP)");
    EXPECT_NE(ctl::access_problem(access, alice, Command::Status), "");

    ASSERT_NO_FATAL_FAILURE(
        load("CONTROL_ADMIN_GROUP = \"nosuchgroup\"\nCONTROL_READ = \"all\"\n"));
    const ctl::AccessPolicy root_only = control_access(*state.current);
    EXPECT_NE(ctl::access_problem(root_only, carol, Command::Allow), "");
    EXPECT_EQ(ctl::access_problem(root_only, alice, Command::Status), "");
    EXPECT_EQ(ctl::access_problem(root_only, ctl::Peer{}, Command::Allow), "");  // root
}

TEST_F(HandlersTest, ReloadAnswersWithWhatIsInForce) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer ok = ask(Command::Reload);
    ASSERT_TRUE(ok.has_value());
    EXPECT_EQ(*ok, json({{"enforcing", true}, {"description", describe(*state.current)}}));
    reload_result = fail(EINVAL, "smtpfence.conf:1", "unknown key");
    const Answer failed = ask(Command::Reload);
    ASSERT_FALSE(failed.has_value());
    EXPECT_EQ(failed.error().code, ErrorCode::Failed);
    EXPECT_EQ(failed.error().message,
              reload_result.error().message() + "; the rules in force are unchanged");
}

TEST_F(HandlersTest, RemoveDeletesTheTableUntilAReload) {
    ASSERT_NO_FATAL_FAILURE(load());
    const Answer a = ask(Command::Remove);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(*a, json({{"removed", true}, {"table", "smtpfence"}}));
    EXPECT_EQ(table(), nullptr);
    EXPECT_TRUE(state.removed);
    const Answer s = ask(Command::Status);
    EXPECT_EQ(s->at("enforcing"), false);
    EXPECT_EQ(s->at("summary"),
              "the table was removed with `smtpfencectl remove`; `smtpfencectl reload` restores "
              "it");
    EXPECT_FALSE(s->contains("problem"));
    EXPECT_EQ(ask_user(Command::Check, "alice")->at("reason"),
              "nothing is enforced: the table was removed");
    EXPECT_EQ(state.status_line(), "NOT enforcing: the table was removed with smtpfencectl remove");
}

TEST_F(HandlersTest, RemoveThatTheKernelRefusesChangesNothing) {
    ASSERT_NO_FATAL_FAILURE(load());
    kernel.refuse_whole_batch = EPERM;
    const Answer a = ask(Command::Remove);
    ASSERT_FALSE(a.has_value());
    EXPECT_EQ(a.error().code, ErrorCode::Failed);
    EXPECT_FALSE(state.removed);
    EXPECT_NE(table(), nullptr);
}

TEST_F(HandlersTest, ConnectTestOfAnUnknownUserIsRefusedWithoutAFork) {
    ctl::Request r;
    r.command = Command::Test;
    r.user = "nobody";
    r.address = "192.0.2.1";
    auto none = start_connect_test(state, options.passwd_path, r, -1);
    ASSERT_FALSE(none.has_value());
    EXPECT_EQ(none.error().message, "no policy loaded");
    ASSERT_NO_FATAL_FAILURE(load());
    auto unknown = start_connect_test(state, options.passwd_path, r, -1);
    ASSERT_FALSE(unknown.has_value());
    EXPECT_EQ(unknown.error().code, ErrorCode::NotFound);
    EXPECT_EQ(unknown.error().message, "no user \"nobody\" in " + options.passwd_path);
}

}  // namespace
}  // namespace smtpfence
