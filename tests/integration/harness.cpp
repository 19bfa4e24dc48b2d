#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <thread>

#ifndef SMTPFENCED_PATH
#error "SMTPFENCED_PATH must be defined by CMake"
#endif
#ifndef SMTPFENCECTL_PATH
#error "SMTPFENCECTL_PATH must be defined by CMake"
#endif

namespace smtpfence::itest {
namespace {

using Clock = std::chrono::steady_clock;

// ---- helpers for forked children -------------------------------------------------
// The test process is single-threaded, so a forked child may allocate; these
// helpers avoid it all the same (they also run right before exec).

// Writes all of buf, retrying on EINTR and short writes.
bool write_all(int fd, const void* buf, std::size_t len) {
    const char* p = static_cast<const char*>(buf);
    while (len > 0) {
        const ssize_t n = ::write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
}

void write_text(int fd, const char* text) {
    (void)write_all(fd, text, std::strlen(text));
}

// In a forked child: closes every descriptor but those in keep, so that no child holds
// another one's pipe open (a pipe's reader sees EOF only when every writer is gone).
void close_other_fds(std::initializer_list<int> keep) {
    std::array<int, 8> sorted{};
    std::size_t n = 0;
    for (const int fd : keep) {
        if (fd >= 0 && n < sorted.size())
            sorted[n++] = fd;
    }
    std::sort(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(n));
    unsigned from = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const auto fd = static_cast<unsigned>(sorted[i]);
        if (fd > from)
            ::close_range(from, fd - 1, 0);
        from = std::max(from, fd + 1);
    }
    ::close_range(from, ~0U, 0);
}

// In a forked child: enter the namespace (CLONE_NEWNET only: mounts and pids stay).
bool enter_netns(int ns_fd) {
    return ns_fd < 0 || ::setns(ns_fd, CLONE_NEWNET) == 0;
}

// In a forked child: become creds. Groups first (needs CAP_SETGID), then gid, then
// uid (after which nothing else may be changed).
bool drop_credentials(const Credentials& creds) {
    if (::setgroups(creds.groups.size(), creds.groups.data()) != 0)
        return false;
    if (::setresgid(creds.gid, creds.gid, creds.gid) != 0)
        return false;
    if (::setresuid(creds.uid, creds.uid, creds.uid) != 0)
        return false;
    return true;
}

// In a forked child, after any credential change (which clears the setting): dies
// with sig when the test process dies, so a killed test run leaves no process
// behind. parent is the test process's pid, taken before fork.
void die_with_parent(pid_t parent, int sig) {
    ::prctl(PR_SET_PDEATHSIG, sig);
    if (::getppid() != parent)  // it died before prctl took effect
        ::_exit(1);
}

// Reads everything until EOF or deadline from fd, appending to out. True on EOF.
bool read_until_eof(int fd, std::string& out, Clock::time_point deadline) {
    char buf[4096];
    while (true) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            return false;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return true;
        out.append(buf, static_cast<std::size_t>(n));
    }
}

// Reads exactly len bytes before deadline.
bool read_exact(int fd, void* buf, std::size_t len, Clock::time_point deadline) {
    char* p = static_cast<char*>(buf);
    while (len > 0) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            return false;
        pollfd pfd{fd, POLLIN, 0};
        const int r = ::poll(&pfd, 1, static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        const ssize_t n = ::read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
}

struct Pipe {
    UniqueFd read;
    UniqueFd write;
};

Result<Pipe> make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
        return fail(errno, "pipe2");
    return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

Result<UniqueFd> open_netns_fd(const Netns& ns) {
    UniqueFd fd(::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid())
        return fail(errno, "open " + ns.path());
    return fd;
}

// argv[0] as given when it holds a slash, else the first executable of that name in
// PATH or the sbin directories (ctest may run with a PATH without /usr/sbin).
std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos)
        return name;
    std::string dirs;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): the test process is single-threaded
    if (const char* path = std::getenv("PATH"))
        dirs = path;
    dirs += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    std::stringstream ss(dirs);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
        if (dir.empty())
            continue;
        const std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0)
            return candidate;
    }
    return name;
}

// Owns the char* view of a vector<string> for execv.
struct Argv {
    explicit Argv(const std::vector<std::string>& args) {
        for (const std::string& a : args)
            ptrs.push_back(const_cast<char*>(a.c_str()));
        ptrs.push_back(nullptr);
    }
    std::vector<char*> ptrs;
};

std::atomic<unsigned> g_netns_counter{0};

