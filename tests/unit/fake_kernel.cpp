#include "tests/unit/fake_kernel.h"

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <cerrno>
#include <cstring>

#include "nft/handles.h"
#include "nft/ruleset.h"

namespace smtpfence::testing {
namespace {

using namespace nft;

std::string str_or_empty(const char* s) {
    return s != nullptr ? s : "";
}

// A set element message as the kernel reads it. libnftnl's own parser is not used:
// it refuses the element lists libnftnl itself builds (their nests are numbered 1, 2,
// ... where it expects NFTA_LIST_ELEM), which the kernel accepts.
struct ElementList {
    std::string table;
    std::string set;
    std::vector<std::vector<std::uint8_t>> keys;
};

// Calls f for each attribute from start to end.
template <class F>
void each_attribute(const void* start, const void* end, F f) {
    const auto* a = static_cast<const nlattr*>(start);
    const auto left = [&] {
        return static_cast<int>(static_cast<const char*>(end) - reinterpret_cast<const char*>(a));
    };
    for (; mnl_attr_ok(a, left()); a = mnl_attr_next(a))
        f(a);
}

template <class F>
void each_nested(const nlattr* nest, F f) {
    each_attribute(mnl_attr_get_payload(nest),
                   reinterpret_cast<const char*>(nest) + mnl_attr_get_len(nest), f);
}

// The keys of the elements in an NFTA_SET_ELEM_LIST_ELEMENTS nest.
void add_keys(const nlattr* list, std::vector<std::vector<std::uint8_t>>& keys) {
    each_nested(list, [&](const nlattr* elem) {
        each_nested(elem, [&](const nlattr* attr) {
            if (mnl_attr_get_type(attr) != NFTA_SET_ELEM_KEY)
                return;
            each_nested(attr, [&](const nlattr* value) {
                const auto* p = static_cast<const std::uint8_t*>(mnl_attr_get_payload(value));
                if (mnl_attr_get_type(value) == NFTA_DATA_VALUE)
                    keys.emplace_back(p, p + mnl_attr_get_payload_len(value));
            });
        });
    });
}

ElementList parse_elements(const nlmsghdr* msg) {
    ElementList out;
    each_attribute(mnl_nlmsg_get_payload_offset(msg, sizeof(nfgenmsg)),
                   mnl_nlmsg_get_payload_tail(msg), [&](const nlattr* attr) {
                       switch (mnl_attr_get_type(attr)) {
                           case NFTA_SET_ELEM_LIST_TABLE:
                               out.table = mnl_attr_get_str(attr);
                               break;
                           case NFTA_SET_ELEM_LIST_SET:
                               out.set = mnl_attr_get_str(attr);
                               break;
                           case NFTA_SET_ELEM_LIST_ELEMENTS:
                               add_keys(attr, out.keys);
                               break;
                           default:
                               break;
                       }
                   });
    return out;
}

// Every object's message names its table in attribute 1 (NFTA_TABLE_NAME,
// NFTA_CHAIN_TABLE, NFTA_SET_TABLE, NFTA_RULE_TABLE, NFTA_SET_ELEM_LIST_TABLE).
std::string table_of(const nlmsghdr* msg) {
    std::string out;
    each_attribute(mnl_nlmsg_get_payload_offset(msg, sizeof(nfgenmsg)),
                   mnl_nlmsg_get_payload_tail(msg), [&](const nlattr* attr) {
                       if (mnl_attr_get_type(attr) == 1)
                           out = mnl_attr_get_str(attr);
                   });
    return out;
}

bool exclusive(const nlmsghdr* msg) {
    return (msg->nlmsg_flags & NLM_F_EXCL) != 0;
}

int table_message(const nlmsghdr* msg, bool create, std::map<std::string, FakeTable>& tables) {
    TablePtr t = make_table();
    if (nftnl_table_nlmsg_parse(msg, t.get()) < 0)
        return EINVAL;
    const std::string name = table_of(msg);
    const auto it = tables.find(name);
    if (it != tables.end() && it->second.owner && *it->second.owner != FakeKernel::kPortId)
        return EPERM;
    if (!create)
        return tables.erase(name) == 1 ? 0 : ENOENT;
    const bool flags_given = nftnl_table_is_set(t.get(), NFTNL_TABLE_FLAGS);
    const std::uint32_t flags = flags_given ? nftnl_table_get_u32(t.get(), NFTNL_TABLE_FLAGS) : 0;
    FakeTable& table = tables[name];
    if (it != tables.end()) {
        if (exclusive(msg))
            return EEXIST;
        if (!flags_given || flags == table.flags)
            return 0;
        if (!(table.flags == kTableFlagPersist && flags == kTableFlagsOwned))
            return EOPNOTSUPP;  // ownership is taken in place only from an orphaned table
    }
    table.flags = flags;
    if ((flags & kTableFlagOwner) != 0)
        table.owner = FakeKernel::kPortId;
    return 0;
}

// Deletes name (ENOENT when missing) or adds it (EEXIST for an exclusive add of one
// that exists); added is the new object to fill in, nullptr when none was added.
template <class Object>
int add_or_delete(std::map<std::string, Object>& objects, const std::string& name,
                  const nlmsghdr* msg, bool create, Object*& added) {
    added = nullptr;
    if (!create)
        return objects.erase(name) == 1 ? 0 : ENOENT;
    if (objects.contains(name))
        return exclusive(msg) ? EEXIST : 0;
    added = &objects[name];
    return 0;
}

int chain_message(const nlmsghdr* msg, bool create, FakeTable& table) {
    ChainPtr c = make_chain();
    if (nftnl_chain_nlmsg_parse(msg, c.get()) < 0)
        return EINVAL;
    FakeChain* chain = nullptr;
    const int err =
        add_or_delete(table.chains, str_or_empty(nftnl_chain_get_str(c.get(), NFTNL_CHAIN_NAME)),
                      msg, create, chain);
    if (chain != nullptr && nftnl_chain_is_set(c.get(), NFTNL_CHAIN_HOOKNUM)) {
        chain->hook = nftnl_chain_get_u32(c.get(), NFTNL_CHAIN_HOOKNUM);
        chain->priority = nftnl_chain_get_s32(c.get(), NFTNL_CHAIN_PRIO);
        chain->type = str_or_empty(nftnl_chain_get_str(c.get(), NFTNL_CHAIN_TYPE));
    }
    return err;
}

int set_message(const nlmsghdr* msg, bool create, FakeTable& table, std::uint64_t& next_handle) {
    SetPtr s = make_set();
    if (nftnl_set_nlmsg_parse(msg, s.get()) < 0)
        return EINVAL;
    FakeSet* set = nullptr;
    const int err = add_or_delete(
        table.sets, str_or_empty(nftnl_set_get_str(s.get(), NFTNL_SET_NAME)), msg, create, set);
    if (set != nullptr) {
        set->flags = nftnl_set_get_u32(s.get(), NFTNL_SET_FLAGS);
        set->key_type = nftnl_set_get_u32(s.get(), NFTNL_SET_KEY_TYPE);
        set->key_len = nftnl_set_get_u32(s.get(), NFTNL_SET_KEY_LEN);
        set->handle = next_handle++;
    }
    return err;
}

int element_message(const nlmsghdr* msg, bool create, FakeTable& table) {
    const ElementList list = parse_elements(msg);
    const auto it = table.sets.find(list.set);
    if (it == table.sets.end())
        return ENOENT;
    for (const std::vector<std::uint8_t>& key : list.keys) {
        if (!create) {
            if (it->second.elements.erase(key) != 1)
                return ENOENT;
        } else if (!it->second.elements.emplace(key, std::nullopt).second && exclusive(msg)) {
            return EEXIST;
        }
    }
    return 0;
}

int rule_message(const nlmsghdr* msg, bool create, FakeTable& table) {
    RulePtr r = make_rule();
    if (nftnl_rule_nlmsg_parse(msg, r.get()) < 0)
        return EINVAL;
    const auto chain =
        table.chains.find(str_or_empty(nftnl_rule_get_str(r.get(), NFTNL_RULE_CHAIN)));
    if (chain == table.chains.end())
        return ENOENT;
    if (create)
        ++chain->second.rules;
    else if (nftnl_rule_is_set(r.get(), NFTNL_RULE_HANDLE))
        chain->second.rules -= chain->second.rules > 0 ? 1 : 0;
    else
        chain->second.rules = 0;  // no handle: every rule of the chain
    return 0;
}

}  // namespace

std::vector<std::uint32_t> FakeSet::u32_elements() const {
    std::vector<std::uint32_t> out;
    for (const auto& [key, counter] : elements) {
        std::uint32_t v = 0;
        if (key.size() != sizeof v)
            continue;
        std::memcpy(&v, key.data(), sizeof v);
        out.push_back(v);
    }
    return out;
}

void FakeTable::flush() {
    for (auto& [name, chain] : chains)
        chain.rules = 0;
}

const FakeTable* FakeKernel::table(const std::string& name) const {
    const auto it = tables.find(name);
    return it != tables.end() ? &it->second : nullptr;
}

Result<void> FakeKernel::send(std::span<const std::byte> bytes) {
    ++sends;
    int len = static_cast<int>(bytes.size());
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(bytes.data());
    std::size_t index = 0;
    bool in_batch = false;
    bool failed = false;
    std::map<std::string, FakeTable> pending;
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
        if (nlh->nlmsg_type == NFNL_MSG_BATCH_BEGIN) {
            if (refuse_whole_batch != 0) {
                queue_ack(nlh, refuse_whole_batch, std::nullopt, "no permission");
                return {};
            }
            in_batch = true;
            failed = false;
            if (keeps_tables)
                pending = tables;
            continue;
        }
        if (nlh->nlmsg_type == NFNL_MSG_BATCH_END) {
            if (keeps_tables && in_batch && !failed) {
                tables = std::move(pending);
                ++batches_committed;
            }
            in_batch = false;
            continue;
        }
        if (keeps_tables && !in_batch) {
            answer(nlh);
            continue;
        }
        ++messages_seen;
        std::uint32_t offset = 0;
        int err = verdict(index++, nlh, &offset);
        if (err == 0 && keeps_tables)
            err = execute(nlh, pending);
        failed = failed || err != 0;
        if ((nlh->nlmsg_flags & NLM_F_ACK) != 0 || err != 0) {
            queue_ack(nlh, err, err != 0 && offset != 0 ? std::optional(offset) : std::nullopt,
                      err != 0 ? "refused by fake kernel" : "");
        }
    }
    return {};
}

