// Who is behind a SYN: the socket (sock_diag), the process holding it (/proc), and the
// hosting account it belongs to (the way DirectAdmin's Exim attributes a send).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "nfq/packet.h"
#include "policy/accounts.h"

namespace smtpfence::nfq {

struct SocketId {
    std::uint64_t inode = 0;
    std::uint32_t uid = 0;
};

// Looks up the TCP socket of flow (its local side is flow.src/sport) with
// NETLINK_SOCK_DIAG (inet_diag, SYN_SENT state included). nullopt when there is no
// such socket any more; an error only when sock_diag itself fails.
//
// The first request is an exact lookup (the kernel's own hash lookup, cheap however many
// sockets the server has). It cannot see a socket bound to a device (SO_BINDTODEVICE,
// VRF), so when it finds nothing, a dump of the SYN_SENT sockets is searched.
// A socket without an inode (an orphan, a TIME_WAIT entry) counts as no socket.
[[nodiscard]] Result<std::optional<SocketId>> find_socket(const Flow& flow);

// The two ways of find_socket, one at a time (for tests and diagnostics).
enum class SocketLookup {
    exact,  // the exact lookup in flow's family
    dump,   // the SYN_SENT dump of flow's family; for IPv4 also of the AF_INET6 table,
            // where a dual-stack socket connecting to ::ffff:a.b.c.d is listed
};
[[nodiscard]] Result<std::optional<SocketId>> find_socket_by(const Flow& flow, SocketLookup how);

// Bounds on what we copy from /proc, so a hostile process cannot make us allocate
// without limit: a command line of 100 MB is cut to kMaxCmdline bytes.
inline constexpr std::size_t kMaxCmdline = 4096;
inline constexpr std::size_t kMaxPath = 4096;
// At most this many /proc/PID/fd entries are read per find_process: a user who opens a
// million descriptors makes the search give up (the attempt is still counted, only not
// explained) instead of stalling the worker for seconds.
inline constexpr std::size_t kMaxFdsScanned = 200000;

struct ProcessInfo {
    pid_t pid = 0;
    std::string exe;      // readlink /proc/PID/exe ("" when unreadable)
    std::string cwd;      // readlink /proc/PID/cwd
    std::string cmdline;  // NULs replaced by spaces, cut to kMaxCmdline
    bool truncated_cmdline = false;
};

// Finds the process that holds the socket with this inode among the processes owned
// by uid (scanning /proc/PID/fd for "socket:[inode]"). proc_root is "/proc" except in
// tests. nullopt when no process holds it (already closed, process gone).
// The owner of /proc/PID is the process's effective uid, even for a process that made
// itself non-dumpable (only the files inside turn root's then). Reading another user's
// /proc/PID/fd takes CAP_DAC_READ_SEARCH (the directory is 0500) and CAP_SYS_PTRACE
// (ptrace read access); without them those processes are skipped.
[[nodiscard]] std::optional<ProcessInfo> find_process(std::uint64_t inode, std::uint32_t uid,
                                                      const std::string& proc_root = "/proc");

// Reads exe/cwd/cmdline of pid (bounded).
[[nodiscard]] std::optional<ProcessInfo> read_process(pid_t pid,
                                                      const std::string& proc_root = "/proc");

// Shared web server accounts whose sends are billed by working directory.
inline const std::vector<std::string> kDefaultWebUsers = {"apache", "nobody", "webapps",
                                                          "www-data"};

// The hosting account of an attempt, as Exim's DirectAdmin integration does it: the
// uid's account name; for a web server uid, the account whose home directory contains
// cwd (longest home that is a path prefix: /home/alice/domains/x -> alice, not
// /home/al); "unknown" when the uid has no account or no home matches.
[[nodiscard]] std::string attribute_account(std::uint32_t uid, const std::string& cwd,
                                            const AccountDb& accounts,
                                            const std::vector<std::string>& web_users);

}  // namespace smtpfence::nfq
