// The metrics textfile end to end with the real programs from Debian's packages
// (docs/metrics.md): smtpfenced writes it, `promtool check metrics` accepts it, a real
// node_exporter serves it on loopback in the test's server namespace, a real
// prometheus scrapes that, and a PromQL query through its HTTP API returns bob's
// attempts as the kernel counted them. Also: a missing directory is an error shown in
// status and logged once, not at every write.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ctl/metrics.h"
#include "tests/integration/fence_test.h"
#include "tests/integration/harness.h"

namespace smtpfence::itest {
namespace {

using nlohmann::json;
using testing::Argv;

// A long-running program inside ns, its output in log_path; killed with the Child.
Child start_in(const Netns& ns, const std::vector<std::string>& args, const std::string& log_path) {
    const std::string path = testing::find_program(args.front());
    EXPECT_FALSE(path.empty()) << args.front()
                               << " not installed (scripts/install-deps: prometheus, "
                                  "prometheus-node-exporter)";
    std::vector<std::string> argv = args;
    argv.front() = path;
    const Argv c_argv(argv);
    UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    const int log_fd = log.get();
    auto child = testing::spawn_in(ns, [&]() -> int {
        if (::dup2(log_fd, STDOUT_FILENO) < 0 || ::dup2(log_fd, STDERR_FILENO) < 0)
            return 126;
        ::execv(c_argv.ptrs[0], c_argv.ptrs.data());
        return 127;
    });
    EXPECT_TRUE(child.has_value()) << (child ? "" : child.error().message());
    return child ? std::move(*child) : Child();
}

// `promtool check metrics` on the textfile at path (it reads stdin).
RunResult promtool_check(const std::string& path) {
    const UniqueFd input(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    testing::RunOptions options;
    options.input = input.get();
    return run(nullptr, {"promtool", "check", "metrics"}, options);
}

class MetricsTest : public FenceTest {
  protected:
    RunResult ctl(std::vector<std::string> args) {
        args.insert(args.begin(),
                    {smtpfencectl_path(), "--socket", dir_->path() + "/control.sock"});
        return run(topo_->server, args, std::nullopt, 20s);
    }
    json status() {
        const RunResult r = ctl({"status", "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        json j = json::parse(r.out, nullptr, false);
        return j.is_object() ? j : json::object();
    }
    // Bob's packets in the kernel's blocked set.
    std::uint64_t kernel_count(const Credentials& who) {
        auto blocked = server_engine().read_blocked(table_);
        EXPECT_TRUE(blocked.has_value()) << (blocked ? "" : blocked.error().message());
        if (!blocked || !blocked->contains(who.uid))
            return 0;
        return blocked->at(who.uid).packets;
    }
    // An HTTP GET from inside the server namespace.
    std::string get(const std::string& url, const std::vector<std::string>& query = {}) {
        std::vector<std::string> args = {"curl", "-sfG", url};
        for (const std::string& q : query)
            args.insert(args.end(), {"--data-urlencode", q});
        return run(topo_->server, args, std::nullopt, 5s).out;
    }
    // The value of the first series PromQL query returns, "" when none.
    std::string promql(const std::string& query) {
        const json j = json::parse(get("http://127.0.0.1:9090/api/v1/query", {"query=" + query}),
                                   nullptr, false);
        if (!j.is_object() || j.value("status", "") != "success")
            return {};
        const json& result = j["data"]["result"];
        if (!result.is_array() || result.empty())
            return {};
        return result[0]["value"][1].get<std::string>();
    }
    void bob_is_refused(int times) {
        for (int i = 0; i < times; ++i)
            expect_refused(kBob, Topology::kRemote4, 25);
    }
};

TEST_F(MetricsTest, PrometheusReadsBobsAttemptsAsTheKernelCountedThem) {
    const std::string textdir = dir_->path() + "/textfile";
    std::filesystem::create_directories(textdir);
    const std::string prom = textdir + "/smtpfence.prom";
    ASSERT_NO_FATAL_FAILURE(start_daemon("METRICS_TEXTFILE = \"" + prom + "\"\n"));
    // Attempts before the worker is ready are counted, not explained (docs/attempts.md).
    ASSERT_TRUE(wait_until([&] { return status()["worker"].value("ready", false); }, 20s))
        << diagnostics();
    bob_is_refused(3);
    std::uint64_t kernel = kernel_count(kBob);
    ASSERT_GE(kernel, 3U) << diagnostics();
    const std::string bob_line =
        "smtpfence_attempts_total{account=\"bob\",uid=\"" + std::to_string(kBob.uid) + "\"} ";
    ASSERT_TRUE(wait_until(
        [&] {
            return read_file(prom).find(bob_line + std::to_string(kernel) + "\n") !=
                   std::string::npos;
        },
        20s))
        << read_file(prom) << diagnostics();
    EXPECT_NE(read_file(prom).find("\nsmtpfence_enforcing 1\n"), std::string::npos);

    const RunResult check = promtool_check(prom);
    EXPECT_EQ(check.exit_code, 0) << check.describe() << read_file(prom);
    EXPECT_EQ(check.output(), "");

    // node_exporter with the textfile collector only, on loopback in the namespace.
    Child exporter = start_in(
        topo_->server,
        {"prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
         "--collector.textfile.directory=" + textdir, "--web.listen-address=127.0.0.1:9100"},
        dir_->path() + "/node_exporter.log");
    ASSERT_TRUE(wait_until(
        [&] { return get("http://127.0.0.1:9100/metrics").find(bob_line) != std::string::npos; },
        20s, 100ms))
        << read_file(dir_->path() + "/node_exporter.log");

    const std::string config = dir_->write("prometheus.yml",
                                           "global:\n"
                                           "  scrape_interval: 1s\n"
                                           "  evaluation_interval: 1s\n"
                                           "scrape_configs:\n"
                                           "  - job_name: node\n"
                                           "    static_configs:\n"
                                           "      - targets: ['127.0.0.1:9100']\n");
    Child prometheus = start_in(
        topo_->server,
        {"prometheus", "--config.file=" + config, "--storage.tsdb.path=" + dir_->path() + "/tsdb",
         "--web.listen-address=127.0.0.1:9090"},
        dir_->path() + "/prometheus.log");
    const std::string query = "smtpfence_attempts_total{account=\"bob\"}";
    ASSERT_TRUE(wait_until([&] { return promql(query) == std::to_string(kernel); }, 60s, 250ms))
        << "prometheus says \"" << promql(query) << "\", the kernel " << kernel << "\n"
        << read_file(dir_->path() + "/prometheus.log");

    // More attempts: the counter follows the kernel's through the whole chain.
    bob_is_refused(2);
    kernel = kernel_count(kBob);
    ASSERT_GE(kernel, 5U);
    EXPECT_TRUE(wait_until([&] { return promql(query) == std::to_string(kernel); }, 60s, 250ms))
        << "prometheus says \"" << promql(query) << "\", the kernel " << kernel;
    EXPECT_EQ(promql("smtpfence_enforcing"), "1");
    // The ready worker saw each of these few SYNs (under OBSERVE_BURST) and recorded it.
    EXPECT_TRUE(wait_until(
        [&] { return promql("smtpfence_attempts_explained_total") == std::to_string(kernel); }, 60s,
        250ms))
        << "prometheus says \"" << promql("smtpfence_attempts_explained_total") << "\"\n"
        << read_file(prom);

    const json s = status();
    EXPECT_EQ(s["metrics"]["path"], prom) << s.dump();
    EXPECT_EQ(s["metrics"]["last_error"], "") << s.dump();
    EXPECT_GT(s["metrics"]["last_written"].get<std::int64_t>(), 0) << s.dump();
}

TEST_F(MetricsTest, AMissingDirectoryIsShownInStatusAndLoggedOnce) {
    const std::string textdir = dir_->path() + "/node-exporter";
    const std::string prom = textdir + "/smtpfence.prom";
    ASSERT_NO_FATAL_FAILURE(start_daemon("METRICS_TEXTFILE = \"" + prom + "\"\n"));
    // Each reload writes at once: several failed writes, without waiting for the timer.
    for (int i = 0; i < 3; ++i)
        ASSERT_EQ(ctl({"reload"}).exit_code, 0);
    ASSERT_TRUE(wait_until([&] { return status()["metrics"]["failures"].get<int>() >= 3; }, 20s))
        << status().dump() << diagnostics();
    const json s = status();
    EXPECT_EQ(s["metrics"]["last_error"], textdir + ": No such file or directory") << s.dump();

    std::filesystem::create_directories(textdir);
    ASSERT_EQ(ctl({"reload"}).exit_code, 0);
    ASSERT_TRUE(
        wait_until([&] { return status()["metrics"].value("last_error", "?").empty(); }, 20s))
        << status().dump();
    EXPECT_NE(read_file(prom).find("# TYPE smtpfence_attempts_total counter\n"), std::string::npos);
    const std::string log = daemon_->log();
    const auto count = [&](const std::string& text) {
        std::size_t n = 0;
        for (auto at = log.find(text); at != std::string::npos; at = log.find(text, at + 1))
            ++n;
        return n;
    };
    EXPECT_EQ(count("metrics textfile not written: " + textdir + ": No such file"), 1U) << log;
    EXPECT_EQ(count("metrics textfile written again: " + prom), 1U) << log;
}

// A config that cannot be used: the daemon enforces the built-in defaults and says so
// in the metrics too, at the path its command line gives when the config sets none
// (the harness's --metrics-textfile).
TEST_F(MetricsTest, ABrokenConfigIsAConfigErrorWhileTheDefaultsAreEnforced) {
    ASSERT_NO_FATAL_FAILURE(start_daemon("SMTP_BLOCK = \"maybe\"\n"));
    const std::string prom = dir_->path() + "/smtpfence.prom";
    ASSERT_TRUE(wait_until(
        [&] {
            const std::string text = read_file(prom);
            return text.find("\nsmtpfence_config_error 1\n") != std::string::npos &&
                   text.find("\nsmtpfence_enforcing 1\n") != std::string::npos;
        },
        20s))
        << read_file(prom) << diagnostics();
    write_config("SMTP_BLOCK = \"1\"\n");
    ASSERT_EQ(ctl({"reload"}).exit_code, 0);
    EXPECT_TRUE(wait_until(
        [&] { return read_file(prom).find("\nsmtpfence_config_error 0\n") != std::string::npos; },
        20s))
        << read_file(prom);
}

// What a hostile account name (quotes, backslash, newline) becomes in the textfile is
// still one valid sample for promtool, with the name intact once unescaped.
TEST(MetricsPromtool, AHostileLabelValueStaysEscaped) {
    MetricsSnapshot m;
    m.version = "0.1.0";
    m.enforcing = true;
    m.attempts = {{"ev\"il\\\n} 9\nsmtpfence_enforcing 0", 1002, 3}, {"bad\xFF", 1003, 1}};
    const TempDir dir;
    const std::string path = dir.write("hostile.prom", render_metrics(m));
    const RunResult check = promtool_check(path);
    EXPECT_EQ(check.exit_code, 0) << check.describe() << read_file(path);
    EXPECT_EQ(check.output(), "");
    // As many lines as with a plain name, and no sample the name tried to smuggle in.
    const std::string text = read_file(path);
    MetricsSnapshot plain = m;
    plain.attempts.front().account = "bob";
    const std::string plain_text = render_metrics(plain);
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'),
              std::count(plain_text.begin(), plain_text.end(), '\n'));
    EXPECT_EQ(text.find("\nsmtpfence_enforcing 0"), std::string::npos) << text;
    EXPECT_NE(
        text.find("{account=\"ev\\\"il\\\\\\n} 9\\nsmtpfence_enforcing 0\",uid=\"1002\"} 3\n"),
        std::string::npos)
        << text;
}

}  // namespace
}  // namespace smtpfence::itest