Result<std::size_t> FakeKernel::receive(std::span<std::byte> buf, int) {
    if (silent || replies_.empty())
        return fail(ETIMEDOUT, "wait for reply");
    // Several ACKs per datagram, as the kernel batches them into one skb.
    std::size_t used = 0;
    while (!replies_.empty() && used + replies_.front().size() <= buf.size() && used < 512) {
        std::memcpy(buf.data() + used, replies_.front().data(), replies_.front().size());
        used += replies_.front().size();
        replies_.pop_front();
    }
    return used;
}

int FakeKernel::execute(const nlmsghdr* msg, std::map<std::string, FakeTable>& tx) {
    const unsigned type = msg->nlmsg_type & 0xffU;
    const bool create = type == NFT_MSG_NEWTABLE || type == NFT_MSG_NEWCHAIN ||
                        type == NFT_MSG_NEWSET || type == NFT_MSG_NEWSETELEM ||
                        type == NFT_MSG_NEWRULE;
    if (type == NFT_MSG_NEWTABLE || type == NFT_MSG_DELTABLE)
        return table_message(msg, create, tx);
    const auto table = tx.find(table_of(msg));
    if (table == tx.end())
        return ENOENT;
    if (table->second.owner && *table->second.owner != kPortId)
        return EPERM;
    switch (type) {
        case NFT_MSG_NEWCHAIN:
        case NFT_MSG_DELCHAIN:
            return chain_message(msg, create, table->second);
        case NFT_MSG_NEWSET:
        case NFT_MSG_DELSET:
            return set_message(msg, create, table->second, next_handle_);
        case NFT_MSG_NEWSETELEM:
        case NFT_MSG_DELSETELEM:
            return element_message(msg, create, table->second);
        case NFT_MSG_NEWRULE:
        case NFT_MSG_DELRULE:
            return rule_message(msg, create, table->second);
        default:
            return EOPNOTSUPP;
    }
}