// Alive, as opposed to gone or a zombie nobody reaped (a killed test run whose
// parent does not wait for it still owns its namespaces until this says so).
bool process_alive(pid_t pid) {
    const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    const std::size_t paren = stat.rfind(')');  // the command name may hold spaces
    if (paren == std::string::npos || paren + 2 >= stat.size())
        return false;
    return stat[paren + 2] != 'Z' && stat[paren + 2] != 'X';
}

// Kills every process in the namespace called name and reaps those that are ours.
void kill_processes_in(const std::string& name) {
    const RunResult pids = run(nullptr, {"ip", "netns", "pids", name}, std::nullopt, 5s);
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

// The pid in a name "sft-<pid>-..." (our namespaces and temporary directories), or 0.
pid_t owner_pid(const std::string& name) {
    if (name.rfind("sft-", 0) != 0)
        return 0;
    const std::size_t dash = name.find('-', 4);
    if (dash == std::string::npos)
        return 0;
    const long pid = std::strtol(name.substr(4, dash - 4).c_str(), nullptr, 10);
    return pid > 0 && pid != ::getpid() ? static_cast<pid_t>(pid) : 0;
}

// Names in dir made by a test run that is gone (killed before its destructors ran).
std::vector<std::string> stale_entries(const char* dir) {
    std::vector<std::string> stale;
    DIR* d = ::opendir(dir);
    if (d == nullptr)
        return stale;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): one reader of this DIR*, one thread
    while (const dirent* e = ::readdir(d)) {
        const pid_t owner = owner_pid(e->d_name);
        if (owner != 0 && !process_alive(owner))
            stale.emplace_back(e->d_name);
    }
    ::closedir(d);
    return stale;
}

// Once per process: removes what killed runs left behind, namespaces (and any
// process still in them) and temporary directories.
void remove_stale_leftovers() {
    static const bool done = [] {
        for (const std::string& name : stale_entries("/run/netns")) {
            kill_processes_in(name);
            (void)run(nullptr, {"ip", "netns", "del", name}, std::nullopt, 5s);
        }
        for (const std::string& name : stale_entries("/tmp")) {
            std::error_code ec;
            std::filesystem::remove_all("/tmp/" + name, ec);
        }
        return true;
    }();
    (void)done;
}

// Enters a namespace for the calling process and returns to the original one when
// dropped. Used only around socket creation, so the test process spends no time
// outside its own namespace.
class NetnsEnter {
  public:
    explicit NetnsEnter(int target_fd) {
        original_.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
        if (!original_.valid()) {
            error_ = errno;
            return;
        }
        if (::setns(target_fd, CLONE_NEWNET) != 0) {
            error_ = errno;
            original_.reset();
        }
    }
    NetnsEnter(const NetnsEnter&) = delete;
    NetnsEnter& operator=(const NetnsEnter&) = delete;
    ~NetnsEnter() {
        if (original_.valid() && ::setns(original_.get(), CLONE_NEWNET) != 0) {
            // Carrying on in the wrong namespace could touch the host's firewall.
            std::perror("smtpfence integration harness: cannot return to the original netns");
            std::abort();
        }
    }
    [[nodiscard]] int error() const { return error_; }

  private:
    UniqueFd original_;
    int error_ = 0;
};

}  // namespace

// ---- misc ---------------------------------------------------------------------------

bool wait_until(const std::function<bool()>& pred, Millis timeout, Millis step) {
    const auto deadline = Clock::now() + timeout;
    while (true) {
        if (pred())
            return true;
        if (Clock::now() >= deadline)
            return pred();
        std::this_thread::sleep_for(step);
    }
}

std::string describe_status(int wait_status) {
    if (WIFEXITED(wait_status))
        return "exited with " + std::to_string(WEXITSTATUS(wait_status));
    if (WIFSIGNALED(wait_status))
        return "killed by signal " + std::to_string(WTERMSIG(wait_status));
    return "wait status " + std::to_string(wait_status);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string smtpfenced_path() {
    return SMTPFENCED_PATH;
}
std::string smtpfencectl_path() {
    return SMTPFENCECTL_PATH;
}

std::optional<std::string> skip_reason() {
    static const std::optional<std::string> reason = []() -> std::optional<std::string> {
        if (::geteuid() != 0) {
            return "integration tests need root (network namespaces, nftables, setuid)";
        }
        auto ns = Netns::create();
        if (!ns) {
            return "cannot create a network namespace (no kernel support?): " +
                   ns.error().message();
        }
        const RunResult nft = run(*ns, {"nft", "list", "ruleset"});
        if (nft.exit_code != 0)
            return "nftables unavailable: " + nft.describe();
        return std::nullopt;
    }();
    return reason;
}

// ---- Child --------------------------------------------------------------------------

Child::Child(Child&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), status_(std::exchange(other.status_, std::nullopt)) {}

Child& Child::operator=(Child&& other) noexcept {
    if (this != &other) {
        kill_and_reap();
        pid_ = std::exchange(other.pid_, -1);
        status_ = std::exchange(other.status_, std::nullopt);
    }
    return *this;
}

Child::~Child() {
    kill_and_reap();
}

bool Child::running() {
    if (pid_ <= 0 || status_)
        return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0)
        return true;
    if (r == pid_) {
        status_ = status;
    } else {
        status_ = -1;  // reaped by someone else (ECHILD)
    }
    return false;
}

