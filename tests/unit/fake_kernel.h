// A fake nf_tables kernel behind nft::Transport, for unit tests without root. By
// default it only judges batch messages (verdict, refuse_whole_batch, silent): what
// the batch tests need. With keeps_tables it also holds tables as the kernel does:
// a batch changes them all or nothing, and table lookups and chain, set and element
// dumps answer from them, so an nft::Engine runs its real operations against it.
#pragma once

#include <linux/netlink.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nft/netlink.h"

namespace smtpfence::testing {

struct FakeChain {
    std::optional<std::uint32_t> hook;  // base chains only
    std::int32_t priority = 0;
    std::string type;
    std::size_t rules = 0;
};

struct FakeSet {
    std::uint32_t flags = 0;
    std::uint32_t key_type = 0;
    std::uint32_t key_len = 0;
    std::uint64_t handle = 0;
    // Element key bytes -> its packet counter, when it has one.
    std::map<std::vector<std::uint8_t>, std::optional<std::uint64_t>> elements;
    // The uid/gid elements (4-byte keys) in host order.
    [[nodiscard]] std::vector<std::uint32_t> u32_elements() const;
};

struct FakeTable {
    std::uint32_t flags = 0;
    std::optional<std::uint32_t> owner;
    std::map<std::string, FakeChain> chains;
    std::map<std::string, FakeSet> sets;
    // Every chain without rules, as `nft flush table` leaves it.
    void flush();
};

class FakeKernel final : public nft::Transport {
  public:
    static constexpr std::uint32_t kPortId = 4242;

    // Decides the errno (0 = ok) for the index-th message of the batch (BEGIN/END
    // excluded) and an optional extended ACK offset into it.
    std::function<int(std::size_t index, const nlmsghdr* msg, std::uint32_t* offset)> verdict =
        [](std::size_t, const nlmsghdr*, std::uint32_t*) { return 0; };
    int refuse_whole_batch = 0;  // errno for the BEGIN message (e.g. EPERM)
    bool silent = false;         // never answer
    std::size_t messages_seen = 0;
    int sends = 0;

    bool keeps_tables = false;
    std::map<std::string, FakeTable> tables;  // inet tables by name
    std::size_t batches_committed = 0;        // batches that changed the tables

    Result<void> send(std::span<const std::byte> bytes) override;
    Result<std::size_t> receive(std::span<std::byte> buf, int timeout_ms) override;
    [[nodiscard]] std::uint32_t portid() const override { return kPortId; }
    std::uint32_t next_seq() override { return seq_++; }
    Result<void> reserve_send(std::size_t) override { return {}; }

    [[nodiscard]] std::size_t pending_replies() const { return replies_.size(); }
    // The table, or nullptr.
    [[nodiscard]] const FakeTable* table(const std::string& name) const;

  private:
    // A batch message applied to the tables of the open transaction: 0 or an errno.
    int execute(const nlmsghdr* msg, std::map<std::string, FakeTable>& tx);
    // Answers a request outside a batch (a lookup or a dump).
    void answer(const nlmsghdr* req);
    void answer_table(const nlmsghdr* req);
    void answer_chains(const nlmsghdr* req);
    void answer_sets(const nlmsghdr* req);
    void answer_elements(const nlmsghdr* req);
    // Queues a reply of type to req, its payload written by fill.
    void queue_reply(const nlmsghdr* req, std::uint16_t type,
                     const std::function<void(nlmsghdr*)>& fill);
    void queue_ack(const nlmsghdr* req, int err, std::optional<std::uint32_t> offset,
                   const std::string& text);
    void queue_done(const nlmsghdr* req);

    std::deque<std::vector<char>> replies_;
    std::uint32_t seq_ = 100;
    std::uint64_t next_handle_ = 1;
};

}  // namespace smtpfence::testing
