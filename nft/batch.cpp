#include "nft/batch.h"

#include <libnftnl/common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <span>

namespace smtpfence::nft {
namespace {

std::uint16_t op_flags(Op op) {
    switch (op) {
        case Op::Create:
            return NLM_F_CREATE;
        case Op::Exclusive:
            return NLM_F_CREATE | NLM_F_EXCL;
        case Op::Delete:
            return 0;
    }
    return 0;
}

// Room reserved for building one message. libnftnl writes attributes without bounds
// checks, so this must exceed the largest message we build: a rule of a dozen
// expressions is < 2 KiB; kElementsPerMessage uid/gid/port elements are < 32 KiB, as
// many interval elements of the widest destination key (24 bytes, twice) < 40 KiB.
constexpr std::size_t kMaxMessageBytes = std::size_t{64} * 1024;

struct ExtAck {
    std::string message;
    std::uint32_t offset = 0;
    bool has_offset = false;
};

ExtAck parse_ext_ack(const nlmsghdr* nlh) {
    ExtAck ack;
    if ((nlh->nlmsg_flags & NLM_F_ACK_TLVS) == 0)
        return ack;
    const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
    // With NETLINK_CAP_ACK the echoed request is only its header; without it (an
    // old kernel ignoring the option) the whole request follows.
    std::size_t echoed = sizeof(nlmsghdr);
    if ((nlh->nlmsg_flags & NLM_F_CAPPED) == 0)
        echoed = err->msg.nlmsg_len;
    const std::size_t tlv_start = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(int)) + NLMSG_ALIGN(echoed);
    if (tlv_start >= nlh->nlmsg_len)
        return ack;
    const char* base = reinterpret_cast<const char*>(nlh);
    const auto* attr = reinterpret_cast<const nlattr*>(base + tlv_start);
    std::size_t left = nlh->nlmsg_len - tlv_start;
    while (left >= sizeof(nlattr) && attr->nla_len >= sizeof(nlattr) && attr->nla_len <= left) {
        const auto* payload = reinterpret_cast<const char*>(attr) + NLA_HDRLEN;
        const std::size_t plen = attr->nla_len - NLA_HDRLEN;
        if ((attr->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG && plen > 0) {
            ack.message.assign(payload, strnlen(payload, plen));
        } else if ((attr->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_OFFS &&
                   plen >= sizeof(std::uint32_t)) {
            std::memcpy(&ack.offset, payload, sizeof ack.offset);
            ack.has_offset = true;
        }
        const std::size_t step = NLA_ALIGN(attr->nla_len);
        if (step >= left)
            break;
        left -= step;
        attr = reinterpret_cast<const nlattr*>(reinterpret_cast<const char*>(attr) + step);
    }
    return ack;
}

}  // namespace

template <class Fill>
void Batch::append(std::size_t max_bytes, std::string what, std::vector<std::string> expr_names,
                   Fill fill) {
    const std::size_t offset = body_.size();
    body_.resize(offset + max_bytes);
    nlmsghdr* nlh = fill(body_.data() + offset);
    nlh->nlmsg_flags |= NLM_F_ACK;
    body_.resize(offset + MNL_ALIGN(nlh->nlmsg_len));
    messages_.push_back(Message{offset, std::move(what), std::move(expr_names)});
}

void Batch::table(nftnl_table& t, Op op, std::string what) {
    const auto type = op == Op::Delete ? NFT_MSG_DELTABLE : NFT_MSG_NEWTABLE;
    append(kMaxMessageBytes, std::move(what), {}, [&](char* buf) {
        nlmsghdr* nlh = nftnl_table_nlmsg_build_hdr(buf, type, family_, op_flags(op), 0);
        nftnl_table_nlmsg_build_payload(nlh, &t);
        return nlh;
    });
}

void Batch::chain(nftnl_chain& c, Op op, std::string what) {
    const auto type = op == Op::Delete ? NFT_MSG_DELCHAIN : NFT_MSG_NEWCHAIN;
    append(kMaxMessageBytes, std::move(what), {}, [&](char* buf) {
        nlmsghdr* nlh = nftnl_chain_nlmsg_build_hdr(buf, type, family_, op_flags(op), 0);
        nftnl_chain_nlmsg_build_payload(nlh, &c);
        return nlh;
    });
}

void Batch::set(nftnl_set& s, Op op, std::string what) {
    const auto type = op == Op::Delete ? NFT_MSG_DELSET : NFT_MSG_NEWSET;
    append(kMaxMessageBytes, std::move(what), {}, [&](char* buf) {
        nlmsghdr* nlh = nftnl_set_nlmsg_build_hdr(buf, type, family_, op_flags(op), 0);
        nftnl_set_nlmsg_build_payload(nlh, &s);
        return nlh;
    });
}

void Batch::set_elements(const std::string& table, const std::string& set,
                         const std::vector<ElementKey>& keys, Op op, const std::string& what,
                         const std::vector<ElementKey>& key_ends) {
    const auto type = op == Op::Delete ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM;
    const std::size_t parts = (keys.size() + kElementsPerMessage - 1) / kElementsPerMessage;
    for (std::size_t part = 0; part < parts; ++part) {
        SetPtr chunk = make_set();
        nftnl_set_set_u32(chunk.get(), NFTNL_SET_FAMILY, family_);
        nftnl_set_set_str(chunk.get(), NFTNL_SET_TABLE, table.c_str());
        nftnl_set_set_str(chunk.get(), NFTNL_SET_NAME, set.c_str());
        const std::size_t from = part * kElementsPerMessage;
        const std::size_t to = std::min(keys.size(), from + kElementsPerMessage);
        for (std::size_t i = from; i < to; ++i) {
            SetElemPtr elem = make_set_elem();
            nftnl_set_elem_set(elem.get(), NFTNL_SET_ELEM_KEY, keys[i].data(),
                               static_cast<std::uint32_t>(keys[i].size()));
            if (i < key_ends.size()) {
                nftnl_set_elem_set(elem.get(), NFTNL_SET_ELEM_KEY_END, key_ends[i].data(),
                                   static_cast<std::uint32_t>(key_ends[i].size()));
            }
            nftnl_set_elem_add(chunk.get(), elem.release());  // the set takes ownership
        }
        std::string label = what;
        if (parts > 1)
            label += " (part " + std::to_string(part + 1) + " of " + std::to_string(parts) + ")";
        append(kMaxMessageBytes, std::move(label), {}, [&](char* buf) {
            nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, static_cast<std::uint16_t>(type), family_,
                                                  op_flags(op), 0);
            nftnl_set_elems_nlmsg_build_payload(nlh, chunk.get());
            return nlh;
        });
    }
}

void Batch::rule(nftnl_rule& r, Op op, std::string what, std::vector<std::string> expr_names) {
    const auto type = op == Op::Delete ? NFT_MSG_DELRULE : NFT_MSG_NEWRULE;
    // Rules are appended in the order given (NLM_F_APPEND), which is their order in the chain.
    const std::uint16_t flags = op == Op::Delete ? 0 : NLM_F_CREATE | NLM_F_APPEND;
    append(kMaxMessageBytes, std::move(what), std::move(expr_names), [&](char* buf) {
        nlmsghdr* nlh = nftnl_rule_nlmsg_build_hdr(buf, type, family_, flags, 0);
        nftnl_rule_nlmsg_build_payload(nlh, &r);
        return nlh;
    });
}

std::string Batch::describe_error_site(const Message& msg, std::uint32_t offset) const {
    if (msg.expr_names.empty())
        return {};
    // Walk NFTA_RULE_EXPRESSIONS of our own message to find the expression the
    // kernel's offset points into.
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(body_.data() + msg.offset);
    const char* start = reinterpret_cast<const char*>(nlh);
    const char* end = start + nlh->nlmsg_len;
    // Attributes of a nested region [from, to): calls f(attr, index) for each.
    auto walk = [](const char* from, const char* to, auto&& f) {
        std::size_t index = 0;
        while (from + sizeof(nlattr) <= to) {
            const auto* attr = reinterpret_cast<const nlattr*>(from);
            if (attr->nla_len < sizeof(nlattr) || from + attr->nla_len > to)
                return;
            if (f(attr, index++))
                return;
            from += NLA_ALIGN(attr->nla_len);
        }
    };
    std::string site;
    walk(start + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nfgenmsg)), end,
         [&](const nlattr* attr, std::size_t) {
             if ((attr->nla_type & NLA_TYPE_MASK) != NFTA_RULE_EXPRESSIONS)
                 return false;
             const char* inner = reinterpret_cast<const char*>(attr);
             walk(inner + NLA_HDRLEN, inner + attr->nla_len,
                  [&](const nlattr* elem, std::size_t i) {
                      const auto begin =
                          static_cast<std::uint32_t>(reinterpret_cast<const char*>(elem) - start);
                      if (offset < begin || offset >= begin + elem->nla_len)
                          return false;
                      const std::string name = i < msg.expr_names.size() ? msg.expr_names[i] : "?";
                      site = "expression " + std::to_string(i + 1) + " (" + name + ")";
                      return true;
                  });
             return true;
         });
    return site;
}