std::optional<int> Child::wait_for(Millis timeout) {
    if (pid_ <= 0)
        return std::nullopt;
    wait_until([this] { return !running(); }, timeout, 5ms);
    return status_;
}

void Child::signal(int sig) const {
    if (pid_ > 0 && !status_)
        ::kill(pid_, sig);
}

void Child::kill_and_reap() {
    if (pid_ <= 0 || status_)
        return;
    ::kill(-pid_, SIGKILL);  // its process group, when it made one
    ::kill(pid_, SIGKILL);
    int status = 0;
    pid_t r = 0;
    while ((r = ::waitpid(pid_, &status, 0)) < 0 && errno == EINTR) {
    }
    status_ = r == pid_ ? status : -1;
}

// ---- Netns --------------------------------------------------------------------------

Result<Netns> Netns::create() {
    remove_stale_leftovers();
    const std::string name =
        "sft-" + std::to_string(::getpid()) + "-" + std::to_string(g_netns_counter++);
    const RunResult r = run(nullptr, {"ip", "netns", "add", name}, std::nullopt, 10s);
    if (r.exit_code != 0)
        return fail(0, "ip netns add " + name, r.output());
    return Netns(name);
}

Netns::~Netns() {
    if (name_.empty())
        return;
    kill_processes_in(name_);
    const RunResult r = run(nullptr, {"ip", "netns", "del", name_}, std::nullopt, 10s);
    if (r.exit_code != 0) {
        (void)std::fprintf(stderr, "warning: ip netns del %s: %s\n", name_.c_str(),
                           r.describe().c_str());
    }
}

// ---- run ----------------------------------------------------------------------------

std::string RunResult::describe() const {
    std::string s = timed_out ? "timed out" : "exit " + std::to_string(exit_code);
    const std::string all = output();
    if (!all.empty())
        s += ": " + all;
    return s;
}

RunResult run(const Netns* ns, const std::vector<std::string>& argv,
              const std::optional<Credentials>& creds, Millis timeout) {
    RunResult result;
    if (argv.empty()) {
        result.err = "run: empty argv";
        return result;
    }
    std::vector<std::string> args = argv;
    args[0] = find_program(argv[0]);
    const Argv c_argv(args);
    UniqueFd ns_fd;
    if (ns != nullptr) {
        auto fd = open_netns_fd(*ns);
        if (!fd) {
            result.err = fd.error().message();
            return result;
        }
        ns_fd = std::move(*fd);
    }
    auto out = make_pipe();
    auto err = make_pipe();
    if (!out || !err) {
        result.err = "run: pipe failed";
        return result;
    }
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));

    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        result.err = "fork: " + errno_text(errno);
        return result;
    }
    if (pid == 0) {
        ::setpgid(0, 0);  // so a timeout kills the whole pipeline
        ::dup2(out->write.get(), STDOUT_FILENO);
        ::dup2(err->write.get(), STDERR_FILENO);
        if (devnull.valid())
            ::dup2(devnull.get(), STDIN_FILENO);
        if (!enter_netns(ns_fd.get())) {
            write_text(STDERR_FILENO, "run: setns failed\n");
            ::_exit(126);
        }
        close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        if (creds && !drop_credentials(*creds)) {
            write_text(STDERR_FILENO, "run: dropping credentials failed\n");
            ::_exit(126);
        }
        die_with_parent(parent, SIGKILL);
        ::execv(c_argv.ptrs[0], c_argv.ptrs.data());
        write_text(STDERR_FILENO, "run: exec failed: ");
        write_text(STDERR_FILENO, c_argv.ptrs[0]);
        write_text(STDERR_FILENO, "\n");
        ::_exit(127);
    }
    Child child(pid);
    out->write.reset();
    err->write.reset();

    const auto deadline = Clock::now() + timeout;
    bool out_open = true;
    bool err_open = true;
    char buf[4096];
    while (out_open || err_open) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            break;
        pollfd fds[2] = {{out_open ? out->read.get() : -1, POLLIN, 0},
                         {err_open ? err->read.get() : -1, POLLIN, 0}};
        const int r = ::poll(fds, 2, static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0)
                continue;
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                (i == 0 ? out_open : err_open) = false;
                continue;
            }
            (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
        }
    }
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    std::optional<int> status = child.wait_for(std::max(left, Millis(0)));
    if (!status) {
        result.timed_out = true;
        child.kill_and_reap();
        status = child.status();
    }
    if (status && *status >= 0) {
        result.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
    }
    return result;
}

