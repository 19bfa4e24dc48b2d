// A fake nf_tables kernel behind nft::Transport, for unit tests without root: it
// plays the kernel's side of nfnetlink batches (ACKs, refusals, silence).
#pragma once

#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nft/netlink.h"

namespace smtpfence::testing {

// Plays the kernel's side of nfnetlink batches.
class FakeKernel final : public nft::Transport {
  public:
    // Decides the errno (0 = ok) for the index-th message of the batch (BEGIN/END
    // excluded) and an optional extended ACK offset into it.
    std::function<int(std::size_t index, const nlmsghdr* msg, std::uint32_t* offset)> verdict =
        [](std::size_t, const nlmsghdr*, std::uint32_t*) { return 0; };
    int refuse_whole_batch = 0;  // errno for the BEGIN message (e.g. EPERM)
    bool silent = false;         // never answer
    std::size_t messages_seen = 0;

    Result<void> send(std::span<const std::byte> bytes) override {
        ++sends;
        int len = static_cast<int>(bytes.size());
        const auto* nlh = reinterpret_cast<const nlmsghdr*>(bytes.data());
        std::size_t index = 0;
        for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
            if (nlh->nlmsg_type == NFNL_MSG_BATCH_BEGIN) {
                if (refuse_whole_batch != 0) {
                    queue_ack(nlh, refuse_whole_batch, std::nullopt, "no permission");
                    return {};
                }
                continue;
            }
            if (nlh->nlmsg_type == NFNL_MSG_BATCH_END)
                continue;
            ++messages_seen;
            std::uint32_t offset = 0;
            const int err = verdict(index++, nlh, &offset);
            if ((nlh->nlmsg_flags & NLM_F_ACK) != 0 || err != 0) {
                queue_ack(nlh, err, err != 0 && offset != 0 ? std::optional(offset) : std::nullopt,
                          err != 0 ? "refused by fake kernel" : "");
            }
        }
        return {};
    }

    Result<std::size_t> receive(std::span<std::byte> buf, int) override {
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
    [[nodiscard]] std::uint32_t portid() const override { return 4242; }
    std::uint32_t next_seq() override { return seq_++; }
    Result<void> reserve_send(std::size_t) override { return {}; }

    std::size_t pending_replies() const { return replies_.size(); }
    int sends = 0;

  private:
    void queue_ack(const nlmsghdr* req, int err, std::optional<std::uint32_t> offset,
                   const std::string& text) {
        std::vector<char> out(NLMSG_SPACE(sizeof(nlmsgerr)) + 256, 0);
        auto* nlh = reinterpret_cast<nlmsghdr*>(out.data());
        nlh->nlmsg_type = NLMSG_ERROR;
        nlh->nlmsg_seq = req->nlmsg_seq;
        nlh->nlmsg_pid = 4242;
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

    std::deque<std::vector<char>> replies_;
    std::uint32_t seq_ = 100;
};

}  // namespace smtpfence::testing
