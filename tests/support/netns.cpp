#include "tests/support/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "tests/support/child.h"
#include "tests/support/run.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::testing {
namespace {

// Named namespaces are "sft-<pid>-<n>": the pid tells a later run whether their owner
// is gone (child.h's left_by_dead_runs).
constexpr const char* kPrefix = "sft";
constexpr Millis kIpTimeout{10000};

std::atomic<unsigned> g_netns_counter{0};

UniqueFd open_own_netns() {
    return UniqueFd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
}

void return_to(int original) {
    if (::setns(original, CLONE_NEWNET) != 0) {
        std::perror("smtpfence test support: cannot return to the original network namespace");
        std::abort();
    }
}

std::string describe(const Netns& ns) {
    return ns.name().empty() ? ns.path() : ns.name();
}

// Kills every process in the namespace called name and reaps those that are ours.
void kill_processes_in(const std::string& name) {
    const RunResult pids = run(nullptr, {"ip", "netns", "pids", name}, std::nullopt, Millis{5000});
    std::stringstream ss(pids.out);
    pid_t pid = 0;
    while (ss >> pid) {
        if (pid <= 1 || pid == ::getpid())
            continue;
        ::kill(pid, SIGKILL);
        int status = 0;
        // Reaps our own children; others (grandchildren reparented to init) give ECHILD.
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    }
}

// Once per process: deletes the namespaces killed runs left behind, and any process
// still in them, and the root suites' directories of those runs (/tmp/sft-PID-*), which
// a test making namespaces alone would otherwise leave to the next that makes one.
void remove_stale_namespaces() {
    static const bool done = [] {
        for (const std::string& name : left_by_dead_runs("/run/netns", kPrefix)) {
            kill_processes_in(name);
            (void)run(nullptr, {"ip", "netns", "del", name}, std::nullopt, Millis{5000});
        }
        remove_stale_dirs(TempDirSpec{});
        return true;
    }();
    (void)done;
}

}  // namespace

// ---- Netns --------------------------------------------------------------------------

Result<Netns> Netns::create() {
    remove_stale_namespaces();
    const std::string name = std::string(kPrefix) + "-" + std::to_string(::getpid()) + "-" +
                             std::to_string(g_netns_counter++);
    const RunResult r = run(nullptr, {"ip", "netns", "add", name}, std::nullopt, kIpTimeout);
    if (r.exit_code != 0)
        return fail(0, "ip netns add " + name, r.output());
    Netns ns(name, {});
    ns.fd_ = UniqueFd(::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns.fd_.valid())
        return fail(errno, "open " + ns.path());  // ns deletes the name on return
    return ns;
}

Result<Netns> Netns::create_anonymous() {
    const UniqueFd original = open_own_netns();
    if (!original.valid())
        return fail(errno, "open /proc/thread-self/ns/net");
    if (::unshare(CLONE_NEWNET) != 0)
        return fail(errno, "unshare(CLONE_NEWNET)");
    UniqueFd fd = open_own_netns();
    const int open_errno = errno;
    return_to(original.get());
    if (!fd.valid())
        return fail(open_errno, "open the new network namespace");
    return Netns({}, std::move(fd));
}

Netns& Netns::operator=(Netns&& other) noexcept {
    if (this != &other) {
        remove();
        name_ = std::exchange(other.name_, {});
        fd_ = std::move(other.fd_);
    }
    return *this;
}

std::string Netns::path() const {
    if (!name_.empty())
        return "/run/netns/" + name_;
    return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd_.get());
}

void Netns::remove() {
    if (name_.empty())
        return;
    kill_processes_in(name_);
    const RunResult r = run(nullptr, {"ip", "netns", "del", name_}, std::nullopt, kIpTimeout);
    if (r.exit_code != 0) {
        (void)std::fprintf(stderr, "warning: ip netns del %s: %s\n", name_.c_str(),
                           r.describe().c_str());
    }
    name_.clear();
}

// ---- NetnsEntry ---------------------------------------------------------------------

Result<NetnsEntry> NetnsEntry::enter(const Netns& ns) {
    UniqueFd original = open_own_netns();
    if (!original.valid())
        return fail(errno, "open /proc/thread-self/ns/net");
    if (::setns(ns.fd(), CLONE_NEWNET) != 0)
        return fail(errno, "setns into " + describe(ns));
    return NetnsEntry(std::move(original));
}

NetnsEntry::~NetnsEntry() {
    if (original_.valid())
        return_to(original_.get());
}

// ---- NsEngine -----------------------------------------------------------------------

Result<std::unique_ptr<NsEngine>> NsEngine::open(const Netns& ns) {
    Result<nft::NetlinkSocket> sock = fail(0, "not opened");
    {
        auto entry = NetnsEntry::enter(ns);
        if (!entry)
            return std::unexpected(entry.error());
        sock = nft::NetlinkSocket::open();
    }
    if (!sock)
        return std::unexpected(sock.error().wrap("netlink socket in " + describe(ns)));
    return std::unique_ptr<NsEngine>(new NsEngine(std::move(*sock)));
}

}  // namespace smtpfence::testing