// ---- NsEngine -----------------------------------------------------------------------

Result<std::unique_ptr<NsEngine>> NsEngine::open(const Netns& ns) {
    auto fd = open_netns_fd(ns);
    if (!fd)
        return std::unexpected(fd.error());
    Result<nft::NetlinkSocket> sock = fail(0, "not opened");
    {
        NetnsEnter enter(fd->get());
        if (enter.error() != 0)
            return fail(enter.error(), "setns into " + ns.name());
        sock = nft::NetlinkSocket::open();
    }
    if (!sock)
        return std::unexpected(sock.error().wrap("netlink socket in " + ns.name()));
    return std::unique_ptr<NsEngine>(new NsEngine(std::move(*sock)));
}

// ---- connect_as ---------------------------------------------------------------------

std::ostream& operator<<(std::ostream& os, Outcome outcome) {
    switch (outcome) {
        case Outcome::Connected:
            return os << "Connected";
        case Outcome::Refused:
            return os << "Refused";
        case Outcome::TimedOut:
            return os << "TimedOut";
        case Outcome::OtherErrno:
            return os << "OtherErrno";
        case Outcome::HarnessError:
            return os << "HarnessError";
    }
    return os << "Outcome(" << static_cast<int>(outcome) << ")";
}

std::string ConnectResult::describe() const {
    std::stringstream ss;
    ss << outcome << " after " << elapsed.count() << " ms";
    if (error != 0)
        ss << " (" << errno_text(error) << ")";
    if (outcome == Outcome::Connected)
        ss << ", greeting \"" << greeting << "\"";
    if (!note.empty())
        ss << ": " << note;
    return ss.str();
}

namespace {

// What the probe child sends back: plain data, written once.
struct ConnectReport {
    int outcome;
    int error;
    long long elapsed_us;
    char note[64];
    char greeting[256];
};

[[noreturn]] void report_and_exit(int fd, ConnectReport& rep) {
    (void)write_all(fd, &rep, sizeof rep);
    ::_exit(0);
}

void set_note(ConnectReport& rep, const char* note) {
    std::strncpy(rep.note, note, sizeof rep.note - 1);
}

// The probe, run in the forked child.
[[noreturn]] void connect_child(pid_t parent, int ns_fd, int report_fd, const Credentials& creds,
                                const sockaddr_storage& addr, socklen_t addr_len, Millis timeout) {
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, report_fd});
    ConnectReport rep{};
    rep.outcome = static_cast<int>(Outcome::HarnessError);
    if (!enter_netns(ns_fd)) {
        rep.error = errno;
        set_note(rep, "setns");
        report_and_exit(report_fd, rep);
    }
    if (!drop_credentials(creds)) {
        rep.error = errno;
        set_note(rep, "setgroups/setresgid/setresuid");
        report_and_exit(report_fd, rep);
    }
    die_with_parent(parent, SIGKILL);
    const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rep.error = errno;
        set_note(rep, "socket");
        report_and_exit(report_fd, rep);
    }
    const auto start = Clock::now();
    const auto deadline = start + timeout;
    int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len);
    int error = rc == 0 ? 0 : errno;
    if (rc != 0 && error == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        int r = 0;
        do {
            const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
            r = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
        } while (r < 0 && errno == EINTR);
        if (r == 0) {
            error = ETIMEDOUT;
            rep.outcome = static_cast<int>(Outcome::TimedOut);
        } else {
            socklen_t len = sizeof error;
            if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
                error = errno;
        }
    }
    rep.elapsed_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    if (rep.outcome == static_cast<int>(Outcome::TimedOut)) {
        rep.error = 0;
        report_and_exit(report_fd, rep);
    }
    if (error == ECONNREFUSED) {
        rep.outcome = static_cast<int>(Outcome::Refused);
        rep.error = error;
        report_and_exit(report_fd, rep);
    }
    if (error != 0) {
        rep.outcome = static_cast<int>(Outcome::OtherErrno);
        rep.error = error;
        report_and_exit(report_fd, rep);
    }
    rep.outcome = static_cast<int>(Outcome::Connected);
    // The greeting: everything up to the first LF, read before the deadline.
    std::size_t used = 0;
    while (used < sizeof rep.greeting - 1) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        if (left <= 0)
            break;
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        const ssize_t n = ::read(fd, rep.greeting + used, sizeof rep.greeting - 1 - used);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        used += static_cast<std::size_t>(n);
        if (std::memchr(rep.greeting, '\n', used) != nullptr)
            break;
    }
    rep.greeting[used] = '\0';
    if (char* eol = std::strpbrk(rep.greeting, "\r\n"))
        *eol = '\0';
    static const char kQuit[] = "QUIT\r\n";
    (void)::send(fd, kQuit, sizeof kQuit - 1, MSG_NOSIGNAL);
    ::close(fd);
    report_and_exit(report_fd, rep);
}

