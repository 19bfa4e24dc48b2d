#include "tests/integration/fence_test.h"

#include <unistd.h>

#include <atomic>
#include <stdexcept>

namespace smtpfence::itest {

const char* const kTestPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "mail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n"
    "Debian-exim:x:101:103::/var/spool/exim4:/usr/sbin/nologin\n"
    "alice:x:2001:2001:Alice:/home/alice:/bin/sh\n"
    "bob:x:2002:2002:Bob:/home/bob:/bin/sh\n"
    "carol:x:2003:2003:Carol:/home/carol:/bin/sh\n"
    "dave:x:2004:3000:Dave:/home/dave:/bin/sh\n"
    "erin:x:2005:8:Erin:/home/erin:/bin/sh\n";

const char* const kTestGroup =
    "root:x:0:\n"
    "mail:x:8:\n"
    "Debian-exim:x:103:\n"
    "alice:x:2001:\n"
    "bob:x:2002:\n"
    "carol:x:2003:\n"
    "webmail:x:3000:carol\n";

std::string unique_table_name() {
    static std::atomic<unsigned> counter{0};
    return "sft_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

void FenceTest::SetUp() {
    if (auto why = skip_reason())
        GTEST_SKIP() << *why;
    table_ = unique_table_name();
    auto dir = TempDir::create();
    ASSERT_TRUE(dir) << dir.error().message();
    dir_ = std::make_unique<TempDir>(std::move(*dir));
    passwd_path_ = dir_->write("passwd", kTestPasswd);
    group_path_ = dir_->write("group", kTestGroup);
    config_path_ = dir_->path() + "/smtpfence.conf";
    auto topo = Topology::create();
    ASSERT_TRUE(topo) << topo.error().message();
    topo_ = std::make_unique<Topology>(std::move(*topo));
    auto smtp = SmtpListener::start(topo_->remote, kRemotePorts, kRemoteHost);
    ASSERT_TRUE(smtp) << smtp.error().message();
    remote_smtp_ = std::make_unique<SmtpListener>(std::move(*smtp));
}

void FenceTest::write_config(const std::string& text) {
    (void)dir_->write("smtpfence.conf", text);
}

void FenceTest::start_daemon(const std::string& config, std::vector<std::string> extra,
                             std::vector<std::string> env) {
    write_config(config);
    DaemonArgs args;
    args.table = table_;
    args.config = config_path_;
    args.passwd = passwd_path_;
    args.group = group_path_;
    args.work_dir = dir_->path();
    args.extra = std::move(extra);
    args.env = std::move(env);
    auto daemon = Daemon::start(topo_->server, std::move(args));
    ASSERT_TRUE(daemon) << daemon.error().message();
    daemon_ = std::make_unique<Daemon>(std::move(*daemon));
}

ConnectResult FenceTest::connect(const Credentials& who, const std::string& address,
                                 std::uint16_t port) const {
    return connect_as(topo_->server, who, address, port);
}

void FenceTest::expect_refused(const Credentials& who, const std::string& address,
                               std::uint16_t port) {
    const ConnectResult r = connect(who, address, port);
    EXPECT_EQ(r.outcome, Outcome::Refused) << who.name << " (uid " << who.uid << ") -> " << address
                                           << " port " << port << ": " << r.describe() << "\n"
                                           << diagnostics();
    if (r.outcome == Outcome::Refused) {
        EXPECT_LT(r.elapsed, 500ms) << who.name << " -> " << address << " port " << port
                                    << ": refusal was not immediate: " << r.describe() << "\n"
                                    << diagnostics();
    }
}

void FenceTest::expect_connected(const Credentials& who, const std::string& address,
                                 std::uint16_t port, const std::string& host) {
    const ConnectResult r = connect(who, address, port);
    EXPECT_EQ(r.outcome, Outcome::Connected)
        << who.name << " (uid " << who.uid << ") -> " << address << " port " << port << ": "
        << r.describe() << "\n"
        << diagnostics();
    if (r.outcome == Outcome::Connected) {
        EXPECT_EQ(r.greeting, SmtpListener::greeting_for(host))
            << who.name << " -> " << address << " port " << port;
    }
}

nft::Engine& FenceTest::server_engine() {
    if (!engine_) {
        auto engine = NsEngine::open(topo_->server);
        // Thrown, not asserted: gtest turns it into a failure of the calling test.
        if (!engine)
            throw std::runtime_error(engine.error().message());
        engine_ = std::move(*engine);
    }
    return engine_->engine();
}

std::string FenceTest::diagnostics() {
    std::string s;
    if (topo_) {
        auto listing = nft_list_table(topo_->server, table_);
        s += "--- nft list table inet " + table_ + ":\n" +
             (listing ? *listing : listing.error().message()) + "\n";
    }
    if (daemon_)
        s += "--- smtpfenced log:\n" + daemon_->log();
    return s;
}

}  // namespace smtpfence::itest
