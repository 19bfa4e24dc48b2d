#include "nft/ruleset.h"

#include <arpa/inet.h>
#include <libnftnl/common.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "nft/dest_sets.h"
#include "nft/rule_builder.h"

namespace smtpfence::nft {
namespace {

// SMTP_ALLOWLOCAL: a packet to any of the host's own addresses (127.0.0.1, ::1 and
// the addresses of every interface) is routed through the loopback device, whose
// ifindex is 1 in every network namespace. `oif "lo"` reads the route already chosen;
// `fib daddr type local` would do a second FIB lookup per SYN (measured: ~5% of the
// refusal rate with 10,000 allowed users).
constexpr std::uint32_t kLoopbackIfindex = 1;

// nftables' byteorder enum (src/datatype.h): uid/gid keys are host-endian.
constexpr std::uint32_t kByteorderHost = 1;

SetPtr base_set(const std::string& table, const char* name, std::uint32_t key_type,
                std::uint32_t key_len, std::uint32_t id) {
    SetPtr s = build_set(table, name, key_type, key_len, id);
    if (key_type == kTypeUid || key_type == kTypeGid) {
        // nft reads the key byte order from the set's user data; without it, it
        // would print uid 8 as 134217728 (the kernel itself does not care).
        UdataBufPtr udata(nftnl_udata_buf_alloc(64));
        if (!udata)
            throw std::bad_alloc();
        nftnl_udata_put_u32(udata.get(), NFTNL_UDATA_SET_KEYBYTEORDER, kByteorderHost);
        nftnl_set_set_data(s.get(), NFTNL_SET_USERDATA, nftnl_udata_buf_data(udata.get()),
                           nftnl_udata_buf_len(udata.get()));  // copied by libnftnl
    }
    return s;
}

ElementKey key_of(const void* data, std::size_t len) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    return ElementKey(p, p + len);
}

ChainPtr base_chain(const std::string& table, const char* name, int priority,
                    const char* type = "filter", std::uint32_t hook = NF_INET_LOCAL_OUT) {
    ChainPtr c = build_chain(table, name);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, type);
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, hook);
    nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, priority);
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
    return c;
}

// Priorities around NF_IP_PRI_FILTER (0): observe first, enforce after any other
// filter-priority chain, so a reject of ours is also the last word.
constexpr int kObservePriority = -10;
constexpr int kEnforcePriority = 10;
// NF_IP_PRI_RAW: the first in postrouting, so that nothing of ours runs before it there.
constexpr int kBackstopPriority = -300;
// NF_IP_PRI_NAT_DST: the nat output hook runs before both filter chains, so a SYN it
// redirects reaches them already addressed to the local MTA (and routed through lo).
constexpr int kToMtaPriority = -100;
constexpr std::uint32_t kNotQueued = ~kQueuedMark;

}  // namespace

void set_nfqueue_info(nftnl_expr* target, std::uint16_t queue_num) {
    // libnftnl takes ownership of the info buffer (it frees it with free()), so it
    // must come from malloc.
    auto* info = static_cast<xt_NFQ_info_v3*>(std::calloc(1, sizeof(xt_NFQ_info_v3)));
    if (info == nullptr)
        throw std::bad_alloc();
    info->queuenum = queue_num;
    info->queues_total = 1;
    info->flags = NFQ_FLAG_BYPASS;
    nftnl_expr_set(target, NFTNL_EXPR_TG_INFO, info, sizeof *info);
    // NOLINTNEXTLINE(clang-analyzer-unix.Malloc): the expression owns info now.
}

const char* to_string(QueueMode mode) {
    switch (mode) {
        case QueueMode::None:
            return "none";
        case QueueMode::Native:
            return "native";
        case QueueMode::Xt:
            return "xt";
    }
    return "?";
}

TablePtr build_table(const std::string& table) {
    TablePtr t = make_table();
    nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table.c_str());
    return t;
}

