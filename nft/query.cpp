#include "nft/query.h"

#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <span>
#include <string_view>
#include <vector>

#include "nft/handles.h"

namespace smtpfence::nft {

Result<void> query(Transport& transport, std::uint16_t type, std::uint16_t flags,
                   const std::function<void(nlmsghdr*)>& build_payload,
                   const std::function<void(const nlmsghdr*)>& on_message,
                   const std::string& what) {
    std::array<char, 4096> req{};
    const std::uint32_t seq = transport.next_seq();
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(req.data(), type, NFPROTO_INET, flags | NLM_F_ACK, seq);
    build_payload(nlh);
    if (auto sent = transport.send(std::as_bytes(std::span(req.data(), nlh->nlmsg_len))); !sent) {
        return std::unexpected(sent.error().wrap(what));
    }
    std::vector<std::byte> buf(kReceiveBufferBytes);
    const std::uint32_t portid = transport.portid();
    while (true) {
        auto got = transport.receive(buf, 5000);
        if (!got)
            return std::unexpected(got.error().wrap(what));
        auto len = static_cast<int>(*got);
        const auto* msg = reinterpret_cast<const nlmsghdr*>(buf.data());
        for (; mnl_nlmsg_ok(msg, len); msg = mnl_nlmsg_next(msg, &len)) {
            if (msg->nlmsg_seq != seq || (msg->nlmsg_pid != portid && msg->nlmsg_pid != 0)) {
                continue;  // a stale reply to an earlier request
            }
            if (msg->nlmsg_type == NLMSG_DONE)
                return {};
            if (msg->nlmsg_type == NLMSG_ERROR) {
                const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(msg));
                if (err->error == 0)
                    return {};  // ACK of a non-dump request
                return fail(-err->error, what);
            }
            on_message(msg);
        }
    }
}

void set_identity(nftnl_set* s, const std::string& table, const std::string& set) {
    nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
    nftnl_set_set_str(s, NFTNL_SET_TABLE, table.c_str());
    nftnl_set_set_str(s, NFTNL_SET_NAME, set.c_str());
}

Result<void> dump_elements(Transport& transport, const std::string& table, const std::string& set,
                           const std::function<void(nftnl_set_elem*)>& on_elem) {
    SetPtr request = make_set();
    set_identity(request.get(), table, set);
    Result<void> parse_error;
    auto r = query(
        transport, NFT_MSG_GETSETELEM, NLM_F_DUMP,
        [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, request.get()); },
        [&](const nlmsghdr* msg) {
            SetPtr reply = make_set();
            if (nftnl_set_elems_nlmsg_parse(msg, reply.get()) < 0) {
                parse_error = fail(EPROTO, "parse elements of set " + set, "malformed reply");
                return;
            }
            nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(reply.get());
            if (it == nullptr)
                throw std::bad_alloc();
            for (nftnl_set_elem* e = nftnl_set_elems_iter_next(it); e != nullptr;
                 e = nftnl_set_elems_iter_next(it)) {
                on_elem(e);
            }
            nftnl_set_elems_iter_destroy(it);
        },
        "read set " + set + " of table inet " + table);
    if (!r)
        return r;
    return parse_error;
}

std::optional<std::uint32_t> elem_u32(nftnl_set_elem* e) {
    std::uint32_t len = 0;
    const void* key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &len);
    if (key == nullptr || len != sizeof(std::uint32_t))
        return std::nullopt;
    std::uint32_t v = 0;
    std::memcpy(&v, key, sizeof v);
    return v;
}

PacketCount elem_counter(nftnl_set_elem* e) {
    PacketCount count;
    nftnl_set_elem_expr_foreach(
        e,
        [](nftnl_expr* expr, void* data) {
            const char* name = nftnl_expr_get_str(expr, NFTNL_EXPR_NAME);
            if (name != nullptr && std::string_view(name) == "counter") {
                auto* c = static_cast<PacketCount*>(data);
                c->packets = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_PACKETS);
                c->bytes = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_BYTES);
            }
            return 0;
        },
        &count);
    return count;
}

}  // namespace smtpfence::nft