Result<std::pair<sockaddr_storage, socklen_t>> parse_address(const std::string& address,
                                                             std::uint16_t port) {
    sockaddr_storage ss{};
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    if (::inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return std::pair{ss, static_cast<socklen_t>(sizeof(sockaddr_in))};
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (::inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return std::pair{ss, static_cast<socklen_t>(sizeof(sockaddr_in6))};
    }
    return fail(EINVAL, "not an IPv4 or IPv6 address: " + address);
}

}  // namespace

ConnectResult connect_as(const Netns& ns, const Credentials& creds, const std::string& address,
                         std::uint16_t port, Millis timeout) {
    ConnectResult result;
    auto addr = parse_address(address, port);
    if (!addr) {
        result.note = addr.error().message();
        return result;
    }
    auto ns_fd = open_netns_fd(ns);
    auto pipe = make_pipe();
    if (!ns_fd || !pipe) {
        result.note = "harness setup failed";
        return result;
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        result.error = errno;
        result.note = "fork";
        return result;
    }
    if (pid == 0) {
        connect_child(parent, ns_fd->get(), pipe->write.get(), creds, addr->first, addr->second,
                      timeout);
    }
    Child child(pid);
    pipe->write.reset();
    ConnectReport rep{};
    if (!read_exact(pipe->read.get(), &rep, sizeof rep, Clock::now() + 2 * timeout + 5s)) {
        result.note = "no report from the probe child";
        return result;
    }
    (void)child.wait_for(5s);
    result.outcome = static_cast<Outcome>(rep.outcome);
    result.error = rep.error;
    result.elapsed = std::chrono::duration_cast<Millis>(std::chrono::microseconds(rep.elapsed_us));
    result.greeting = rep.greeting;
    result.note = rep.note;
    return result;
}

// ---- SmtpListener -------------------------------------------------------------------

void SmtpListener::SharedCounter::operator()(std::atomic<std::uint64_t>* p) const noexcept {
    if (p == nullptr)
        return;
    p->~atomic();
    ::munmap(p, sizeof *p);
}

std::uint64_t SmtpListener::accepted() const {
    return counter_ ? counter_->load() : 0;
}

