#include "bench/bench_daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "bench/report.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool runs(pid_t pid, const std::string& exe) {
    std::error_code ec;
    const fs::path want = fs::canonical(exe, ec);
    std::error_code link_ec;
    const fs::path got = fs::read_symlink("/proc/" + std::to_string(pid) + "/exe", link_ec);
    return !ec && !link_ec && got == want;
}

// Whether someone is bound to NFQUEUE num in the network namespace of pid.
bool queue_bound(pid_t pid, std::uint16_t num) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/netfilter/nfnetlink_queue");
    for (std::string line; std::getline(in, line);) {
        std::istringstream fields(line);
        unsigned q = 0;
        if (fields >> q && q == num) {
            return true;
        }
    }
    return false;
}

}  // namespace

Result<Daemon> Daemon::start(const Netns& ns, DaemonSpec spec) {
    if (spec.state_dir.empty()) {
        spec.state_dir = spec.dir + "/state";
    }
    std::error_code ec;
    fs::create_directories(spec.state_dir, ec);
    fs::create_directories(spec.dir + "/virtual", ec);
    if (ec) {
        return fail(ec.value(), "create " + spec.dir);
    }
    std::vector<std::string> argv{
        spec.daemon_path, "--foreground", "--table", spec.table, "--config", spec.config,
        "--passwd", spec.passwd, "--group", spec.group, "--state-dir", spec.state_dir,
        "--control-socket", spec.dir + "/control.sock", "--virtual-dir", spec.dir + "/virtual",
        // never the host's node_exporter folder
        "--metrics-textfile", spec.dir + "/smtpfence.prom"};
    if (!spec.worker_path.empty()) {
        argv.insert(argv.end(), {"--worker", spec.worker_path});
    } else {
        argv.emplace_back("--no-worker");
    }
    const testing::Argv cargv(argv);
    std::string log_path = spec.dir + "/smtpfenced.log";
    UniqueFd log(
        ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644));
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!log.valid() || !devnull.valid()) {
        return fail(errno, "open " + log_path);
    }
    const pid_t parent = ::getpid();
    auto child = testing::spawn_in(ns, [&]() -> int {
        if (::dup2(devnull.get(), STDIN_FILENO) < 0 || ::dup2(log.get(), STDOUT_FILENO) < 0 ||
            ::dup2(log.get(), STDERR_FILENO) < 0) {
            return 126;
        }
        // Not SIGKILL as spawn_in sets: the daemon's orderly exit stops its worker,
        // which SIGKILL would leave running (and holding the namespace).
        if (!testing::die_with_parent(parent, SIGTERM)) {
            return 126;
        }
        // Nothing of ours but stdin, stdout and stderr crosses the exec.
        testing::close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        ::execv(cargv.ptrs[0], cargv.ptrs.data());
        return 127;
    });
    if (!child) {
        return std::unexpected(child.error().wrap("start smtpfenced"));
    }
    Daemon d(std::move(*child), std::move(spec), std::move(log_path));
    if (auto r = d.wait_ready(ns); !r) {
        return std::unexpected(r.error());
    }
    return d;
}

Daemon::~Daemon() {
    if (auto r = stop(); !r) {
        note("%s: %s\n", spec_.program.c_str(), r.error().message().c_str());
    }
}

std::string Daemon::log() const {
    return testing::read_file(log_path_);
}

pid_t Daemon::refresh_worker() {
    worker_ = spec_.worker_path.empty() ? 0 : child_running(pid(), spec_.worker_path).value_or(0);
    return worker_;
}

std::string Daemon::observation() const {
    const std::string text = log();
    const std::size_t at = text.find("observation: ");
    if (at == std::string::npos) {
        return "?";
    }
    const std::size_t end = text.find_first_of(";\n", at);
    return text.substr(at + 13, end == std::string::npos ? end : end - at - 13);
}

Result<void> Daemon::stop() {
    if (!child_.valid()) {
        return {};
    }
    const pid_t pid = child_.pid();
    Result<void> result;
    if (child_.running()) {
        child_.signal(SIGTERM);
        if (!child_.wait_for(5s)) {
            child_.kill_and_reap();
            result = fail(ETIMEDOUT, "smtpfenced did not exit within 5 s of SIGTERM (killed)");
        }
    }
    if (worker_ > 0 && testing::parent_of(worker_) != pid && runs(worker_, spec_.worker_path)) {
        (void)::kill(worker_, SIGKILL);  // orphaned: the daemon did not stop it
    }
    worker_ = 0;
    return result;
}

Result<void> Daemon::wait_ready(const Netns& ns) {
    auto e = NsEngine::open(ns);
    if (!e) {
        return std::unexpected(e.error());
    }
    const bool with_worker = !spec_.worker_path.empty();
    const auto deadline = Clock::now() + 10s;
    std::string last_error;
    while (Clock::now() < deadline) {
        if (!child_.running()) {
            return fail(0, "smtpfenced exited at start", "log:\n" + tail(log(), 2000));
        }
        auto exists = (*e)->engine().table_exists(spec_.table);
        if (!exists) {
            last_error = exists.error().message();
        }
        const bool table = exists && *exists;
        if (table && !with_worker) {
            return {};
        }
        if (table && refresh_worker() > 0 && queue_bound(pid(), kQueueNum)) {
            return {};
        }
        std::this_thread::sleep_for(20ms);
    }
    return fail(ETIMEDOUT,
                std::string("smtpfenced did not ") +
                    (with_worker ? "have a worker bound to NFQUEUE 2525" : "create its table") +
                    " within 10 s " + last_error,
                "log:\n" + tail(log(), 2000));
}

std::optional<std::uint64_t> cpu_ticks(pid_t pid) {
    const std::string stat = testing::read_file("/proc/" + std::to_string(pid) + "/stat");
    const std::size_t paren = stat.rfind(')');
    if (paren == std::string::npos) {
        return std::nullopt;
    }
    // After "pid (comm)": field 3 (state) first; utime and stime are fields 14 and 15.
    std::istringstream in(stat.substr(paren + 1));
    std::string field;
    std::uint64_t utime = 0;
    std::uint64_t stime = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
        if (i == 14) {
            utime = std::strtoull(field.c_str(), nullptr, 10);
        } else if (i == 15) {
            stime = std::strtoull(field.c_str(), nullptr, 10);
            return utime + stime;
        }
    }
    return std::nullopt;
}

std::optional<std::uint64_t> status_kib(pid_t pid, const std::string& name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(name + ":", 0) == 0) {
            return std::strtoull(line.c_str() + name.size() + 1, nullptr, 10);
        }
    }
    return std::nullopt;
}

std::optional<pid_t> child_running(pid_t parent, const std::string& exe) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        const auto pid = static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10));
        if (testing::parent_of(pid) == parent && runs(pid, exe)) {
            return pid;
        }
    }
    return std::nullopt;
}

std::string tail(const std::string& text, std::size_t max) {
    return text.size() <= max ? text : "..." + text.substr(text.size() - max);
}

Result<void> write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
        return fail(errno, "write " + path);
    }
    return {};
}

std::string mib(std::uint64_t kib) {
    return strf("%.1f MiB", static_cast<double>(kib) / 1024.0);
}

}  // namespace smtpfence::bench
