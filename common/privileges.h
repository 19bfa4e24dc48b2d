// Least privilege inside the process: after its sockets are open, each process drops
// (libcap-ng) to the capabilities it still needs, in one visible step, and can read back
// what it holds. The sets are defined here, once, for the code that drops them, the
// tests that check them and docs/least-privilege.md that documents them.
//
// Both processes stay uid 0: the daemon writes root's files (/etc/smtpfence/allow.list,
// the state directory) and forks the child of `smtpfencectl test USER` that becomes USER;
// the worker writes the state directory. As uid 0 without CAP_DAC_OVERRIDE, a process
// still opens what root owns (owner permission bits), and nothing else.
#pragma once

#include <linux/capability.h>
#include <sys/types.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace smtpfence {

// A set of Linux capabilities (CAP_CHOWN = 0 ... CAP_CHECKPOINT_RESTORE = 40), as the
// 64-bit mask the kernel shows in /proc/PID/status.
class CapabilitySet {
  public:
    constexpr CapabilitySet() = default;
    constexpr CapabilitySet(std::initializer_list<unsigned> caps) {
        for (const unsigned cap : caps)
            mask_ |= bit(cap);
    }
    [[nodiscard]] static constexpr CapabilitySet from_mask(std::uint64_t mask) {
        CapabilitySet s;
        s.mask_ = mask;
        return s;
    }

    [[nodiscard]] constexpr std::uint64_t mask() const { return mask_; }
    [[nodiscard]] constexpr bool empty() const { return mask_ == 0; }
    [[nodiscard]] constexpr bool contains(unsigned cap) const { return (mask_ & bit(cap)) != 0; }
    [[nodiscard]] constexpr bool subset_of(CapabilitySet other) const {
        return (mask_ & ~other.mask_) == 0;
    }
    // The capability numbers, ascending.
    [[nodiscard]] std::vector<unsigned> members() const;
    // "CAP_CHOWN, CAP_NET_ADMIN", or "none".
    [[nodiscard]] std::string to_string() const;

    friend constexpr CapabilitySet operator|(CapabilitySet a, CapabilitySet b) {
        return from_mask(a.mask_ | b.mask_);
    }
    friend constexpr CapabilitySet operator&(CapabilitySet a, CapabilitySet b) {
        return from_mask(a.mask_ & b.mask_);
    }
    // What a holds and b does not.
    friend constexpr CapabilitySet operator-(CapabilitySet a, CapabilitySet b) {
        return from_mask(a.mask_ & ~b.mask_);
    }
    friend constexpr bool operator==(CapabilitySet a, CapabilitySet b) = default;

  private:
    // Numbers past 63 cannot be in a 64-bit mask; they are ignored.
    [[nodiscard]] static constexpr std::uint64_t bit(unsigned cap) {
        return cap < 64 ? std::uint64_t{1} << cap : 0;
    }
    std::uint64_t mask_ = 0;
};

// "CAP_NET_ADMIN" for 12; "CAP_63" for a number this build has no name for.
[[nodiscard]] std::string capability_name(unsigned cap);
// 12 for "CAP_NET_ADMIN" (or "cap_net_admin", "net_admin"); nullopt when unknown.
[[nodiscard]] std::optional<unsigned> capability_from_name(std::string_view name);

// ---- the documented sets -------------------------------------------------------------

// smtpfenced, effective = permitted:
//   CAP_NET_ADMIN  nftables and NFQUEUE netlink (nfnetlink checks it on every message:
//                  reloads, allowlist changes, the queue it binds for each worker) and
//                  the nftables event group it joins; SO_RCVBUFFORCE;
//   CAP_SETUID, CAP_SETGID  the child of `smtpfencectl test USER` becomes USER
//                  (setgroups, setgid, setuid) before it connects.
inline constexpr CapabilitySet kDaemonCapabilities{CAP_NET_ADMIN, CAP_SETUID, CAP_SETGID};

// smtpfence-worker, effective = permitted:
//   CAP_NET_ADMIN        verdicts and counter reads go through nfnetlink, which checks
//                        it per message (of the sender, not only of the socket's opener);
//   CAP_SYS_PTRACE       readlink of /proc/PID/{exe,cwd,fd/N} of another uid's process
//                        (ptrace read access);
//   CAP_DAC_READ_SEARCH  listing another uid's /proc/PID/fd (mode 0500, owner the uid).
inline constexpr CapabilitySet kWorkerCapabilities{CAP_NET_ADMIN, CAP_SYS_PTRACE,
                                                   CAP_DAC_READ_SEARCH};
