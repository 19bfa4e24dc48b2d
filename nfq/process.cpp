#include "nfq/process.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>
#include <string_view>

#include "common/fd.h"
#include "common/handles.h"

namespace smtpfence::nfq {
namespace {

// ---------------------------------------------------------------------------------------
// sock_diag

// TCP states as the kernel numbers them (include/net/tcp_states.h); idiag_states is a
// bit mask of 1 << state.
constexpr std::uint8_t kTcpSynSent = 2;
constexpr std::uint8_t kTcpTimeWait = 6;
constexpr std::uint8_t kTcpListen = 10;
constexpr std::uint8_t kTcpNewSynRecv = 12;

// A dump reply comes in datagrams of up to 32 KiB (netlink_dump grows its skb to what
// the reader's earlier recvmsg could hold, capped at 32 KiB); a smaller buffer would cut
// messages (MSG_TRUNC, which libmnl reports as ENOSPC).
constexpr std::size_t kReceiveBuffer = 32768;

// The kernel answers sock_diag synchronously; a reply that takes longer than this means
// something is badly wrong and the worker must not hang on it.
constexpr long kReceiveTimeoutSeconds = 2;

std::array<std::uint8_t, 16> v4_mapped(const std::array<std::uint8_t, 16>& v4) {
    std::array<std::uint8_t, 16> out{};
    out[10] = 0xff;
    out[11] = 0xff;
    std::copy_n(v4.begin(), 4, out.begin() + 12);
    return out;
}

struct Search {
    Flow flow;
    std::optional<SocketId> found;
};

// Whether a reply names flow's socket. A reply gives the socket in its own family: a
// dual-stack AF_INET6 socket behind an IPv4 flow comes back with mapped addresses, from
// the AF_INET6 dump and from the AF_INET exact lookup alike.
bool matches(const inet_diag_msg& msg, const Flow& flow) {
    if (ntohs(msg.id.idiag_sport) != flow.sport || ntohs(msg.id.idiag_dport) != flow.dport)
        return false;
    const auto same = [&](const std::array<std::uint8_t, 16>& src,
                          const std::array<std::uint8_t, 16>& dst, std::size_t size) {
        return std::memcmp(msg.id.idiag_src, src.data(), size) == 0 &&
               std::memcmp(msg.id.idiag_dst, dst.data(), size) == 0;
    };
    if (msg.idiag_family == AF_INET)
        return flow.family == AF_INET && same(flow.src, flow.dst, 4);
    if (msg.idiag_family != AF_INET6)
        return false;
    if (flow.family == AF_INET6)
        return same(flow.src, flow.dst, 16);
    return flow.family == AF_INET && same(v4_mapped(flow.src), v4_mapped(flow.dst), 16);
}

// Called by libmnl for each message of a reply; never throws.
int on_diag_message(const nlmsghdr* nlh, void* data) {
    auto& search = *static_cast<Search*>(data);
    if (nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
        mnl_nlmsg_get_payload_len(nlh) < sizeof(inet_diag_msg)) {
        return MNL_CB_OK;
    }
    inet_diag_msg msg;
    std::memcpy(&msg, mnl_nlmsg_get_payload(nlh), sizeof msg);
    // An exact lookup falls back to a listener bound to our local port, and may return
    // a TIME_WAIT or request socket: none of them is the socket that sent the SYN.
    if (!matches(msg, search.flow) || msg.idiag_state == kTcpListen ||
        msg.idiag_state == kTcpTimeWait || msg.idiag_state == kTcpNewSynRecv ||
        msg.idiag_inode == 0) {
        return MNL_CB_OK;
    }
    if (!search.found)
        search.found = SocketId{msg.idiag_inode, msg.idiag_uid};
    return MNL_CB_OK;
}

class DiagSocket {
  public:
    static Result<DiagSocket> open() {
        MnlSocketPtr sock(mnl_socket_open2(NETLINK_SOCK_DIAG, SOCK_CLOEXEC));
        if (!sock)
            return fail(errno, "open netlink socket (NETLINK_SOCK_DIAG)");
        if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0)
            return fail(errno, "bind netlink socket (NETLINK_SOCK_DIAG)");
        const timeval timeout{kReceiveTimeoutSeconds, 0};
        if (setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout,
                       sizeof timeout) != 0) {
            return fail(errno, "set receive timeout on the sock_diag socket");
        }
        return DiagSocket(std::move(sock));
    }