SetPtr build_set(const std::string& table, const char* name, std::uint32_t key_type,
                 std::uint32_t key_len, std::uint32_t id) {
    SetPtr s = make_set();
    nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.c_str());
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, key_type);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, key_len);
    nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
    return s;
}

ChainPtr build_chain(const std::string& table, const std::string& chain) {
    ChainPtr c = make_chain();
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, table.c_str());
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, chain.c_str());
    return c;
}

std::vector<ElementKey> u32_keys(const std::set<std::uint32_t>& values) {
    std::vector<ElementKey> keys;
    keys.reserve(values.size());
    for (const std::uint32_t v : values)
        keys.push_back(key_of(&v, sizeof v));
    return keys;
}

namespace {

// --- sets ---------------------------------------------------------------------------

// Exact per-uid SYN counts, kept by the kernel whatever userspace does: the set's
// counter, or without set expressions the rules' (count_blocked).
BuiltSet blocked_set(const std::string& t, bool set_expressions) {
    BuiltSet blocked{kSetBlocked,
                     {"type uid", "size " + std::to_string(kDynamicSetSize), "flags dynamic"},
                     {},
                     {},
                     base_set(t, kSetBlocked, kTypeUid, 4, 4)};
    nftnl_set_set_u32(blocked.set.get(), NFTNL_SET_FLAGS, NFT_SET_EVAL);
    nftnl_set_set_u32(blocked.set.get(), NFTNL_SET_DESC_SIZE, kDynamicSetSize);
    if (set_expressions) {
        blocked.header.emplace_back("counter");
        nftnl_set_add_expr(blocked.set.get(), make_expr("counter").release());  // set owns it
    }
    return blocked;
}

BuiltSet ports_set(const std::string& t, std::vector<std::uint16_t> ports) {
    BuiltSet set{
        kSetPorts, {"type inet_service"}, {}, {}, base_set(t, kSetPorts, kTypeInetService, 2, 1)};
    std::sort(ports.begin(), ports.end());
    ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
    for (const std::uint16_t p : ports) {
        const std::uint16_t be = htons(p);  // inet_service is network byte order
        set.keys.push_back(key_of(&be, sizeof be));
        set.elements.push_back(std::to_string(p));
    }
    return set;
}

// allow_uid or allow_gid: the ids whose SYNs pass.
BuiltSet allow_set(const std::string& t, const char* name, std::uint32_t key_type,
                   const char* type_text, const std::set<std::uint32_t>& ids,
                   std::uint32_t set_id) {
    BuiltSet set{name, {type_text}, {}, u32_keys(ids), base_set(t, name, key_type, 4, set_id)};
    for (const std::uint32_t id : ids)
        set.elements.push_back(std::to_string(id));
    return set;
}

// Per-uid token buckets for the observe chain; entries expire a minute after a uid's
// last blocked SYN so the set does not fill with stale uids.
BuiltSet observe_rate_set(const std::string& t) {
    BuiltSet rate{kSetObserveRate,
                  {"type uid", "size " + std::to_string(kDynamicSetSize), "flags dynamic,timeout",
                   "timeout 1m"},
                  {},
                  {},
                  base_set(t, kSetObserveRate, kTypeUid, 4, 5)};
    nftnl_set_set_u32(rate.set.get(), NFTNL_SET_FLAGS, NFT_SET_EVAL | NFT_SET_TIMEOUT);
    nftnl_set_set_u32(rate.set.get(), NFTNL_SET_DESC_SIZE, kDynamicSetSize);
    nftnl_set_set_u64(rate.set.get(), NFTNL_SET_TIMEOUT, 60000);
    return rate;
}

void add_sets(Ruleset& rs, const RulesetSpec& spec) {
    const std::string& t = spec.table;
    // `blocked` comes first: it is the one set a reload keeps, so it stays the first
    // in the kernel's listing order too, and our text matches `nft list` either way.
    rs.sets.push_back(blocked_set(t, spec.set_expressions));
    rs.sets.push_back(ports_set(t, spec.ports));
    rs.sets.push_back(allow_set(t, kSetAllowUid, kTypeUid, "type uid", spec.allow_uids, 2));
    rs.sets.push_back(allow_set(t, kSetAllowGid, kTypeGid, "type gid", spec.allow_gids, 3));
    if (spec.queue != QueueMode::None)
        rs.sets.push_back(observe_rate_set(t));
    std::uint32_t set_id = 6;
    for (const DestSet set : kDestSets) {
        for (const DestKind kind : {DestKind::Interval, DestKind::Exact})
            rs.sets.push_back(build_dest_set(t, set, kind, spec.dest, set_id++));
    }
}

// --- chains -------------------------------------------------------------------------

void add_chains(Ruleset& rs, const RulesetSpec& spec) {
    const std::string& t = spec.table;
    if (spec.queue != QueueMode::None) {
        rs.chains.push_back({kChainObserve,
                             "type filter hook output priority filter - 10; policy accept;",
                             base_chain(t, kChainObserve, kObservePriority)});
    }
    rs.chains.push_back({kChainEnforce,
                         "type filter hook output priority filter + 10; policy accept;",
                         base_chain(t, kChainEnforce, kEnforcePriority)});
    rs.chains.push_back({kChainJudge, "", build_chain(t, kChainJudge)});
    rs.chains.push_back(
        {kChainBackstop, "type filter hook postrouting priority raw; policy accept;",
         base_chain(t, kChainBackstop, kBackstopPriority, "filter", NF_INET_POST_ROUTING)});
    // A chain added by a reload is listed after the kept ones; so the chains that come
    // and go with SMTP_REDIRECT are last, and the kernel's listing order is the same
    // whether the table was built whole or updated. (An upgrade from a table without
    // sample that has to_mta lists sample after to_mta, and one from a table without
    // the backstop lists it after sample and to_mta, until the next full replace.)
    if (spec.queue != QueueMode::None)
        rs.chains.push_back({kChainSample, "", build_chain(t, kChainSample)});
    if (spec.redirect) {
        rs.chains.push_back({kChainToMta, "type nat hook output priority -100; policy accept;",
                             base_chain(t, kChainToMta, kToMtaPriority, "nat")});
        rs.chains.push_back({kChainDivert, "", build_chain(t, kChainDivert)});
    }
}

// --- rules --------------------------------------------------------------------------
// The helpers below append expressions to a rule and return their nft text.

constexpr std::uint32_t kRtnLocal = RTN_LOCAL;

// With SMTP_REDIRECT on, the server's own addresses pass the filter chains whatever
// SMTP_ALLOWLOCAL says: the nat rule has decided on them already (and counted).
// A redirected SYN is addressed to 127.0.0.1 or ::1 and rerouted through lo, but
// `oif` (the output hook's device, fixed before nat ran) still names the device of
// the original route. So in redirect mode the filter chains also ask where the SYN
// goes now, `fib daddr type local`: it is not counted or queued again, and passes.
bool lo_passes(const RulesetSpec& spec) {
    return spec.allow_local || spec.redirect;
}

// A new connection's SYN to an SMTP port from a uid and gid the allow sets do not
// hold: what the judge would refuse, before its other exceptions.
std::string blocked_syn(RuleBuilder& r) {
    r.smtp_syn()
        .meta(NFT_META_SKUID, "meta skuid")
        .lookup(kSetAllowUid, true, "skuid != @allow_uid")
        .meta(NFT_META_SKGID, "meta skgid")
        .lookup(kSetAllowGid, true, "skgid != @allow_gid");
    return "tcp flags syn / syn,ack tcp dport @ports meta skuid != @allow_uid meta skgid != "
           "@allow_gid ";
}

std::string not_to_lo(RuleBuilder& r) {
    r.meta(NFT_META_OIF, "meta oif").cmp(NFT_CMP_NEQ, &kLoopbackIfindex, 4, "!= lo");
    return "oif != \"lo\" ";
}

// The set's counter (cloned into each element by the kernel) counts every blocked SYN
// per uid; without set expressions the rule gives each new element its counter.
std::string count_blocked(RuleBuilder& r, const RulesetSpec& spec) {
    r.meta(NFT_META_SKUID, "meta skuid");
    if (spec.set_expressions) {
        r.dynset(NFT_DYNSET_OP_UPDATE, kSetBlocked, nullptr, "update @blocked");
        return "update @blocked { meta skuid }";
    }
    r.dynset(NFT_DYNSET_OP_UPDATE, kSetBlocked, make_expr("counter"), "update @blocked counter");
    return "update @blocked { meta skuid counter }";
}

// The SYNs the judge would refuse go on to the sample chain.
BuiltRule observe_rule(const RulesetSpec& spec) {
    RuleBuilder r(spec.table, kChainObserve);
    std::string text = blocked_syn(r);
    if (lo_passes(spec))
        text += not_to_lo(r);
    if (spec.redirect) {
        r.fib_daddr_type("fib daddr type").cmp(NFT_CMP_NEQ, &kRtnLocal, 4, "!= local");
        text += "fib daddr type != local ";
    }
    r.verdict(NFT_JUMP, "jump sample", kChainSample);
    return r.done(text + "jump sample");
}

std::string hex32(std::uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
}

// `update @blocked { meta skuid } add @observe_rate { ... } meta mark set meta mark |
// queued queue ...`: the observe chain's count, per-uid limit, the backstop's bit and
// the queue.
std::string count_and_queue(RuleBuilder& r, const RulesetSpec& spec) {
    std::string text = count_blocked(r, spec) + " ";
    r.meta(NFT_META_SKUID, "meta skuid")
        .dynset(NFT_DYNSET_OP_ADD, kSetObserveRate,
                make_limit(spec.observe_rate, 1, spec.observe_burst), "per-uid limit");
    text += "add @observe_rate { meta skuid limit rate " + std::to_string(spec.observe_rate) +
            "/second burst " + std::to_string(spec.observe_burst) + " packets } ";
    r.meta(NFT_META_MARK, "meta mark")
        .bitwise(4, &kNotQueued, &kQueuedMark, "| queued")
        .meta_set(NFT_META_MARK, "meta mark set");
    text += "meta mark set meta mark | " + hex32(kQueuedMark) + " ";
    if (spec.queue == QueueMode::Native) {
        r.native_queue(spec.queue_num, "queue");
        return text + "queue flags bypass to " + std::to_string(spec.queue_num);
    }
    r.xt_nfqueue(spec.queue_num, "NFQUEUE target");
    return text + "queue num " + std::to_string(spec.queue_num) + " bypass";
}

// Count every blocked SYN that no relay exception allows, then sample it to
// userspace; never decides (bypass: no listener means the packet goes on to the
// enforce chain). One rule per address family. The count is taken here, before the
// queue, because a SYN may wait in the queue while its process exits: after that its
// socket has no owner and `meta skuid` in judge would find nothing to count it by.
void add_sample_rules(Ruleset& rs, const RulesetSpec& spec) {
    for (const bool v6 : {false, true}) {
        RuleBuilder r(spec.table, kChainSample);
        // Two statements: the expressions go into the rule in this order.
        std::string text = no_dest_exception(r, v6) + " ";
        text += count_and_queue(r, spec);
        rs.rules.push_back(r.done(text));
    }
}

// Every SMTP SYN is judged, the queued bit taken off first (for the backstop).
BuiltRule enforce_rule(const std::string& t) {
    RuleBuilder r(t, kChainEnforce);
    const std::uint32_t keep = ~kQueuedMark;
    const std::uint32_t zero = 0;
    r.smtp_syn()
        .meta(NFT_META_MARK, "meta mark")
        .bitwise(4, &keep, &zero, "& ~queued")
        .meta_set(NFT_META_MARK, "meta mark set")
        .verdict(NFT_JUMP, "jump judge", kChainJudge);
    return r.done("tcp flags syn / syn,ack tcp dport @ports meta mark set meta mark & " +
                  hex32(keep) + " jump judge");
}

// `meta skuid @allow_uid accept`, or its gid twin.
BuiltRule accept_listed(const std::string& t, std::uint32_t key, const std::string& meta_key,
                        const std::string& set) {
    const std::string meta = "meta " + meta_key;
    const std::string lookup = "@" + set;
    RuleBuilder r(t, kChainJudge);
    r.meta(key, meta.c_str())
        .lookup(set.c_str(), false, lookup.c_str())
        .verdict(NF_ACCEPT, "accept");
    return r.done(meta + " " + lookup + " accept");
}

// What reaches this point is refused or dropped next: CSF's LOGDROPOUT lines.
void add_log_rules(Ruleset& rs, const RulesetSpec& spec) {
    for (const auto& [family, prefix] :
         {std::pair{NFPROTO_IPV4, kLogPrefixIpv4}, std::pair{NFPROTO_IPV6, kLogPrefixIpv6}}) {
        RuleBuilder r(spec.table, kChainJudge);
        const auto proto = static_cast<std::uint8_t>(family);
        r.meta(NFT_META_NFPROTO, "meta nfproto")
            .cmp(NFT_CMP_EQ, &proto, 1, family == NFPROTO_IPV4 ? "ipv4" : "ipv6")
            .limit_per_minute(kLogPerMinute, kLogBurst, "limit")
            .log(prefix, spec.log_uid, "log");
        // nft leaves out the burst when it is its default of 5, and the level when
        // it is warn.
        static_assert(kLogBurst == 5);
        rs.rules.push_back(r.done(std::string("meta nfproto ") +
                                  (family == NFPROTO_IPV4 ? "ipv4" : "ipv6") + " limit rate " +
                                  std::to_string(kLogPerMinute) + "/minute log prefix \"" + prefix +
                                  "\"" + (spec.log_uid ? " flags skuid" : "")));
    }
}

BuiltRule verdict_rule(const RulesetSpec& spec) {
    RuleBuilder r(spec.table, kChainJudge);
    if (spec.verdict == Verdict::Reset) {
        r.tcp().reject_tcp_reset("reject with tcp reset");
        return r.done("meta l4proto tcp reject with tcp reset");
    }
    r.verdict(NF_DROP, "drop");
    return r.done("drop");
}

// The judge: what passes (lo, the allowed uids and gids, the server's own addresses
// in redirect mode), then what is counted and logged, then the verdict.
void add_judge_rules(Ruleset& rs, const RulesetSpec& spec) {
    const std::string& t = spec.table;
    if (lo_passes(spec)) {
        RuleBuilder r(t, kChainJudge);
        r.meta(NFT_META_OIF, "meta oif")
            .cmp(NFT_CMP_EQ, &kLoopbackIfindex, 4, "== lo")
            .verdict(NF_ACCEPT, "accept");
        rs.rules.push_back(r.done("oif \"lo\" accept"));
    }
    rs.rules.push_back(accept_listed(t, NFT_META_SKUID, "skuid", kSetAllowUid));
    rs.rules.push_back(accept_listed(t, NFT_META_SKGID, "skgid", kSetAllowGid));
    if (spec.redirect) {
        // After the allow rules: only blocked uids' SYNs pay for the route lookup.
        RuleBuilder r(t, kChainJudge);
        r.fib_daddr_type("fib daddr type")
            .cmp(NFT_CMP_EQ, &kRtnLocal, 4, "local")
            .verdict(NF_ACCEPT, "accept");
        rs.rules.push_back(r.done("fib daddr type local accept"));
    }
    // After the allow rules: only blocked uids' SYNs pay for these lookups. The one
    // place where an exception's element counter counts (dest_sets.h says why).
    // Per DestSet the hash first: it holds the common case. One DestSet's two sets
    // never both match (the ranges of one id are disjoint), so which counts is fixed.
    for (const DestSet set : kDestSets) {
        for (const DestKind kind : kDestKinds)
            rs.rules.push_back(dest_accept_rule(t, kChainJudge, set, kind));
    }
    if (spec.queue == QueueMode::None) {
        // Without an observe chain, judge counts (see observe_rule for why it counts
        // there otherwise).
        RuleBuilder r(t, kChainJudge);
        const std::string text = count_blocked(r, spec);
        rs.rules.push_back(r.done(text));
    }
    if (spec.log_blocked)
        add_log_rules(rs, spec);
    rs.rules.push_back(verdict_rule(spec));
}

// The judge's decision, taken before it: the same SYNs it would refuse (ports, not an
// allowed uid or gid, not to the server itself when SMTP_ALLOWLOCAL) go to the divert
// chain, where those no relay exception allows are counted, once, and sent to the
// local MTA.
// Only a connection's first packet passes a nat chain, and the redirect sticks to the
// connection.
void add_to_mta_rules(Ruleset& rs, const RulesetSpec& spec) {
    RuleBuilder r(spec.table, kChainToMta);
    std::string text = blocked_syn(r);
    if (spec.allow_local)
        text += not_to_lo(r);
    r.verdict(NFT_JUMP, "jump divert", kChainDivert);
    rs.rules.push_back(r.done(text + "jump divert"));

    for (const bool v6 : {false, true}) {
        RuleBuilder d(spec.table, kChainDivert);
        text = no_dest_exception(d, v6) + " ";
        text += count_blocked(d, spec);
        d.redirect("redirect");
        rs.rules.push_back(d.done(text + " redirect"));
    }
}

// After the output hook: a SYN that still carries kQueuedMark was shown to the worker
// and resumed past `enforce` (docs/internals.md#the-backstop): dropped, unless its uid
// or gid is allowed by now. Every other packet passes: a SYN the judge saw, one of a
// forwarded connection, one sent before our table existed.
void add_backstop_rule(Ruleset& rs, const RulesetSpec& spec) {
    RuleBuilder r(spec.table, kChainBackstop);
    const std::uint32_t zero = 0;
    r.smtp_syn()
        .meta(NFT_META_MARK, "meta mark")
        .bitwise(4, &kQueuedMark, &zero, "& queued")
        .cmp(NFT_CMP_EQ, &kQueuedMark, 4, "== queued")
        .meta(NFT_META_SKUID, "meta skuid")
        .lookup(kSetAllowUid, true, "skuid != @allow_uid")
        .meta(NFT_META_SKGID, "meta skgid")
        .lookup(kSetAllowGid, true, "skgid != @allow_gid")
        .verdict(NF_DROP, "drop");
    rs.rules.push_back(r.done("tcp flags syn / syn,ack tcp dport @ports meta mark & " +
                              hex32(kQueuedMark) + " == " + hex32(kQueuedMark) +
                              " meta skuid != @allow_uid meta skgid != @allow_gid drop"));
}

// In the chains' order (render_nft prints each chain's rules in this order).
void add_rules(Ruleset& rs, const RulesetSpec& spec) {
    if (spec.queue != QueueMode::None)
        rs.rules.push_back(observe_rule(spec));
    rs.rules.push_back(enforce_rule(spec.table));
    add_judge_rules(rs, spec);
    add_backstop_rule(rs, spec);
    if (spec.queue != QueueMode::None)
        add_sample_rules(rs, spec);
    if (spec.redirect)
        add_to_mta_rules(rs, spec);
}

}  // namespace

Ruleset build_ruleset(const RulesetSpec& spec) {
    Ruleset rs;
    rs.table = spec.table;
    rs.owned = spec.owned;
    rs.table_obj = build_table(spec.table);
    if (spec.owned)
        nftnl_table_set_u32(rs.table_obj.get(), NFTNL_TABLE_FLAGS, kTableFlagsOwned);
    add_sets(rs, spec);
    add_chains(rs, spec);
    add_rules(rs, spec);
    return rs;
}

}  // namespace smtpfence::nft
