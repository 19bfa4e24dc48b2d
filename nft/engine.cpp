#include "nft/engine.h"

#include <libnftnl/common.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_NFQUEUE.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <set>
#include <vector>

#include "nft/batch.h"
#include "nft/query.h"

namespace smtpfence::nft {
namespace {

// A transaction creating and deleting a scratch table with one rule holding expr:
// whether the kernel accepts the expression, with no trace left.
Result<void> try_expression(Transport& transport, const std::string& probe_table, ExprPtr expr,
                            const char* label) {
    TablePtr table = build_table(probe_table);
    ChainPtr chain = build_chain(probe_table, "probe");
    RulePtr rule = make_rule();
    nftnl_rule_set_u32(rule.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
    nftnl_rule_set_str(rule.get(), NFTNL_RULE_TABLE, probe_table.c_str());
    nftnl_rule_set_str(rule.get(), NFTNL_RULE_CHAIN, "probe");
    nftnl_rule_add_expr(rule.get(), expr.release());  // the rule takes ownership
    Batch batch(NFPROTO_INET);
    batch.table(*table, Op::Create, "probe table inet " + probe_table);
    batch.chain(*chain, Op::Create, "probe chain");
    batch.rule(*rule, Op::Create, std::string("probe rule (") + label + ")", {label});
    batch.table(*table, Op::Delete, "delete probe table inet " + probe_table);
    return batch.commit(transport);
}

}  // namespace

bool kernel_lacks_feature(int code) {
    return code == EOPNOTSUPP || code == EINVAL;
}

Result<bool> Engine::probe_ownership(const std::string& probe_table) {
    TablePtr table = build_table(probe_table);
    nftnl_table_set_u32(table.get(), NFTNL_TABLE_FLAGS, kTableFlagsOwned);
    Batch batch(NFPROTO_INET);
    batch.table(*table, Op::Create, "probe owned table inet " + probe_table);
    batch.table(*table, Op::Delete, "delete probe table inet " + probe_table);
    auto r = batch.commit(transport_);
    if (r)
        return true;
    // Kernels before 6.9 refuse the unknown PERSIST flag (EOPNOTSUPP); before 5.12
    // OWNER too.
    if (kernel_lacks_feature(r.error().code))
        return false;
    return std::unexpected(r.error());
}

Result<bool> Engine::probe_set_expressions(const std::string& probe_table) {
    TablePtr table = build_table(probe_table);
    SetPtr set = make_set();
    nftnl_set_set_u32(set.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
    nftnl_set_set_str(set.get(), NFTNL_SET_TABLE, probe_table.c_str());
    nftnl_set_set_str(set.get(), NFTNL_SET_NAME, "probe");
    nftnl_set_set_u32(set.get(), NFTNL_SET_ID, 1);
    nftnl_set_set_u32(set.get(), NFTNL_SET_KEY_LEN, 4);
    nftnl_set_set_u32(set.get(), NFTNL_SET_FLAGS, NFT_SET_EVAL | NFT_SET_EXPR);
    nftnl_set_add_expr(set.get(), make_expr("counter").release());  // the set owns it
    Batch batch(NFPROTO_INET);
    batch.table(*table, Op::Create, "probe table inet " + probe_table);
    batch.set(*set, Op::Create, "probe set with a counter (flags dynamic, expr)");
    batch.table(*table, Op::Delete, "delete probe table inet " + probe_table);
    auto r = batch.commit(transport_);
    if (r)
        return true;
    // Linux 5.10 refuses the unknown flag (EOPNOTSUPP).
    if (kernel_lacks_feature(r.error().code))
        return false;
    return std::unexpected(r.error());
}

Result<QueueMode> Engine::probe_queue_mode(const std::string& probe_table) {
    ExprPtr native = make_expr("queue");
    nftnl_expr_set_u16(native.get(), NFTNL_EXPR_QUEUE_NUM, 0);
    nftnl_expr_set_u16(native.get(), NFTNL_EXPR_QUEUE_TOTAL, 1);
    nftnl_expr_set_u16(native.get(), NFTNL_EXPR_QUEUE_FLAGS, NFT_QUEUE_FLAG_BYPASS);
    auto r = try_expression(transport_, probe_table, std::move(native), "queue");
    if (r)
        return QueueMode::Native;
    if (r.error().code != ENOENT && r.error().code != EOPNOTSUPP)
        return std::unexpected(r.error());

    ExprPtr xt = make_expr("target");
    nftnl_expr_set_str(xt.get(), NFTNL_EXPR_TG_NAME, "NFQUEUE");
    nftnl_expr_set_u32(xt.get(), NFTNL_EXPR_TG_REV, 3);
    set_nfqueue_info(xt.get(), 0);
    r = try_expression(transport_, probe_table, std::move(xt), "NFQUEUE target");
    if (r)
        return QueueMode::Xt;
    if (r.error().code != ENOENT && r.error().code != EOPNOTSUPP)
        return std::unexpected(r.error());
    return QueueMode::None;
}

namespace {

// Creates every set, element, chain and rule of rs (into a table that exists or is
// created earlier in the same batch), skipping the sets named in keep. A chain that
// exists already (kept, emptied) is "created" all the same: NEWCHAIN without EXCL on
// it only resets its policy to ours.
void add_content(Batch& batch, const Ruleset& rs, const std::set<std::string>& keep) {
    for (const BuiltSet& s : rs.sets) {
        if (keep.contains(s.name))
            continue;
        batch.set(*s.set, Op::Create, "set " + s.name);
        if (!s.keys.empty()) {
            batch.set_elements(rs.table, s.name, s.keys, Op::Create, "elements of set " + s.name,
                               s.key_ends);
        }
    }
    for (const BuiltChain& c : rs.chains)
        batch.chain(*c.chain, Op::Create, "chain " + c.name);
    std::map<std::string, int> index;
    for (const BuiltRule& r : rs.rules) {
        const int n = ++index[r.chain];
        batch.rule(*r.rule, Op::Create,
                   "rule " + r.chain + "#" + std::to_string(n) + " (" + r.text + ")", r.expr_names);
    }
}

// Whether an existing chain already has the hook, priority and type we want.
bool same_hook(nftnl_chain& want, const TableInventory::ChainInfo& have) {
    const bool want_base = nftnl_chain_is_set(&want, NFTNL_CHAIN_HOOKNUM);
    if (want_base != have.base)
        return false;
    if (!want_base)
        return true;
    const char* type = nftnl_chain_get_str(&want, NFTNL_CHAIN_TYPE);
    return nftnl_chain_get_u32(&want, NFTNL_CHAIN_HOOKNUM) == have.hook &&
           nftnl_chain_get_s32(&want, NFTNL_CHAIN_PRIO) == have.priority && type != nullptr &&
           have.type == type;
}

bool blocked_set_compatible(const TableInventory::SetInfo& info) {
    return info.key_type == kTypeUid && info.key_len == 4 && info.flags == NFT_SET_EVAL;
}

}  // namespace

const TableInventory::SetInfo* TableInventory::set(const std::string& name) const {
    for (const SetInfo& s : sets) {
        if (s.name == name)
            return &s;
    }
    return nullptr;
}

Result<TableInventory> Engine::inventory(const std::string& table) {
    TableInventory inv;
    auto header = table_header(table);
    if (!header)
        return std::unexpected(header.error());
    const std::optional<TableHeader>& found = *header;
    inv.exists = found.has_value();
    if (!found)
        return inv;
    inv.flags = found->flags;
    inv.owner = found->owner;
    Result<void> parse_error;
    auto r = query(
        transport_, NFT_MSG_GETCHAIN, NLM_F_DUMP, [](nlmsghdr*) {},
        [&](const nlmsghdr* msg) {
            ChainPtr c = make_chain();
            if (nftnl_chain_nlmsg_parse(msg, c.get()) < 0) {
                parse_error = fail(EPROTO, "parse chain list", "malformed reply");
                return;
            }
            const char* t = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_TABLE);
            if (nftnl_chain_get_u32(c.get(), NFTNL_CHAIN_FAMILY) != NFPROTO_INET || t == nullptr ||
                table != t) {
                return;
            }
            TableInventory::ChainInfo info;
            info.name = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_NAME);
            info.base = nftnl_chain_is_set(c.get(), NFTNL_CHAIN_HOOKNUM);
            if (info.base) {
                info.hook = nftnl_chain_get_u32(c.get(), NFTNL_CHAIN_HOOKNUM);
                info.priority = nftnl_chain_get_s32(c.get(), NFTNL_CHAIN_PRIO);
                const char* type = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_TYPE);
                info.type = type != nullptr ? type : "";
            }
            inv.chains.push_back(std::move(info));
        },
        "list chains of table inet " + table);
    if (!r)
        return std::unexpected(r.error());
    if (!parse_error)
        return std::unexpected(parse_error.error());
    r = query(
        transport_, NFT_MSG_GETSET, NLM_F_DUMP,
        [&](nlmsghdr* nlh) {
            SetPtr filter = make_set();
            nftnl_set_set_str(filter.get(), NFTNL_SET_TABLE, table.c_str());
            nftnl_set_nlmsg_build_payload(nlh, filter.get());
        },
        [&](const nlmsghdr* msg) {
            SetPtr s = make_set();
            if (nftnl_set_nlmsg_parse(msg, s.get()) < 0) {
                parse_error = fail(EPROTO, "parse set list", "malformed reply");
                return;
            }
            const char* t = nftnl_set_get_str(s.get(), NFTNL_SET_TABLE);
            if (t == nullptr || table != t)
                return;
            TableInventory::SetInfo info;
            info.name = nftnl_set_get_str(s.get(), NFTNL_SET_NAME);
            info.flags = nftnl_set_get_u32(s.get(), NFTNL_SET_FLAGS);
            info.key_type = nftnl_set_get_u32(s.get(), NFTNL_SET_KEY_TYPE);
            info.key_len = nftnl_set_get_u32(s.get(), NFTNL_SET_KEY_LEN);
            info.handle = nftnl_set_get_u64(s.get(), NFTNL_SET_HANDLE);
            // Anonymous sets belong to rules and go away with them.
            if ((info.flags & NFT_SET_ANONYMOUS) == 0)
                inv.sets.push_back(std::move(info));
        },
        "list sets of table inet " + table);
    if (!r)
        return std::unexpected(r.error());
    if (!parse_error)
        return std::unexpected(parse_error.error());
    return inv;
}