namespace {

// The server loop, run in the forked child. Reports readiness ('R') or a failure
// (text) on ready_fd before serving.
[[noreturn]] void listener_child(pid_t parent, int ns_fd, int ready_fd,
                                 const std::vector<std::uint16_t>& ports,
                                 const std::string& greeting,
                                 std::atomic<std::uint64_t>* accepted) {
    auto die = [&](const char* what) {
        char msg[128];
        (void)std::snprintf(msg, sizeof msg, "%s: %s", what, ::strerrordesc_np(errno));
        write_text(ready_fd, msg);
        ::_exit(1);
    };
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, ready_fd});
    if (!enter_netns(ns_fd))
        die("setns");
    die_with_parent(parent, SIGKILL);
    ::close(ns_fd);
    std::vector<pollfd> fds;
    for (const std::uint16_t port : ports) {
        for (const int family : {AF_INET, AF_INET6}) {
            const int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0)
                die("socket");
            const int one = 1;
            ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            sockaddr_storage ss{};
            socklen_t len = 0;
            if (family == AF_INET) {
                auto* a = reinterpret_cast<sockaddr_in*>(&ss);
                a->sin_family = AF_INET;
                a->sin_port = htons(port);
                a->sin_addr.s_addr = htonl(INADDR_ANY);
                len = sizeof *a;
            } else {
                ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
                auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
                a->sin6_family = AF_INET6;
                a->sin6_port = htons(port);
                a->sin6_addr = in6addr_any;
                len = sizeof *a;
            }
            if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
                die("bind");
            if (::listen(fd, 1024) != 0)
                die("listen");
            fds.push_back(pollfd{fd, POLLIN, 0});
        }
    }
    const std::size_t listeners = fds.size();
    std::vector<std::string> inbox(listeners);  // per fd: text received so far
    write_text(ready_fd, "R");
    ::close(ready_fd);
    while (true) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            ::_exit(2);
        }
        for (std::size_t i = 0; i < listeners; ++i) {
            if ((fds[i].revents & POLLIN) == 0)
                continue;
            while (true) {
                const int client =
                    ::accept4(fds[i].fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (client < 0)
                    break;
                accepted->fetch_add(1);
                (void)::send(client, greeting.data(), greeting.size(), MSG_NOSIGNAL);
                fds.push_back(pollfd{client, POLLIN, 0});
                inbox.emplace_back();
            }
        }
        for (std::size_t i = listeners; i < fds.size(); ++i) {
            if (fds[i].revents == 0)
                continue;
            char buf[1024];
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            bool done = n <= 0;
            if (n > 0) {
                inbox[i].append(buf, static_cast<std::size_t>(n));
                for (char& c : inbox[i])
                    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                if (inbox[i].find("QUIT") != std::string::npos) {
                    static const char kBye[] = "221 2.0.0 Bye\r\n";
                    (void)::send(fds[i].fd, kBye, sizeof kBye - 1, MSG_NOSIGNAL);
                    done = true;
                } else if (inbox[i].size() > 4096) {
                    inbox[i].erase(0, inbox[i].size() - 16);
                }
            }
            if (done) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
        for (std::size_t i = fds.size(); i-- > listeners;) {
            if (fds[i].fd >= 0)
                continue;
            fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
            inbox.erase(inbox.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }
}

}  // namespace

Result<SmtpListener> SmtpListener::start(const Netns& ns, const std::vector<std::uint16_t>& ports,
                                         const std::string& host) {
    void* mem = ::mmap(nullptr, sizeof(std::atomic<std::uint64_t>), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return fail(errno, "mmap");
    CounterPtr counter(new (mem) std::atomic<std::uint64_t>(0));
    auto ns_fd = open_netns_fd(ns);
    if (!ns_fd)
        return std::unexpected(ns_fd.error());
    auto pipe = make_pipe();
    if (!pipe)
        return std::unexpected(pipe.error());
    const std::string greeting = greeting_for(host) + "\r\n";
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid == 0)
        listener_child(parent, ns_fd->get(), pipe->write.get(), ports, greeting, counter.get());
    Child child(pid);
    pipe->write.reset();
    std::string answer;
    (void)read_until_eof(pipe->read.get(), answer, Clock::now() + 10s);
    if (answer != "R") {
        return fail(0, "SMTP listener in " + ns.name(), answer.empty() ? "no answer" : answer);
    }
    return SmtpListener(std::move(child), std::move(counter));
}

// ---- Topology -----------------------------------------------------------------------

Result<Topology> Topology::create() {
    auto server = Netns::create();
    if (!server)
        return std::unexpected(server.error());
    auto remote = Netns::create();
    if (!remote)
        return std::unexpected(remote.error());
    const std::string& s = server->name();
    const std::string& r = remote->name();
    // The veth pair is created inside the server namespace with its peer moved to the
    // remote one at once: no interface ever appears in the host's namespace.
    const std::vector<std::vector<std::string>> steps = {
        {"ip", "-n", s, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns",
         r},
        {"ip", "-n", s, "link", "set", "lo", "up"},
        {"ip", "-n", r, "link", "set", "lo", "up"},
        {"ip", "-n", s, "addr", "add", "192.0.2.1/24", "dev", "veth0"},
        {"ip", "-n", s, "addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
        {"ip", "-n", s, "addr", "add", "198.51.100.1/24", "dev", "lo"},
        {"ip", "-n", r, "addr", "add", "192.0.2.25/24", "dev", "veth0"},
        {"ip", "-n", r, "addr", "add", "2001:db8::25/64", "dev", "veth0", "nodad"},
        {"ip", "-n", s, "link", "set", "veth0", "up"},
        {"ip", "-n", r, "link", "set", "veth0", "up"},
    };
    for (const auto& step : steps) {
        const RunResult res = run(nullptr, step);
        if (res.exit_code != 0) {
            std::string cmd;
            for (const auto& a : step)
                cmd += (cmd.empty() ? "" : " ") + a;
            return fail(0, cmd, res.describe());
        }
    }
    return Topology(std::move(*server), std::move(*remote));
}

// ---- TempDir ------------------------------------------------------------------------

Result<TempDir> TempDir::create() {
    remove_stale_leftovers();
    // The pid in the name lets a later run remove it if this one is killed.
    std::string tmpl = "/tmp/sft-" + std::to_string(::getpid()) + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
        return fail(errno, "mkdtemp " + tmpl);
    // Readable by the unprivileged uids the tests run as.
    ::chmod(tmpl.c_str(), 0755);
    return TempDir(tmpl);
}

TempDir::~TempDir() {
    if (path_.empty())
        return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& content) const {
    const std::string full = path_ + "/" + name;
    std::ofstream out(full, std::ios::binary | std::ios::trunc);
    out << content;
    return full;
}

// ---- Daemon -------------------------------------------------------------------------

Result<Daemon> Daemon::start(const Netns& ns, DaemonArgs args, Millis ready_timeout) {
    const std::string& w = args.work_dir;
    std::filesystem::create_directories(w + "/state");
    std::filesystem::create_directories(w + "/virtual");
    const std::string log_path = w + "/smtpfenced.log";
    std::vector<std::string> argv = {smtpfenced_path(),  "--foreground",      "--table",
                                     args.table,         "--config",          args.config,
                                     "--control-socket", w + "/control.sock", "--state-dir",
                                     w + "/state",       "--virtual-dir",     w + "/virtual"};
    if (!args.passwd.empty())
        argv.insert(argv.end(), {"--passwd", args.passwd});
    if (!args.group.empty())
        argv.insert(argv.end(), {"--group", args.group});
    argv.insert(argv.end(), args.extra.begin(), args.extra.end());
    const Argv c_argv(argv);
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e)
        env.emplace_back(*e);
    env.insert(env.end(), args.env.begin(), args.env.end());
    const Argv c_env(env);

    auto ns_fd = open_netns_fd(ns);
    if (!ns_fd)
        return std::unexpected(ns_fd.error());
    UniqueFd log_fd(
        ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644));
    if (!log_fd.valid())
        return fail(errno, "open " + log_path);
    UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));

    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid == 0) {
        ::setpgid(0, 0);
        ::dup2(log_fd.get(), STDOUT_FILENO);
        ::dup2(log_fd.get(), STDERR_FILENO);
        if (devnull.valid())
            ::dup2(devnull.get(), STDIN_FILENO);
        if (!enter_netns(ns_fd->get())) {
            write_text(STDERR_FILENO, "harness: setns failed\n");
            ::_exit(126);
        }
        // SIGTERM: the daemon's own orderly exit, which also stops its worker.
        die_with_parent(parent, SIGTERM);
        close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO});
        ::execve(c_argv.ptrs[0], c_argv.ptrs.data(), c_env.ptrs.data());
        write_text(STDERR_FILENO, "harness: exec smtpfenced failed\n");
        ::_exit(127);
    }
    Daemon daemon(std::move(args), log_path, Child(pid));

    auto engine = NsEngine::open(ns);
    if (!engine)
        return std::unexpected(engine.error());
    std::string last_error;
    const bool ready = wait_until(
        [&] {
            if (!daemon.running())
                return true;
            if (!daemon.args_.ready_log_text.empty())
                return daemon.log().find(daemon.args_.ready_log_text) != std::string::npos;
            auto exists = (*engine)->engine().table_exists(daemon.args_.table);
            if (!exists)
                last_error = exists.error().message();
            return exists && *exists;
        },
        ready_timeout, 20ms);
    if (!daemon.running()) {
        const auto status = daemon.child_.status();
        return fail(0,
                    "smtpfenced " + (status ? describe_status(*status) : std::string("exited")) +
                        " before creating table inet " + daemon.args_.table,
                    "log:\n" + daemon.log());
    }
    if (!ready) {
        return fail(ETIMEDOUT,
                    "smtpfenced did not create table inet " + daemon.args_.table +
                        (daemon.args_.ready_log_text.empty()
                             ? std::string()
                             : " (nor log \"" + daemon.args_.ready_log_text + "\")") +
                        " within " + std::to_string(ready_timeout.count()) + " ms " + last_error,
                    "log:\n" + daemon.log());
    }
    return daemon;
}