Result<void> Batch::commit(Transport& transport) const {
    if (messages_.empty())
        return {};
    // BEGIN + body + END in one buffer; sequence numbers stamped now so that each
    // transaction has fresh ones.
    std::vector<char> wire(NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg)));
    const std::uint32_t begin_seq = transport.next_seq();
    nftnl_batch_begin(wire.data(), begin_seq);
    const std::size_t body_at = wire.size();
    wire.insert(wire.end(), body_.begin(), body_.end());
    std::map<std::uint32_t, std::size_t> by_seq;  // seq -> index in messages_
    for (std::size_t i = 0; i < messages_.size(); ++i) {
        auto* nlh = reinterpret_cast<nlmsghdr*>(wire.data() + body_at + messages_[i].offset);
        nlh->nlmsg_seq = transport.next_seq();
        by_seq.emplace(nlh->nlmsg_seq, i);
    }
    const std::size_t end_at = wire.size();
    wire.resize(end_at + NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg)));
    const std::uint32_t end_seq = transport.next_seq();
    nftnl_batch_end(wire.data() + end_at, end_seq);

    if (auto sent = transport.send(std::as_bytes(std::span(wire))); !sent)
        return sent;

    // Read until every message is accounted for. The kernel sends one ACK per message
    // that asked for one, also after a failure (it reports every refused message, then
    // aborts the whole transaction), so we drain them all: a stale ACK left in the
    // socket would be read as the answer to our next request.
    std::size_t pending = messages_.size();
    std::optional<Error> first_error;
    std::size_t first_error_index = messages_.size();
    std::size_t error_count = 0;
    std::array<std::byte, kReceiveBufferBytes> buf{};
    const std::uint32_t portid = transport.portid();
    while (pending > 0) {
        auto got = transport.receive(buf, 5000);
        if (!got) {
            Error e = got.error();
            e.what = "commit nftables transaction: " + e.what + " (" + std::to_string(pending) +
                     " of " + std::to_string(messages_.size()) + " ACKs missing)";
            return std::unexpected(e);
        }
        auto len = static_cast<int>(*got);
        const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data());
        for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
            if (nlh->nlmsg_pid != portid && nlh->nlmsg_pid != 0)
                continue;
            if (nlh->nlmsg_type != NLMSG_ERROR)
                continue;
            if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(nlmsgerr)) {
                return fail(EPROTO, "commit nftables transaction", "truncated ACK from the kernel");
            }
            const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
            if (nlh->nlmsg_seq == begin_seq || nlh->nlmsg_seq == end_seq) {
                // The batch as a whole was refused (no CAP_NET_ADMIN, no nf_tables):
                // no per-message ACK follows.
                if (err->error == 0)
                    continue;
                const ExtAck ack = parse_ext_ack(nlh);
                return fail(-err->error, "commit nftables transaction", ack.message);
            }
            const auto it = by_seq.find(nlh->nlmsg_seq);
            if (it == by_seq.end())
                continue;  // not ours (a late reply to an older request)
            const std::size_t index = it->second;
            by_seq.erase(it);
            --pending;
            if (err->error == 0)
                continue;
            ++error_count;
            if (index < first_error_index) {
                const Message& msg = messages_[index];
                const ExtAck ack = parse_ext_ack(nlh);
                std::string site = ack.has_offset ? describe_error_site(msg, ack.offset) : "";
                std::string detail = ack.message;
                if (!site.empty())
                    detail = detail.empty() ? site : site + ": " + detail;
                first_error = Error{-err->error, msg.what, detail};
                first_error_index = index;
            }
        }
    }
    if (first_error) {
        if (error_count > 1) {
            first_error->detail += (first_error->detail.empty() ? "" : "; ") +
                                   std::to_string(error_count - 1) + " more refused";
        }
        first_error->detail += (first_error->detail.empty() ? "" : "; ") +
                               std::string("transaction aborted, nothing changed");
        return std::unexpected(*first_error);
    }
    return {};
}

}  // namespace smtpfence::nft