    // Exact lookup. idiag_src/sport are the socket's local side (as ss shows them); the
    // kernel looks the 4-tuple up as it would for a packet coming back from idiag_dst,
    // so it finds established and SYN_SENT sockets (both in the established hash) and,
    // failing those, a listener on our local port, which on_diag_message drops. Like
    // that packet lookup, it matches a socket bound to a device only when idiag_if names
    // that device: we do not know the device, hence the dump fallback. ENOENT is "no
    // such socket".
    Result<std::optional<SocketId>> lookup(const Flow& flow) {
        inet_diag_req_v2 req = request(flow, flow.family);
        // Exact lookups ignore idiag_states; the cookie must be "none", else the
        // kernel compares it with the socket's and answers ESTALE/ENOENT.
        req.idiag_states = ~0U;
        req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
        req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
        return run(flow, req, NLM_F_REQUEST | NLM_F_ACK);
    }

    // Dump of the SYN_SENT sockets of one family's table, matched here. The kernel walks
    // its whole established hash for this, so it is only the fallback.
    Result<std::optional<SocketId>> dump_syn_sent(const Flow& flow, int table) {
        inet_diag_req_v2 req = request(flow, table);
        req.idiag_states = 1U << kTcpSynSent;
        return run(flow, req, NLM_F_REQUEST | NLM_F_DUMP);
    }

  private:
    explicit DiagSocket(MnlSocketPtr sock)
        : sock_(std::move(sock)), buffer_(std::make_unique<std::uint8_t[]>(kReceiveBuffer)) {}

    // The request for flow in the sock_diag table of family `table`; an IPv4 flow in the
    // AF_INET6 table is written with IPv4-mapped addresses (::ffff:a.b.c.d).
    static inet_diag_req_v2 request(const Flow& flow, int table) {
        inet_diag_req_v2 req{};
        req.sdiag_family = static_cast<std::uint8_t>(table);
        req.sdiag_protocol = IPPROTO_TCP;
        req.id.idiag_sport = htons(flow.sport);
        req.id.idiag_dport = htons(flow.dport);
        if (table == AF_INET6 && flow.family == AF_INET) {
            std::memcpy(req.id.idiag_src, v4_mapped(flow.src).data(), 16);
            std::memcpy(req.id.idiag_dst, v4_mapped(flow.dst).data(), 16);
        } else {
            const std::size_t size = table == AF_INET6 ? 16 : 4;
            std::memcpy(req.id.idiag_src, flow.src.data(), size);
            std::memcpy(req.id.idiag_dst, flow.dst.data(), size);
        }
        return req;
    }

    Result<std::optional<SocketId>> run(const Flow& flow, const inet_diag_req_v2& req,
                                        std::uint16_t flags) {
        // Room for the header and the request, aligned for nlmsghdr.
        alignas(nlmsghdr) std::array<char, MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof req)> out{};
        nlmsghdr* nlh = mnl_nlmsg_put_header(out.data());
        nlh->nlmsg_type = SOCK_DIAG_BY_FAMILY;
        nlh->nlmsg_flags = flags;
        nlh->nlmsg_seq = ++seq_;
        std::memcpy(mnl_nlmsg_put_extra_header(nlh, sizeof req), &req, sizeof req);
        const char* what = (flags & NLM_F_DUMP) != 0 ? "sock_diag dump" : "sock_diag lookup";

        if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0)
            return fail(errno, std::string("send ") + what);

        Search search{flow, std::nullopt};
        const std::uint32_t portid = mnl_socket_get_portid(sock_.get());
        while (true) {
            const ssize_t n = mnl_socket_recvfrom(sock_.get(), buffer_.get(), kReceiveBuffer);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                const int code = errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
                return fail(code, std::string("receive ") + what + " reply");
            }
            const int rc = mnl_cb_run(buffer_.get(), static_cast<std::size_t>(n), seq_, portid,
                                      on_diag_message, &search);
            if (rc == MNL_CB_STOP)
                return search.found;
            if (rc < 0) {
                // The exact lookup's "no such socket".
                if (errno == ENOENT)
                    return std::optional<SocketId>{};
                return fail(errno, std::string(what) + " reply");
            }
        }
    }

    MnlSocketPtr sock_;
    std::unique_ptr<std::uint8_t[]> buffer_;
    std::uint32_t seq_ = 0;
};