namespace {

// Ownership can be taken in place only from an orphaned persistent table; any other
// change of the ownership flags needs the table replaced whole.
bool ownership_allows_update(const TableInventory& inv, bool owned) {
    const std::uint32_t flags_have = inv.flags & kTableFlagsOwned;
    const std::uint32_t flags_want = owned ? kTableFlagsOwned : 0;
    return flags_have == flags_want ||
           (flags_want == kTableFlagsOwned && flags_have == kTableFlagPersist);
}

// Takes ownership of an orphaned persistent table in a transaction of its own: the
// rules in force stay, now ours. Adopting marks the table as updated until the end of
// the transaction, and the kernel refuses (EINVAL) a new base chain in a table so
// marked ("netfilter: nf_tables: reject new basechain after table flag update").
Result<void> adopt_orphan(Transport& transport, const Ruleset& rs) {
    Batch batch(NFPROTO_INET);
    batch.table(*rs.table_obj, Op::Create, "adopt table inet " + rs.table);
    return batch.commit(transport);
}

// Empties every chain of the table (rules hold references to chains and sets), then
// deletes those that do not already have the hook and priority rs wants.
void clear_chains(Batch& batch, const Ruleset& rs, const TableInventory& inv) {
    std::set<std::string> keep_chains;
    for (const TableInventory::ChainInfo& chain : inv.chains) {
        RulePtr all = make_rule();
        nftnl_rule_set_u32(all.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
        nftnl_rule_set_str(all.get(), NFTNL_RULE_TABLE, rs.table.c_str());
        nftnl_rule_set_str(all.get(), NFTNL_RULE_CHAIN, chain.name.c_str());
        batch.rule(*all, Op::Delete, "flush chain " + chain.name, {});
        for (const BuiltChain& want : rs.chains) {
            if (want.name == chain.name && same_hook(*want.chain, chain)) {
                keep_chains.insert(chain.name);
            }
        }
    }
    for (const TableInventory::ChainInfo& chain : inv.chains) {
        if (keep_chains.contains(chain.name))
            continue;
        ChainPtr c = build_chain(rs.table, chain.name);
        batch.chain(*c, Op::Delete, "delete chain " + chain.name);
    }
}

// Deletes every set of the table but a compatible `blocked`; returns the names kept.
std::set<std::string> clear_sets(Batch& batch, const Ruleset& rs, const TableInventory& inv) {
    std::set<std::string> keep;
    const TableInventory::SetInfo* blocked = inv.set(kSetBlocked);
    if (blocked != nullptr && blocked_set_compatible(*blocked))
        keep.insert(kSetBlocked);
    for (const TableInventory::SetInfo& info : inv.sets) {
        if (keep.contains(info.name))
            continue;
        SetPtr s = make_set();
        set_identity(s.get(), rs.table, info.name);
        batch.set(*s, Op::Delete, "delete set " + info.name);
    }
    return keep;
}

// Empties the existing table and fills it with rs in one transaction, keeping the
// chains that already have the wanted hook and priority and a compatible `blocked`
// set. Keeping a base chain matters: deleting it unregisters its hook, and the kernel
// then drops the SYNs waiting in the NFQUEUE on that hook (the client would see its
// refusal a retransmission later, ~1 s, instead of at once).
// True when done; false when the table changed under us, with report.note saying so
// (the caller then replaces it whole).
Result<bool> update_in_place(Transport& transport, const Ruleset& rs, const TableInventory& inv,
                             ApplyReport& report) {
    const std::string tname = "table inet " + rs.table;
    Batch batch(NFPROTO_INET);
    batch.table(*rs.table_obj, Op::Create, "create " + tname);
    clear_chains(batch, rs, inv);
    const std::set<std::string> keep = clear_sets(batch, rs, inv);
    add_content(batch, rs, keep);
    auto r = batch.commit(transport);
    if (r) {
        report.counters_kept = keep.contains(kSetBlocked);
        if (!report.counters_kept)
            report.note = "no compatible blocked set to keep";
        return true;
    }
    // ENOENT/EBUSY: the table changed between inventory and commit (another tool at
    // work); anything else is a real refusal of our ruleset.
    if (r.error().code != ENOENT && r.error().code != EBUSY && r.error().code != EEXIST)
        return std::unexpected(r.error().wrap("apply " + tname));
    report.note = "table changed during the update (" + r.error().message() +
                  "); replaced it whole, attempt counters restart";
    return false;
}

// "add table; delete table; add table ..." in one transaction: the delete never fails
// (the table exists by then) and the kernel swaps old for new atomically. The first
// add carries no flags, so it changes nothing in a table that exists.
Result<void> replace_whole(Transport& transport, const Ruleset& rs) {
    const std::string tname = "table inet " + rs.table;
    TablePtr bare = build_table(rs.table);
    Batch batch(NFPROTO_INET);
    batch.table(*bare, Op::Create, "create " + tname);
    batch.table(*bare, Op::Delete, "replace " + tname);
    batch.table(*rs.table_obj, Op::Create, "create " + tname);
    add_content(batch, rs, {});
    return with_context(batch.commit(transport), "apply " + tname);
}

}  // namespace

Result<ApplyReport> Engine::apply(const Ruleset& rs) {
    const std::string tname = "table inet " + rs.table;
    ApplyReport report;
    auto inv = inventory(rs.table);
    if (!inv)
        return std::unexpected(inv.error().wrap("apply " + tname));
    report.table_existed = inv->exists;
    if (const std::optional<std::uint32_t> owner = inv->owner;
        owner && *owner != transport_.portid()) {
        return fail(EPERM, "apply " + tname,
                    "it is owned by another live process (netlink port " + std::to_string(*owner) +
                        ", usually its pid: a second smtpfenced?); only that process can "
                        "change it");
    }
    if (inv->exists && !ownership_allows_update(*inv, rs.owned)) {
        report.note = rs.owned ? "took ownership of the table: replaced it whole, attempt "
                                 "counters restart"
                               : "gave up ownership of the table: replaced it whole, attempt "
                                 "counters restart";
    } else if (inv->exists) {
        if ((inv->flags & kTableFlagsOwned) != (rs.owned ? kTableFlagsOwned : 0)) {
            if (auto adopted = adopt_orphan(transport_, rs); !adopted)
                return std::unexpected(adopted.error().wrap("apply " + tname));
        }
        auto updated = update_in_place(transport_, rs, *inv, report);
        if (!updated)
            return std::unexpected(updated.error());
        if (*updated)
            return report;
    }
    if (auto replaced = replace_whole(transport_, rs); !replaced)
        return std::unexpected(replaced.error());
    return report;
}

Result<void> Engine::change_elements(const std::string& table, const std::string& set,
                                     const std::set<std::uint32_t>& add,
                                     const std::set<std::uint32_t>& remove) {
    Batch batch(NFPROTO_INET);
    if (!remove.empty()) {
        batch.set_elements(
            table, set, u32_keys(remove), Op::Delete,
            "delete " + std::to_string(remove.size()) + " element(s) from set " + set);
    }
    if (!add.empty()) {
        batch.set_elements(table, set, u32_keys(add), Op::Create,
                           "add " + std::to_string(add.size()) + " element(s) to set " + set);
    }
    return with_context(batch.commit(transport_), "table inet " + table);
}

Result<void> Engine::remove(const std::string& table) {
    TablePtr t = build_table(table);
    Batch batch(NFPROTO_INET);
    batch.table(*t, Op::Create, "create table inet " + table);
    batch.table(*t, Op::Delete, "delete table inet " + table);
    return batch.commit(transport_);
}

Result<bool> Engine::table_exists(const std::string& table) {
    auto header = table_header(table);
    if (!header)
        return std::unexpected(header.error());
    return header->has_value();
}

Result<std::optional<Engine::TableHeader>> Engine::table_header(const std::string& table) {
    TablePtr t = build_table(table);
    TableHeader header;
    bool parsed = false;
    auto r = query(
        transport_, NFT_MSG_GETTABLE, 0,
        [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); },
        [&](const nlmsghdr* msg) {
            TablePtr reply = make_table();
            if (nftnl_table_nlmsg_parse(msg, reply.get()) < 0)
                return;
            parsed = true;
            if (nftnl_table_is_set(reply.get(), NFTNL_TABLE_FLAGS))
                header.flags = nftnl_table_get_u32(reply.get(), NFTNL_TABLE_FLAGS);
            if (nftnl_table_is_set(reply.get(), NFTNL_TABLE_OWNER))
                header.owner = nftnl_table_get_u32(reply.get(), NFTNL_TABLE_OWNER);
        },
        "look up table inet " + table);
    if (!r) {
        if (r.error().code == ENOENT)
            return std::optional<TableHeader>();
        return std::unexpected(r.error());
    }
    if (!parsed)
        return fail(EPROTO, "look up table inet " + table, "malformed reply");
    return std::optional<TableHeader>(header);
}

Result<std::set<std::uint32_t>> Engine::read_u32_set(const std::string& table,
                                                     const std::string& set) {
    std::set<std::uint32_t> out;
    auto r = dump_elements(transport_, table, set, [&](nftnl_set_elem* e) {
        if (auto v = elem_u32(e))
            out.insert(*v);
    });
    if (!r)
        return std::unexpected(r.error());
    return out;
}

Result<std::map<std::uint32_t, PacketCount>> Engine::read_blocked(const std::string& table) {
    std::map<std::uint32_t, PacketCount> out;
    auto r = dump_elements(transport_, table, kSetBlocked, [&](nftnl_set_elem* e) {
        const auto uid = elem_u32(e);
        if (!uid)
            return;
        out[*uid] = elem_counter(e);
    });
    if (!r)
        return std::unexpected(r.error());
    return out;
}

}  // namespace smtpfence::nft