Result<int> Daemon::stop(Millis timeout) {
    if (!child_.valid())
        return fail(ESRCH, "smtpfenced not started");
    if (child_.running())
        child_.signal(SIGTERM);
    if (auto status = child_.wait_for(timeout))
        return *status;
    child_.kill_and_reap();
    return fail(ETIMEDOUT, "smtpfenced did not exit within " + std::to_string(timeout.count()) +
                               " ms of SIGTERM (killed)");
}

Daemon::~Daemon() {
    if (child_.valid() && child_.running())
        (void)stop(5s);  // NOLINT(bugprone-unused-return-value): best effort in a destructor
}

// ---- ConnectFlood -------------------------------------------------------------------

namespace {

[[noreturn]] void flood_child(pid_t parent, int ns_fd, int stop_fd, int result_fd,
                              const Credentials& creds, const sockaddr_storage& addr,
                              socklen_t addr_len, std::uint64_t min_attempts) {
    close_other_fds({STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, ns_fd, stop_fd, result_fd});
    if (!enter_netns(ns_fd) || !drop_credentials(creds)) {
        write_text(result_fd, "E");
        ::_exit(1);
    }
    die_with_parent(parent, SIGKILL);
    ConnectFlood::Counts counts;
    const auto give_up = Clock::now() + 120s;  // never outlive a hung test for long
    bool stop = false;
    for (std::uint64_t i = 0;; ++i) {
        const int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            ++counts.other;
            counts.last_other_errno = errno;
        } else {
            // A blocking connect bounded by SO_SNDTIMEO (then EINPROGRESS, counted as
            // "other"): long enough for one SYN retransmission (1 s) to be answered.
            const timeval tv{5, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            const auto start = Clock::now();
            const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len);
            const int error = errno;
            const auto took = Clock::now() - start;
            counts.slowest_us = std::max<std::int64_t>(
                counts.slowest_us,
                std::chrono::duration_cast<std::chrono::microseconds>(took).count());
            if (rc == 0) {
                ++counts.connected;
            } else if (error == ECONNREFUSED) {
                ++counts.refused;
                if (took >= ConnectFlood::kSlow)
                    ++counts.slow_refused;
            } else {
                ++counts.other;
                counts.last_other_errno = error;
            }
            ::close(fd);
        }
        if (i == 0)
            write_text(result_fd, "R");
        if (i % 32 == 0 && !stop) {
            pollfd p{stop_fd, POLLIN, 0};
            stop = ::poll(&p, 1, 0) > 0;  // POLLHUP once the parent closed its end
        }
        if ((stop && i + 1 >= min_attempts) || Clock::now() > give_up)
            break;
    }
    (void)write_all(result_fd, &counts, sizeof counts);
    ::_exit(0);
}

}  // namespace