void FakeKernel::answer(const nlmsghdr* req) {
    switch (req->nlmsg_type & 0xffU) {
        case NFT_MSG_GETTABLE:
            return answer_table(req);
        case NFT_MSG_GETCHAIN:
            return answer_chains(req);
        case NFT_MSG_GETSET:
            return answer_sets(req);
        case NFT_MSG_GETSETELEM:
            return answer_elements(req);
        default:
            queue_ack(req, EOPNOTSUPP, std::nullopt, "");
    }
}

void FakeKernel::answer_table(const nlmsghdr* req) {
    const std::string name = table_of(req);
    const FakeTable* found = table(name);
    if (found == nullptr) {
        queue_ack(req, ENOENT, std::nullopt, "");
        return;
    }
    queue_reply(req, NFT_MSG_NEWTABLE, [&](nlmsghdr* nlh) {
        TablePtr t = build_table(name);
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, found->flags);
        nftnl_table_nlmsg_build_payload(nlh, t.get());
        if (found->owner)
            mnl_attr_put_u32(nlh, NFTA_TABLE_OWNER, htonl(*found->owner));
    });
    queue_ack(req, 0, std::nullopt, "");
}

void FakeKernel::answer_chains(const nlmsghdr* req) {
    for (const auto& [tname, t] : tables) {
        for (const auto& [name, chain] : t.chains) {
            ChainPtr c = make_chain();
            nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
            nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, tname.c_str());
            nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, name.c_str());
            if (chain.hook) {
                nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, *chain.hook);
                nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, chain.priority);
                nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, chain.type.c_str());
            }
            queue_reply(req, NFT_MSG_NEWCHAIN,
                        [&](nlmsghdr* nlh) { nftnl_chain_nlmsg_build_payload(nlh, c.get()); });
        }
    }
    queue_done(req);
}