// ---------------------------------------------------------------------------------------
// /proc

// A directory stream over a descriptor of ours (fdopendir takes the descriptor it is
// given, so it gets a duplicate).
DirPtr open_dir_stream(int dirfd) {
    const int copy = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return nullptr;
    DirPtr dir(fdopendir(copy));
    if (!dir)
        ::close(copy);
    return dir;
}

// The next entry of a stream that only this call uses. readdir is only unsafe when
// threads share one stream (glibc, and POSIX since 2024); readdir_r is deprecated.
const dirent* next_entry(DIR* dir) {
    return readdir(dir);  // NOLINT(concurrency-mt-unsafe): the stream is ours alone
}

std::optional<pid_t> parse_pid(std::string_view name) {
    pid_t pid = 0;
    const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (ec != std::errc() || end != name.data() + name.size() || pid <= 0 || name.front() == '0') {
        return std::nullopt;
    }
    return pid;
}

// readlinkat, cut at kMaxPath bytes; "" when unreadable. readlink never follows the
// link, so what a process points exe/cwd/fds at is only reported, never opened.
std::string read_link(int dirfd, const char* name) {
    std::array<char, kMaxPath> buf;
    const ssize_t n = readlinkat(dirfd, name, buf.data(), buf.size());
    if (n <= 0)
        return {};
    return std::string(buf.data(), static_cast<std::size_t>(n));
}