// With the DirectAdmin pipeline the worker writes mail:mail files under /etc/virtual:
//   CAP_DAC_OVERRIDE  reading the limits, appending to mail's 0660 files, creating files
//                     in its 0750 folders; it lets the worker list /proc/PID/fd as well,
//                     so CAP_DAC_READ_SEARCH (which adds open_by_handle_at) is not kept;
//   CAP_CHOWN         handing the files and usage/ it creates to mail:mail.
// Not CAP_FOWNER: the sink changes the mode only of what it has just created (root's
// file then) and before it hands it to mail.
inline constexpr CapabilitySet kWorkerDaCapabilities{CAP_NET_ADMIN, CAP_SYS_PTRACE,
                                                     CAP_DAC_OVERRIDE, CAP_CHOWN};
[[nodiscard]] constexpr CapabilitySet worker_capabilities(bool da_pipeline) {
    return da_pipeline ? kWorkerDaCapabilities : kWorkerCapabilities;
}

// What iptables-save needs, which the daemon runs to see CSF's own rules: netlink
// (iptables-nft-save) and the raw socket of the legacy get-entries interface
// (iptables-legacy-save).
inline constexpr CapabilitySet kIptablesSaveCapabilities{CAP_NET_ADMIN, CAP_NET_RAW};

// The daemon's bounding set. A program that uid 0 executes receives the bounding set as
// its permitted and effective sets, so it is the union of what the daemon's children
// need: the worker (both variants), iptables-save, and CAP_SETPCAP, which the worker
// uses once to shrink its own bounding set to its own capabilities. Everything else
// (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_KILL, ...) is gone for good.
inline constexpr CapabilitySet kDaemonBoundingSet =
    kDaemonCapabilities | kWorkerCapabilities | kWorkerDaCapabilities | kIptablesSaveCapabilities |
    CapabilitySet{CAP_SETPCAP};

// ---- reading and dropping ------------------------------------------------------------

// The capability sets of a process, as /proc/PID/status shows them.
struct CapabilityReport {
    CapabilitySet inheritable;  // CapInh
    CapabilitySet permitted;    // CapPrm
    CapabilitySet effective;    // CapEff
    CapabilitySet bounding;     // CapBnd
    CapabilitySet ambient;      // CapAmb
    unsigned threads = 0;       // Threads: capabilities belong to each thread
    bool no_new_privs = false;  // NoNewPrivs
};

// Parses the text of a /proc/PID/status file (source names it in errors). Every one of
// CapInh, CapPrm, CapEff, CapBnd and CapAmb must be there, once, as 1-16 hex digits; an
// error names the line ("/proc/1/status:40: CapEff: \"xyz\" is not a hex capability
// mask"). Threads and NoNewPrivs are read when present; other lines are ignored.
[[nodiscard]] Result<CapabilityReport> parse_proc_status_capabilities(std::string_view text,
                                                                      std::string_view source);

// /proc/self/status, and /proc/PID/status of another process.
[[nodiscard]] Result<CapabilityReport> current_capabilities();
[[nodiscard]] Result<CapabilityReport> capabilities_of(pid_t pid);

// Drops the process to exactly `keep` (effective = permitted = keep; inheritable and
// ambient empty) and its bounding set to `bounding` (keep must be a subset of it), with
// libcap-ng, then reads /proc/self/status back and checks that this is what it holds.
// The bounding set only ever shrinks: a capability already out of it (systemd's
// CapabilityBoundingSet=) stays out and is no error. Capabilities belong to each thread:
// call it before any thread is started; a process with more than one thread is refused.
//
// Needs the process to hold everything it keeps (in its permitted set) and, when the
// bounding set shrinks, CAP_SETPCAP (dropped as well unless kept). An error names the
// capabilities at fault ("cannot keep CAP_SYS_PTRACE: not in the permitted set ...").
//
// When the effective uid is not 0 (unit tests, a user trying the daemon) nothing is
// changed: it succeeds only if the process holds no capability (effective, permitted or
// ambient) beyond `keep`, and names them otherwise. The bounding set of such a process
// is left alone (lowering it takes CAP_SETPCAP, which it does not have).
[[nodiscard]] Result<void> drop_to(CapabilitySet keep, CapabilitySet bounding);

// PR_SET_NO_NEW_PRIVS: no later execve can gain privileges (setuid bits, file
// capabilities, root's implicit full set). For processes that exec nothing.
[[nodiscard]] Result<void> forbid_new_privileges();

}  // namespace smtpfence
