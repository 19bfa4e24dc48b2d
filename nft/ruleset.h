// The desired kernel state (RulesetSpec) and its translation into libnftnl objects.
// Each rule is defined once, as the nft text that `nft list` shows for it and the
// expressions that make it, side by side, so the dry-run text, the golden tests and
// the kernel's own listing can be compared rule for rule.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "nft/batch.h"
#include "nft/dest_range.h"
#include "nft/handles.h"

namespace smtpfence::nft {

// How blocked SYNs reach the worker (see DESIGN.md: the native `queue` expression is
// missing on some kernels, the xtables NFQUEUE target through nft_compat works there).
enum class QueueMode {
    None,    // neither available: no observe chain (the kernel still blocks and counts)
    Native,  // nft `queue` expression
    Xt,      // xtables NFQUEUE target rev 3 through nft_compat
};

enum class Verdict { Reset, Drop };

[[nodiscard]] const char* to_string(QueueMode mode);

struct RulesetSpec {
    std::string table = "smtpfence";
    std::vector<std::uint16_t> ports{25, 465, 587};
    std::set<std::uint32_t> allow_uids{0};
    std::set<std::uint32_t> allow_gids;
    bool allow_local = true;
    Verdict verdict = Verdict::Reset;
    QueueMode queue = QueueMode::Xt;
    std::uint16_t queue_num = 2525;
    std::uint32_t observe_rate = 20;  // per uid per second queued to the worker
    std::uint32_t observe_burst = 40;
    // CSF's SMTP_REDIRECT: the blocked uids' SYNs are redirected to the local MTA (same
    // port) by a nat chain instead of being refused; counted there, once.
    bool redirect = false;
    // CSF's DROP_OUT_LOGGING: a kernel log line per refused SYN, with CSF's prefixes and
    // rate limit; with log_uid (DROP_UID_LOGGING) the line carries UID= and GID=.
    bool log_blocked = false;
    bool log_uid = false;
    // The table is owned by the netlink socket that creates it (NFT_TABLE_F_OWNER):
    // no other process can change or delete it, `nft flush ruleset` passes it by; and
    // it is persistent (NFT_TABLE_F_PERSIST, Linux 6.9): when that socket closes (the
    // daemon stops or crashes) it stays in force, orphaned, until the next daemon
    // adopts it. Only with kernels that have both (Engine::probe_ownership).
    bool owned = false;
    // The kernel gives each element a rule adds to a set a copy of the set's stateful
    // expression (NFT_SET_EXPR, Linux 5.11; Engine::probe_set_expressions). Without it
    // (Linux 5.10) `blocked` has no counter of its own and each rule that adds to it
    // carries the counter, `update @blocked { meta skuid counter }`: the same per-uid
    // counts (docs/platforms.md#what-each-kernel-lacks).
    bool set_expressions = true;
    // Relay exceptions (docs/relay-exceptions.md): who may reach which destinations
    // despite the block, as the elements of the six dest_* sets. Ranges of one set and
    // id must not overlap (the kernel refuses overlapping intervals).
    std::set<DestRange> dest;
};

// Table flags (linux/netfilter/nf_tables.h; Debian 12's headers predate PERSIST).
inline constexpr std::uint32_t kTableFlagOwner = 0x2;
inline constexpr std::uint32_t kTableFlagPersist = 0x4;
inline constexpr std::uint32_t kTableFlagsOwned = kTableFlagOwner | kTableFlagPersist;

// Names of the objects in our table: part of the contract with tests, the worker
// (which reads `blocked`) and admins reading `nft list table inet smtpfence`.
inline constexpr const char* kSetPorts = "ports";
inline constexpr const char* kSetAllowUid = "allow_uid";
inline constexpr const char* kSetAllowGid = "allow_gid";
inline constexpr const char* kSetBlocked = "blocked";
inline constexpr const char* kSetObserveRate = "observe_rate";
inline constexpr const char* kChainObserve = "observe";
inline constexpr const char* kChainEnforce = "enforce";
inline constexpr const char* kChainJudge = "judge";
// A postrouting chain that drops a SYN shown to the worker that came out of the output
// hook without meeting the judge (docs/internals.md#the-backstop).
inline constexpr const char* kChainBackstop = "backstop";
// The packet-mark bit `sample` sets on a SYN it queues to the worker and `enforce`
// clears before judging it: "queued, not judged yet". A bit no common firewall, VPN or
// container runtime on a hosting server uses (kube-proxy 0x4000/0x8000, Tailscale
// 0xff0000, Cilium 0xf00, WireGuard 0xca6c); on a packet only between the two chains.
inline constexpr std::uint32_t kQueuedMark = 0x20000000;
// The nat chain of SMTP_REDIRECT ("redirect" itself is an nft keyword, so a chain of
// that name could not be written back by `nft -f`).
inline constexpr const char* kChainToMta = "to_mta";
// Regular chains holding the tails of observe and to_mta, one rule per address
// family: they act only on the SYNs no relay exception allows, so that a connection an
// exception allows is neither counted nor queued nor redirected. Only the blocked
// uids' SMTP SYNs jump there; other traffic never meets these rules.
inline constexpr const char* kChainSample = "sample";
inline constexpr const char* kChainDivert = "divert";

// nftables' datatype numbers (src/datatype.h), stored as a set's key type so that
// `nft list` prints `type uid` and the elements in their natural notation.
inline constexpr std::uint32_t kTypeIpv4Addr = 7;
inline constexpr std::uint32_t kTypeIpv6Addr = 8;
inline constexpr std::uint32_t kTypeInetService = 13;
inline constexpr std::uint32_t kTypeUid = 24;
inline constexpr std::uint32_t kTypeGid = 25;

// The kernel log lines CSF wrote for blocked outgoing SYNs (its LOGDROPOUT chain):
// lfd's UID tracking and admins' greps look for these prefixes. One token bucket per
// address family, 30 a minute with a burst of 5, as CSF's `-m limit --limit 30/m
// --limit-burst 5` in iptables and ip6tables.
inline constexpr const char* kLogPrefixIpv4 = "Firewall: *TCP_OUT Blocked* ";
inline constexpr const char* kLogPrefixIpv6 = "Firewall: *TCP6OUT Blocked* ";
inline constexpr std::uint32_t kLogPerMinute = 30;
inline constexpr std::uint32_t kLogBurst = 5;

// Capacity of the per-uid dynamic sets: uid_t spans 32 bits but a server has far fewer
// active uids; 65536 distinct blocked uids before `update` stops adding new ones.
inline constexpr std::uint32_t kDynamicSetSize = 65536;

struct BuiltRule {
    std::string chain;
    std::string text;                     // as `nft list` prints it
    std::vector<std::string> expr_names;  // one per expression, for error messages
    RulePtr rule;
};

struct BuiltSet {
    std::string name;
    std::vector<std::string> header;    // the lines inside `set NAME { ... }` before elements
    std::vector<std::string> elements;  // as nft prints them, in sorted order
    std::vector<ElementKey> keys;       // the same elements as the kernel stores them
    SetPtr set;
    std::vector<ElementKey> key_ends{};  // interval sets: the last key of each element
    // nft prints five numbers per line, but one element per line for concatenations.
    std::size_t elements_per_line = 5;
};

struct BuiltChain {
    std::string name;
    std::string header;  // "type filter hook output priority filter - 10; policy accept;" or ""
    ChainPtr chain;
};

struct Ruleset {
    std::string table;
    bool owned = false;
    TablePtr table_obj;  // with the ownership flags when owned
    std::vector<BuiltSet> sets;
    std::vector<BuiltChain> chains;
    std::vector<BuiltRule> rules;  // in chain order
};

[[nodiscard]] Ruleset build_ruleset(const RulesetSpec& spec);

// uid/gid values as set element keys (host byte order, 4 bytes).
[[nodiscard]] std::vector<ElementKey> u32_keys(const std::set<std::uint32_t>& values);

// A bare table object (name + family), for delete / existence operations.
[[nodiscard]] TablePtr build_table(const std::string& table);

// A set object with its identity and key (family inet, table, name, key type and
// length, the batch-local id that rules may refer to it by).
[[nodiscard]] SetPtr build_set(const std::string& table, const char* name, std::uint32_t key_type,
                               std::uint32_t key_len, std::uint32_t id);

// A bare chain object (family, table, name): a regular chain, or one to delete.
[[nodiscard]] ChainPtr build_chain(const std::string& table, const std::string& chain);

// Fills an xtables "target" expression's info with NFQUEUE v3 (queue num, bypass).
void set_nfqueue_info(nftnl_expr* target, std::uint16_t queue_num);

// The table as `nft list table inet NAME` (nftables 1.0.6) prints it right after apply;
// an owned table as it lists while smtpfenced owns it.
[[nodiscard]] std::string render_nft(const Ruleset& ruleset);

// libnftnl's bytecode text per rule ("[ meta load skuid => reg 1 ]" lines), the same
// notation as `nft --debug=netlink`, for golden tests.
[[nodiscard]] std::string render_bytecode(const Ruleset& ruleset);

}  // namespace smtpfence::nft
