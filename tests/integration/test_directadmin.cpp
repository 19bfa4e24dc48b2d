// DirectAdmin's pipeline end to end: a real uid's connect() in a namespace, refused by
// the kernel, explained by the worker, and written as Exim would into a temporary
// directory standing in for /etc/virtual: the usage count, the .bytes line with the
// script's folder, and one limit notice when the count reaches the limit.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using nlohmann::json;

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::uintmax_t size_of(const std::string& path) {
    std::error_code ec;
    const auto n = std::filesystem::file_size(path, ec);
    return ec ? 0 : n;
}

std::size_t count_of(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
        ++n;
    return n;
}

class DirectAdminTest : public FenceTest {
  protected:
    void SetUp() override {
        FenceTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        virtual_dir_ = dir_->path() + "/virtual";
        std::filesystem::create_directories(virtual_dir_);
        // bob's script folder, as on a DirectAdmin server.
        script_dir_ = dir_->path() + "/home/bob/domains/shop.example/public_html";
        std::filesystem::create_directories(script_dir_);
        for (std::string d = script_dir_; d.size() > dir_->path().size();
             d = std::filesystem::path(d).parent_path())
            ::chmod(d.c_str(), 0755);
    }

    // Waits until the worker takes SYNs, so that attempts are explained, not only counted.
    void wait_for_worker() {
        const bool bound = wait_until(
            [&] {
                const RunResult r =
                    run(topo_->server, {smtpfencectl_path(), "--socket",
                                        dir_->path() + "/control.sock", "status", "--json"});
                const json j = json::parse(r.out, nullptr, false);
                return !j.is_discarded() && j.contains("worker") &&
                       j["worker"].value("ready", false);
            },
            10s, 100ms);
        ASSERT_TRUE(bound) << diagnostics();
    }

    // telnet to the remote port 25 as bob, from his script folder.
    void bob_telnets() {
        const RunResult r = run(
            topo_->server,
            {"sh", "-c",
             "cd '" + script_dir_ + "' && exec telnet " + std::string(Topology::kRemote4) + " 25"},
            kBob);
        EXPECT_TRUE(r.output().find("Connection refused") != std::string::npos) << r.describe();
    }

    std::string virtual_dir_;
    std::string script_dir_;
};

TEST_F(DirectAdminTest, ARefusedConnectCountsLikeASendAndTheLimitNoticeFiresOnce) {
    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\nDA_PIPELINE = \"auto\"\n"));
    // DirectAdmin's per-user limit for bob: 3 sends a day. Exim already sent 1 today.
    std::ofstream(virtual_dir_ + "/limit_bob") << "3\n";
    std::filesystem::create_directories(virtual_dir_ + "/usage");
    std::ofstream(virtual_dir_ + "/usage/bob") << "1";
    ASSERT_NO_FATAL_FAILURE(wait_for_worker());

    const std::string usage = virtual_dir_ + "/usage/bob";
    for (int i = 0; i < 3; ++i)
        bob_telnets();
    const bool counted = wait_until([&] { return size_of(usage) >= 4; }, 10s, 100ms);
    ASSERT_TRUE(counted) << "usage/bob is " << size_of(usage) << " bytes\n" << diagnostics();
    std::this_thread::sleep_for(1500ms);  // nothing more may come
    EXPECT_EQ(size_of(usage), 4U) << "1 send by Exim + 3 attempts";
    EXPECT_EQ(slurp(usage), "1111");

    const std::string bytes = slurp(virtual_dir_ + "/usage/bob.bytes");
    EXPECT_EQ(count_of(bytes, "method=direct_out"), 3U) << bytes;
    EXPECT_EQ(count_of(bytes, "&path=" + script_dir_ + "\n"), 3U) << bytes;

    // The count went 1 -> 4 past the limit 3: exactly one notice, naming bob.
    const bool noticed = wait_until(
        [&] {
            return slurp(virtual_dir_ + "/mail_task.queue").find("action=limit") !=
                   std::string::npos;
        },
        5s, 100ms);
    ASSERT_TRUE(noticed) << diagnostics();
    std::this_thread::sleep_for(2500ms);  // past the sink's settle delay
    const std::string queue = slurp(virtual_dir_ + "/mail_task.queue");
    EXPECT_EQ(count_of(queue, "action=limit&username=bob&"), 1U) << queue;
    EXPECT_EQ(count_of(queue, "\n"), 1U) << queue;
    EXPECT_TRUE(queue.find("&limit=3&") != std::string::npos) << queue;

    // alice has no usage: nothing was written for her, and status says the sink is on.
    EXPECT_FALSE(std::filesystem::exists(virtual_dir_ + "/usage/alice"));
    const RunResult status = run(
        topo_->server, {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock", "status"});
    EXPECT_TRUE(status.out.find("DirectAdmin pipeline: on") != std::string::npos)
        << status.describe();
}

TEST_F(DirectAdminTest, DaPipelineZeroWritesNothing) {
    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"1\"\nDA_PIPELINE = \"0\"\n"));
    ASSERT_NO_FATAL_FAILURE(wait_for_worker());
    bob_telnets();
    // The attempt is recorded in the attempt log, never in /etc/virtual.
    const bool logged = wait_until(
        [&] {
            return slurp(dir_->path() + "/state/attempts.jsonl").find("\"bob\"") !=
                   std::string::npos;
        },
        10s, 100ms);
    EXPECT_TRUE(logged) << diagnostics();
    EXPECT_TRUE(std::filesystem::is_empty(virtual_dir_));
    const RunResult status = run(
        topo_->server, {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock", "status"});
    EXPECT_TRUE(status.out.find("DirectAdmin pipeline: off") != std::string::npos)
        << status.describe();
}

}  // namespace
}  // namespace smtpfence::itest
