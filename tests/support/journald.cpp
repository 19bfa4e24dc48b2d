#include "tests/support/journald.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/support/run.h"

namespace smtpfence::testing {
namespace {

constexpr const char* kJournald = "/lib/systemd/systemd-journald";

// Everything in files journald keeps under /run (ours), nothing sent on to the host's
// syslog, kernel log, console or terminals, nothing read from the kernel's log or audit
// (those are the host's), and no rate limit of journald's own in the way of a test.
constexpr const char* kConfig =
    "[Journal]\n"
    "Storage=volatile\n"
    "ForwardToSyslog=no\n"
    "ForwardToKMsg=no\n"
    "ForwardToConsole=no\n"
    "ForwardToWall=no\n"
    "ReadKMsg=no\n"
    "Audit=no\n"
    "RateLimitBurst=0\n";

// Where journald could find another configuration, or keep files, besides /run: each
// one that exists is covered by the test's (the conf file) or an empty folder, so that
// neither the host's settings nor its persistent journal (/var/log/journal) are used.
constexpr std::array<const char*, 4> kHiddenDirs = {
    "/etc/systemd/journald.conf.d", "/usr/lib/systemd/journald.conf.d",
    "/usr/local/lib/systemd/journald.conf.d", "/var/log/journal"};
constexpr const char* kConfPath = "/etc/systemd/journald.conf";

bool exists(const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0;
}

// In the forked child (single-threaded; paths built before fork): a mount namespace of
// its own, propagation to the host cut, then the test's /run, conf and empty folders.
bool make_private_mounts(const std::string& run, const std::string& conf,
                         const std::string& empty) {
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount(run.c_str(), "/run", nullptr, MS_BIND, nullptr) != 0) {
        return false;
    }
    if (exists(kConfPath) && ::mount(conf.c_str(), kConfPath, nullptr, MS_BIND, nullptr) != 0)
        return false;
    for (const char* dir : kHiddenDirs) {
        if (exists(dir) && ::mount(empty.c_str(), dir, nullptr, MS_BIND, nullptr) != 0)
            return false;
    }
    return true;
}

}  // namespace

bool enter_mountns(int ns_fd) {
    return ns_fd < 0 || ::setns(ns_fd, CLONE_NEWNS) == 0;
}

Result<PrivateJournald> PrivateJournald::start(const std::string& dir, Millis timeout) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const std::string run = dir + "/run";
    const std::string empty = dir + "/empty";
    const std::string conf = dir + "/journald.conf";
    const std::string log_path = dir + "/journald.log";
    for (const std::string& d : {run, empty}) {
        fs::create_directories(d, ec);
        if (ec)
            return fail(ec.value(), "create " + d);
    }
    std::ofstream(conf) << kConfig;
    UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!log.valid() || !devnull.valid())
        return fail(errno, "open " + log_path + " and /dev/null");
    // Its own messages to stderr (our log file), not to the kernel's log.
    const std::vector<std::string> args = {kJournald};
    const std::vector<std::string> envs = {"SYSTEMD_LOG_TARGET=console",
                                           "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
    const Argv argv(args);  // points into args and envs
    const Argv env(envs);

    const pid_t parent = ::getpid();
    auto child = spawn([&]() -> int {
        ::setpgid(0, 0);
        ::dup2(devnull.get(), STDIN_FILENO);
        ::dup2(log.get(), STDOUT_FILENO);
        ::dup2(log.get(), STDERR_FILENO);
        if (!make_private_mounts(run, conf, empty)) {
            write_text(STDERR_FILENO, "journald harness: private mounts failed\n");
            return 126;
        }
        if (!die_with_parent(parent, SIGKILL))
            return 126;
        close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        ::execve(argv.ptrs[0], argv.ptrs.data(), env.ptrs.data());
        write_text(STDERR_FILENO, "journald harness: exec systemd-journald failed\n");
        return 127;
    });
    if (!child)
        return std::unexpected(child.error());
    const std::string socket = run + "/systemd/journal/socket";
    const std::string stdout_socket = run + "/systemd/journal/stdout";
    const bool up = wait_until(
        [&] {
            return !child->running() || (exists(socket.c_str()) && exists(stdout_socket.c_str()) &&
                                         exists((run + "/log/journal").c_str()));
        },
        timeout);
    const auto journald_log = [&] {
        std::ifstream in(log_path);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    };
    if (!child->running() || !up) {
        return fail(
            0, std::string(kJournald) + " did not start (" +
                   (child->status() ? describe_status(*child->status()) : "no sockets in time") +
                   "): " + journald_log());
    }
    const std::string ns_path = "/proc/" + std::to_string(child->pid()) + "/ns/mnt";
    UniqueFd ns(::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns.valid())
        return fail(errno, "open " + ns_path);
    return PrivateJournald(dir, std::move(*child), std::move(ns));
}

PrivateJournald::~PrivateJournald() {
    if (child_.valid()) {
        child_.signal(SIGTERM);  // journald syncs its files and exits
        (void)child_.wait_for(Millis{5000});
    }
}

std::string PrivateJournald::journald_log() const {
    std::ifstream in(dir_ + "/journald.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

Result<PrivateJournald::Stream> PrivateJournald::open_stream(const std::string& identifier) const {
    const std::string path = dir_ + "/run/systemd/journal/stdout";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        return fail(ENAMETOOLONG, "connect " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid())
        return fail(errno, "socket");
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        return fail(errno, "connect " + path);
    (void)::shutdown(fd.get(), SHUT_RD);
    // systemd's stream header (src/journal/journald-stream.c): identifier, unit id,
    // priority, level prefix, forward to syslog, kmsg, console.
    const std::string header = identifier + "\n\n6\n1\n0\n0\n0\n";
    if (!write_all(fd.get(), header.data(), header.size()))
        return fail(errno, "write the stream header to " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return fail(errno, "fstat the journal stream");
    return Stream{std::move(fd), std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)};
}

Result<std::vector<nlohmann::json>> PrivateJournald::entries(
    const std::vector<std::string>& matches) const {
    std::vector<std::string> argv = {"journalctl", "--no-pager", "-D", files_dir(), "-o", "json"};
    argv.insert(argv.end(), matches.begin(), matches.end());
    const RunResult r = run(nullptr, argv);
    if (r.exit_code != 0)
        return fail(0, "journalctl", r.describe());
    std::vector<nlohmann::json> out;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
        if (line.empty())
            continue;
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded())
            return fail(0, "journalctl -o json", "not JSON: " + line);
        out.push_back(std::move(j));
    }
    return out;
}

}  // namespace smtpfence::testing