void FakeKernel::answer_sets(const nlmsghdr* req) {
    const std::string tname = table_of(req);
    if (const FakeTable* found = table(tname)) {
        for (const auto& [name, set] : found->sets) {
            SetPtr s = make_set();
            nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
            nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, tname.c_str());
            nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
            nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, set.flags);
            nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, set.key_type);
            nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, set.key_len);
            nftnl_set_set_u64(s.get(), NFTNL_SET_HANDLE, set.handle);
            queue_reply(req, NFT_MSG_NEWSET,
                        [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, s.get()); });
        }
    }
    queue_done(req);
}

void FakeKernel::answer_elements(const nlmsghdr* req) {
    const ElementList wanted = parse_elements(req);
    const FakeTable* found = table(wanted.table);
    if (found == nullptr || !found->sets.contains(wanted.set)) {
        queue_ack(req, ENOENT, std::nullopt, "");
        return;
    }
    // One element per message (see parse_elements).
    for (const auto& [key, counter] : found->sets.at(wanted.set).elements) {
        SetPtr s = make_set();
        nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, wanted.table.c_str());
        nftnl_set_set_str(s.get(), NFTNL_SET_NAME, wanted.set.c_str());
        SetElemPtr e = make_set_elem();
        nftnl_set_elem_set(e.get(), NFTNL_SET_ELEM_KEY, key.data(),
                           static_cast<std::uint32_t>(key.size()));
        if (counter) {
            ExprPtr c = make_expr("counter");
            nftnl_expr_set_u64(c.get(), NFTNL_EXPR_CTR_PACKETS, *counter);
            nftnl_expr_set_u64(c.get(), NFTNL_EXPR_CTR_BYTES, *counter * 60);
            nftnl_set_elem_add_expr(e.get(), c.release());  // the element takes it
        }
        nftnl_set_elem_add(s.get(), e.release());  // the set takes ownership
        queue_reply(req, NFT_MSG_NEWSETELEM,
                    [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s.get()); });
    }
    queue_done(req);
}