// /proc/PID/cmdline: arguments separated (and ended) by NULs; read at most
// kMaxCmdline + 1 bytes so a longer one is known to be cut.
void read_cmdline(int piddir, ProcessInfo& info) {
    const UniqueFd fd(openat(piddir, "cmdline", O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid())
        return;
    std::string text(kMaxCmdline + 1, '\0');
    std::size_t size = 0;
    while (size < text.size()) {
        const ssize_t n = ::read(fd.get(), text.data() + size, text.size() - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size += static_cast<std::size_t>(n);
    }
    info.truncated_cmdline = size > kMaxCmdline;
    text.resize(std::min(size, kMaxCmdline));
    if (!info.truncated_cmdline) {
        while (!text.empty() && text.back() == '\0')
            text.pop_back();
    }
    std::replace(text.begin(), text.end(), '\0', ' ');
    info.cmdline = std::move(text);
}

ProcessInfo read_process_at(int piddir, pid_t pid) {
    ProcessInfo info;
    info.pid = pid;
    info.exe = read_link(piddir, "exe");
    info.cwd = read_link(piddir, "cwd");
    read_cmdline(piddir, info);
    return info;
}

UniqueFd open_pid_dir(int proc, const char* name) {
    return UniqueFd(openat(proc, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
}

// Whether the process behind piddir holds a descriptor reading exactly `target`.
// Every readlink is charged to budget; false once it runs out.
bool holds(int piddir, std::string_view target, std::size_t& budget) {
    const UniqueFd fds(openat(piddir, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!fds.valid())
        return false;  // gone, a zombie, or not ours to read
    const DirPtr dir = open_dir_stream(fds.get());
    if (!dir)
        return false;
    std::array<char, 64> buf;  // "socket:[18446744073709551615]" fits
    while (const dirent* entry = next_entry(dir.get())) {
        if (entry->d_name[0] == '.')
            continue;
        if (budget == 0)
            return false;
        --budget;
        const ssize_t n = readlinkat(fds.get(), entry->d_name, buf.data(), buf.size());
        if (n > 0 && std::string_view(buf.data(), static_cast<std::size_t>(n)) == target)
            return true;
    }
    return false;
}

}  // namespace

namespace {

Result<std::optional<SocketId>> find_with(DiagSocket& sock, const Flow& flow, SocketLookup how) {
    // One exact lookup serves both an AF_INET socket and a dual-stack AF_INET6 socket
    // connected to ::ffff:a.b.c.d: TCP has one established hash for both families and
    // the kernel matches on the IPv4 4-tuple, which the mapped socket has too.
    if (how == SocketLookup::exact)
        return sock.lookup(flow);
    auto found = sock.dump_syn_sent(flow, flow.family);
    if (!found || *found || flow.family != AF_INET)
        return found;
    // A dump lists sockets by their own family: the dual-stack socket is only in the
    // AF_INET6 table.
    return sock.dump_syn_sent(flow, AF_INET6);
}

}  // namespace

Result<std::optional<SocketId>> find_socket(const Flow& flow) {
    auto sock = DiagSocket::open();
    if (!sock)
        return std::unexpected(sock.error());
    auto found = find_with(*sock, flow, SocketLookup::exact);
    if (!found || *found)
        return found;
    return find_with(*sock, flow, SocketLookup::dump);
}

Result<std::optional<SocketId>> find_socket_by(const Flow& flow, SocketLookup how) {
    auto sock = DiagSocket::open();
    if (!sock)
        return std::unexpected(sock.error());
    return find_with(*sock, flow, how);
}

std::optional<ProcessInfo> find_process(std::uint64_t inode, std::uint32_t uid,
                                        const std::string& proc_root) {
    if (inode == 0)
        return std::nullopt;
    const UniqueFd proc(open(proc_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!proc.valid())
        return std::nullopt;
    const DirPtr dir = open_dir_stream(proc.get());
    if (!dir)
        return std::nullopt;

    // Only the names are collected here, with the owner check: the fd scan below is
    // the expensive part, and it is for the uid's own processes only.
    std::vector<pid_t> owned;
    while (const dirent* entry = next_entry(dir.get())) {
        const auto pid = parse_pid(entry->d_name);
        if (!pid)
            continue;
        struct stat st {};
        if (fstatat(proc.get(), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISDIR(st.st_mode)) {
            continue;  // vanished since it was listed
        }
        if (st.st_uid == uid)
            owned.push_back(*pid);
    }

    const std::string target = "socket:[" + std::to_string(inode) + "]";
    std::size_t budget = kMaxFdsScanned;
    for (const pid_t pid : owned) {
        // Everything about one process is read through one descriptor of its /proc/PID:
        // if the pid is reused meanwhile, reads fail instead of describing the newcomer.
        const UniqueFd piddir = open_pid_dir(proc.get(), std::to_string(pid).c_str());
        if (!piddir.valid())
            continue;
        if (holds(piddir.get(), target, budget))
            return read_process_at(piddir.get(), pid);
        if (budget == 0)
            return std::nullopt;
    }
    return std::nullopt;
}

std::optional<ProcessInfo> read_process(pid_t pid, const std::string& proc_root) {
    if (pid <= 0)
        return std::nullopt;
    const UniqueFd proc(open(proc_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!proc.valid())
        return std::nullopt;
    const UniqueFd piddir = open_pid_dir(proc.get(), std::to_string(pid).c_str());
    if (!piddir.valid())
        return std::nullopt;
    return read_process_at(piddir.get(), pid);
}

namespace {

// home without trailing slashes; "" for homes that say nothing about where a process
// works ("", "/", "/nonexistent").
std::string_view usable_home(std::string_view home) {
    while (!home.empty() && home.back() == '/')
        home.remove_suffix(1);
    if (home.empty() || home.front() != '/' || home == "/nonexistent")
        return {};
    return home;
}

bool is_path_prefix(std::string_view prefix, std::string_view path) {
    return path.starts_with(prefix) && (path.size() == prefix.size() || path[prefix.size()] == '/');
}

}  // namespace

std::string attribute_account(std::uint32_t uid, const std::string& cwd, const AccountDb& accounts,
                              const std::vector<std::string>& web_users) {
    const Account* account = accounts.user_by_uid(uid);
    if (account == nullptr)
        return "unknown";
    const auto is_web_user = [&](const std::string& name) {
        return std::find(web_users.begin(), web_users.end(), name) != web_users.end();
    };
    if (!is_web_user(account->name))
        return account->name;
    // A shared web server uid: the customer is the account whose home holds the working
    // directory. The web users' own homes (/var/www) say nothing about which customer.
    const Account* best = nullptr;
    std::size_t best_length = 0;
    for (const Account& candidate : accounts.accounts()) {
        const std::string_view home = usable_home(candidate.home);
        if (home.empty() || is_web_user(candidate.name) || !is_path_prefix(home, cwd))
            continue;
        if (home.size() > best_length) {  // ties: the first entry in passwd wins
            best = &candidate;
            best_length = home.size();
        }
    }
    return best == nullptr ? "unknown" : best->name;
}

}  // namespace smtpfence::nfq
