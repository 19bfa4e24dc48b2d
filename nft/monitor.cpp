#include "nft/monitor.h"

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <string_view>

namespace smtpfence::nft {
namespace {

// Every nf_tables object message carries its table's name as attribute 1
// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE) and, for those below
// a chain or set, that object's name as attribute 2 or 3.
constexpr std::uint16_t kAttrTable = 1;
constexpr std::size_t kMaxAttr = 32;  // above every NFTA_*_MAX we read

using Attrs = std::array<const nlattr*, kMaxAttr>;

Attrs parse_attrs(const nlmsghdr* nlh) {
    Attrs attrs{};
    mnl_attr_parse(
        nlh, sizeof(nfgenmsg),
        [](const nlattr* attr, void* data) {
            const std::uint16_t type = mnl_attr_get_type(attr);
            if (type < kMaxAttr)
                (*static_cast<Attrs*>(data))[type] = attr;
            return MNL_CB_OK;
        },
        &attrs);
    return attrs;
}

std::optional<std::string_view> string_attr(const Attrs& attrs, std::uint16_t type) {
    const nlattr* a = attrs[type];
    if (a == nullptr || mnl_attr_validate(a, MNL_TYPE_NUL_STRING) < 0)
        return std::nullopt;
    return std::string_view(mnl_attr_get_str(a));
}

// What one message did, in nft's words; "" for messages we do not describe.
std::string describe(std::uint16_t msg, const Attrs& attrs) {
    auto named = [&](const char* verb, const char* kind, std::uint16_t name_attr) {
        std::string out = std::string(verb) + " " + kind;
        if (auto name = string_attr(attrs, name_attr))
            out += " " + std::string(*name);
        return out;
    };
    switch (msg) {
        case NFT_MSG_NEWTABLE:
            return "change table";
        case NFT_MSG_DELTABLE:
            return "delete table";
        case NFT_MSG_NEWCHAIN:
            return named("add/change", "chain", NFTA_CHAIN_NAME);
        case NFT_MSG_DELCHAIN:
            return named("delete", "chain", NFTA_CHAIN_NAME);
        case NFT_MSG_NEWRULE:
            return named("add rule to", "chain", NFTA_RULE_CHAIN);
        case NFT_MSG_DELRULE:
            return named("delete rule from", "chain", NFTA_RULE_CHAIN);
        case NFT_MSG_NEWSET:
            return named("add/change", "set", NFTA_SET_NAME);
        case NFT_MSG_DELSET:
            return named("delete", "set", NFTA_SET_NAME);
        case NFT_MSG_NEWSETELEM:
            return named("add elements to", "set", NFTA_SET_ELEM_LIST_SET);
        case NFT_MSG_DELSETELEM:
            return named("delete elements from", "set", NFTA_SET_ELEM_LIST_SET);
        case NFT_MSG_NEWOBJ:
        case NFT_MSG_DELOBJ:
            return "change a stateful object";
        case NFT_MSG_NEWFLOWTABLE:
        case NFT_MSG_DELFLOWTABLE:
            return "change a flowtable";
        default:
            return {};
    }
}

}  // namespace

void EventFilter::feed(std::span<const std::byte> datagram) {
    // Walked by hand rather than with mnl_nlmsg_ok(): it takes a length of 0xffffffff
    // for -1 and would then loop forever on the same message.
    std::size_t offset = 0;
    while (datagram.size() - offset >= sizeof(nlmsghdr)) {
        const auto* nlh = reinterpret_cast<const nlmsghdr*>(datagram.data() + offset);
        const std::size_t len = nlh->nlmsg_len;
        if (len < sizeof(nlmsghdr) || len > datagram.size() - offset)
            return;  // malformed: the rest cannot be trusted
        on_message(nlh);
        offset += NLMSG_ALIGN(len);
        if (offset > datagram.size())
            return;
    }
}

void EventFilter::on_message(const nlmsghdr* nlh) {
    if (NFNL_SUBSYS_ID(nlh->nlmsg_type) != NFNL_SUBSYS_NFTABLES ||
        nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) {
        return;
    }
    const auto msg = static_cast<std::uint16_t>(NFNL_MSG_TYPE(nlh->nlmsg_type));
    const Attrs attrs = parse_attrs(nlh);
    if (msg == NFT_MSG_NEWGEN) {
        // The end of one transaction; its requester's pid and program name.
        if (open_.empty())
            return;
        if (!done_)
            done_.emplace();
        std::string who;
        if (const nlattr* pid = attrs[NFTA_GEN_PROC_PID];
            pid != nullptr && mnl_attr_validate(pid, MNL_TYPE_U32) == 0) {
            who = "pid " + std::to_string(ntohl(mnl_attr_get_u32(pid)));
        }
        if (auto name = string_attr(attrs, NFTA_GEN_PROC_NAME))
            who += (who.empty() ? "" : " ") + ("(" + std::string(*name) + ")");
        if (who.empty())
            who = "netlink port " + std::to_string(nlh->nlmsg_pid);
        if (done_->who.empty())
            done_->who = who;
        else if (done_->who.find(who) == std::string::npos)
            done_->who += ", " + who;
        for (std::string& w : open_) {
            if (std::find(done_->what.begin(), done_->what.end(), w) == done_->what.end())
                done_->what.push_back(std::move(w));
        }
        open_.clear();
        return;
    }
    if (nlh->nlmsg_pid == our_portid_)
        return;  // our own transaction
    const auto* gen = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh));
    if (gen->nfgen_family != NFPROTO_INET)
        return;
    auto table = string_attr(attrs, kAttrTable);
    if (!table || *table != table_)
        return;
    std::string what = describe(msg, attrs);
    if (what.empty())
        return;
    if (std::find(open_.begin(), open_.end(), what) == open_.end())
        open_.push_back(std::move(what));
}

void EventFilter::lost_events() {
    if (!done_)
        done_.emplace();
    done_->events_lost = true;
}

std::optional<ForeignChange> EventFilter::take() {
    std::optional<ForeignChange> out;
    out.swap(done_);
    return out;
}

Result<TableMonitor> TableMonitor::open(const std::string& table, std::uint32_t our_portid) {
    MnlSocketPtr sock(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!sock)
        return fail(errno, "open netlink socket for nftables events");
    if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0)
        return fail(errno, "bind netlink socket for nftables events");
    int group = NFNLGRP_NFTABLES;
    if (mnl_socket_setsockopt(sock.get(), NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0)
        return fail(errno, "subscribe to nftables events (NFNLGRP_NFTABLES)");
    // One full apply of a 10,000-uid allowlist notifies each element: 8 MiB holds that
    // with room to spare. Overflow is still handled (lost_events), not assumed away.
    const int rcvbuf = 8 << 20;
    const int fd = mnl_socket_get_fd(sock.get());
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    return TableMonitor(std::move(sock), EventFilter(table, our_portid));
}

int TableMonitor::fd() const {
    return mnl_socket_get_fd(sock_.get());
}

Result<std::optional<ForeignChange>> TableMonitor::read() {
    std::array<std::byte, 65536> buf{};
    while (true) {
        const ssize_t n = mnl_socket_recvfrom(sock_.get(), buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == ENOBUFS) {
                filter_.lost_events();
                continue;
            }
            return fail(errno, "read nftables events");
        }
        filter_.feed(std::span(buf.data(), static_cast<std::size_t>(n)));
    }
    return filter_.take();
}

}  // namespace smtpfence::nft