void FakeKernel::queue_reply(const nlmsghdr* req, std::uint16_t type,
                             const std::function<void(nlmsghdr*)>& fill) {
    std::vector<char> buf(kReceiveBufferBytes);
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf.data(), type, NFPROTO_INET, 0, req->nlmsg_seq);
    fill(nlh);
    nlh->nlmsg_pid = kPortId;
    buf.resize(NLMSG_ALIGN(nlh->nlmsg_len));
    replies_.push_back(std::move(buf));
}

void FakeKernel::queue_done(const nlmsghdr* req) {
    std::vector<char> out(NLMSG_SPACE(sizeof(int)), 0);
    auto* nlh = reinterpret_cast<nlmsghdr*>(out.data());
    nlh->nlmsg_type = NLMSG_DONE;
    nlh->nlmsg_flags = NLM_F_MULTI;
    nlh->nlmsg_seq = req->nlmsg_seq;
    nlh->nlmsg_pid = kPortId;
    nlh->nlmsg_len = static_cast<std::uint32_t>(NLMSG_LENGTH(sizeof(int)));
    replies_.push_back(std::move(out));
}

void FakeKernel::queue_ack(const nlmsghdr* req, int err, std::optional<std::uint32_t> offset,
                           const std::string& text) {
    std::vector<char> out(NLMSG_SPACE(sizeof(nlmsgerr)) + 256, 0);
    auto* nlh = reinterpret_cast<nlmsghdr*>(out.data());
    nlh->nlmsg_type = NLMSG_ERROR;
    nlh->nlmsg_seq = req->nlmsg_seq;
    nlh->nlmsg_pid = kPortId;
    nlh->nlmsg_flags = NLM_F_CAPPED;
    auto* e = reinterpret_cast<nlmsgerr*>(out.data() + NLMSG_HDRLEN);
    e->error = -err;
    e->msg = *req;
    std::size_t len = NLMSG_HDRLEN + sizeof(nlmsgerr);
    auto put = [&](std::uint16_t type, const void* data, std::size_t n) {
        auto* a = reinterpret_cast<nlattr*>(out.data() + NLMSG_ALIGN(len));
        a->nla_type = type;
        a->nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + n);
        std::memcpy(reinterpret_cast<char*>(a) + NLA_HDRLEN, data, n);
        len = NLMSG_ALIGN(len) + NLA_ALIGN(a->nla_len);
    };
    if (err != 0 && !text.empty()) {
        nlh->nlmsg_flags |= NLM_F_ACK_TLVS;
        put(NLMSGERR_ATTR_MSG, text.c_str(), text.size() + 1);
        if (offset)
            put(NLMSGERR_ATTR_OFFS, &*offset, sizeof *offset);
    }
    nlh->nlmsg_len = static_cast<std::uint32_t>(len);
    out.resize(NLMSG_ALIGN(len));
    replies_.push_back(std::move(out));
}

}  // namespace smtpfence::testing