Result<ConnectFlood> ConnectFlood::start(const Netns& ns, const Credentials& creds,
                                         const std::string& address, std::uint16_t port,
                                         std::uint64_t min_attempts) {
    auto addr = parse_address(address, port);
    if (!addr)
        return std::unexpected(addr.error());
    auto ns_fd = open_netns_fd(ns);
    if (!ns_fd)
        return std::unexpected(ns_fd.error());
    auto stop = make_pipe();
    auto results = make_pipe();
    if (!stop || !results)
        return fail(errno, "pipe2");
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid == 0) {
        flood_child(parent, ns_fd->get(), stop->read.get(), results->write.get(), creds,
                    addr->first, addr->second, min_attempts);
    }
    Child child(pid);
    results->write.reset();
    stop->read.reset();
    char ready = 0;
    if (!read_exact(results->read.get(), &ready, 1, Clock::now() + 10s) || ready != 'R') {
        return fail(0, "connect flood did not start");
    }
    return ConnectFlood(std::move(child), std::move(stop->write), std::move(results->read));
}

Result<ConnectFlood::Counts> ConnectFlood::finish(Millis timeout) {
    stop_.reset();
    Counts counts;
    if (!read_exact(results_.get(), &counts, sizeof counts, Clock::now() + timeout)) {
        return fail(ETIMEDOUT, "connect flood did not report");
    }
    (void)child_.wait_for(5s);
    return counts;
}

Result<std::uint64_t> tcp_ext_counter(const Netns& ns, const std::string& name) {
    const RunResult r = run(ns, {"cat", "/proc/net/netstat"});
    if (r.exit_code != 0)
        return fail(0, "read /proc/net/netstat", r.describe());
    // Pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 1 2 ...".
    std::istringstream lines(r.out);
    std::string names;
    std::string values;
    while (std::getline(lines, names) && std::getline(lines, values)) {
        if (!names.starts_with("TcpExt:"))
            continue;
        std::istringstream n(names);
        std::istringstream v(values);
        std::string key;
        std::string value;
        while (n >> key && v >> value) {
            if (key == name)
                return std::stoull(value);
        }
    }
    return fail(ENOENT, "TcpExt counter " + name, "not in /proc/net/netstat");
}

// ---- nft ----------------------------------------------------------------------------

Result<std::string> nft_list_table(const Netns& ns, const std::string& table) {
    const RunResult r = run(ns, {"nft", "list", "table", "inet", table});
    if (r.exit_code != 0)
        return fail(0, "nft list table inet " + table, r.describe());
    std::string text = r.out;
    // nft prints this when iptables-nft also manages the table; it is not part of
    // the table's text.
    if (text.rfind("# Warning: table", 0) == 0) {
        const std::size_t eol = text.find('\n');
        text.erase(0, eol == std::string::npos ? text.size() : eol + 1);
    }
    return text;
}

}  // namespace smtpfence::itest
