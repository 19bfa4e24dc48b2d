// The NFQUEUE side of the worker, on libnetfilter_queue's libmnl helpers.
//
// Overflow policy (decided, see docs/internals.md, "Overflow policy"): the queue is bound with
// NFQA_CFG_F_FAIL_OPEN, so when our queue is full or our socket cannot take another
// message the kernel passes the SYN on to the `enforce` chain instead of dropping it.
// The SYN is still refused there and still counted in the `blocked` set; we only lose
// the explanation, and the reconciler records it as counted-only. Nothing waits on us.
#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/handles.h"

namespace smtpfence::nfq {

struct QueuedPacket {
    std::uint32_t id = 0;
    bool has_uid = false;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::span<const std::uint8_t> payload;  // network header onwards, up to kCopyBytes
};

struct QueueCounters {
    std::uint64_t packets = 0;
    std::uint64_t verdict_batches = 0;
    std::uint64_t enobufs = 0;    // our receive buffer overflowed (kernel failed open)
    std::uint64_t malformed = 0;  // messages we could not parse (still given a verdict)
    std::uint64_t verdict_errors = 0;
};

class Queue;

// Exactly one verdict per queued packet: a PendingVerdict is created for every packet
// received and, however its handling ends (return, early exit, exception), its
// destructor adds the packet to the verdict batch. Verdicts are always ACCEPT: the
// worker observes, the `enforce` chain that follows decides.
class PendingVerdict {
  public:
    PendingVerdict(Queue& queue, std::uint32_t id) : queue_(&queue), id_(id) {}
    PendingVerdict(PendingVerdict&& other) noexcept
        : queue_(std::exchange(other.queue_, nullptr)), id_(other.id_) {}
    PendingVerdict& operator=(PendingVerdict&&) = delete;
    PendingVerdict(const PendingVerdict&) = delete;
    PendingVerdict& operator=(const PendingVerdict&) = delete;
    ~PendingVerdict();

  private:
    Queue* queue_;
    std::uint32_t id_;
};

class Queue {
  public:
    // Binds queue_num and configures it in the same message (see queue.cpp for why),
    // then sets its length. Copies kCopyBytes of each packet (IPv6 40 + TCP 60 = 100
    // bytes of headers is all we parse) and asks for the socket's uid/gid.
    // initial_length: kMaxQueueLength for a worker that reads at once; 0 for the
    // daemon, which holds the socket across worker restarts (see adopt()): with
    // FAIL_OPEN and length 0 nothing waits until a worker says it is ready.
    [[nodiscard]] static Result<Queue> open(std::uint16_t queue_num,
                                            std::uint32_t initial_length = kMaxQueueLength);
    // Wraps a socket that open() bound in the daemon and the worker inherited (its
    // descriptor number passed on the command line). The queue stays bound while
    // either process holds the socket, so a worker that dies does not make the kernel
    // drop the SYNs waiting for it (their clients' retransmissions would be counted
    // a second time).
    [[nodiscard]] static Result<Queue> adopt(int fd, std::uint16_t queue_num);

    Queue(Queue&&) noexcept = default;
    Queue& operator=(Queue&&) noexcept = default;
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;
    ~Queue() = default;

    [[nodiscard]] int fd() const;

    // Reads one datagram (non-blocking) and calls handle(packet, pending) for each
    // packet in it; then flushes the verdicts. Returns the number of packets, 0 when
    // nothing was waiting.
    template <class Handler>
    Result<std::size_t> receive(Handler&& handle);

    // Sends one batch verdict covering every id up to the highest pending one
    // (NFQNL_MSG_VERDICT_BATCH: ids are increasing per queue, and all our verdicts are
    // the same ACCEPT, so one message answers them all).
    void flush_verdicts();

    // Before closing: sets the queue length to 0 so that, with FAIL_OPEN, every new
    // SYN passes straight on to the enforce chain. Closing a socket with SYNs waiting
    // would make the kernel drop them (they are counted already, and each client's
    // retransmission would be counted again); after this, drain what waits and close.
    [[nodiscard]] Result<void> stop_accepting();
    // The worker, once its start-up is done: the queue takes SYNs again.
    [[nodiscard]] Result<void> start_accepting();
    // The daemon, after its worker died: stops accepting, discards what the worker left
    // unread in the socket and accepts every packet still waiting (ids up to the
    // queue's id_sequence, read once no more can be queued), so that none waits for
    // the next worker past its client's retransmission timeout. They go on to the
    // enforce chain, which refuses them; the kernel counted them already, the next
    // worker's reconciler records them.
    [[nodiscard]] Result<void> release_waiting();

    [[nodiscard]] const QueueCounters& counters() const { return counters_; }
    [[nodiscard]] std::uint16_t number() const { return queue_num_; }

    static constexpr std::uint32_t kCopyBytes = 128;
    // Room for this many packets in flight; beyond it the kernel fails open.
    static constexpr std::uint32_t kMaxQueueLength = 4096;
    // ~300 bytes per queued-packet message: 4 MiB holds the whole queue three times.
    static constexpr int kReceiveBufferBytes = 4 << 20;

  private:
    friend class PendingVerdict;
    Queue(MnlSocketPtr sock, std::uint16_t queue_num)
        : sock_(std::move(sock)), queue_num_(queue_num), buf_(kDatagramBytes) {}
    // Sends a configuration message and reads up to its ACK (see open()).
    Result<void> configure(nlmsghdr* nlh);
    Result<std::size_t> receive_raw();
    Result<void> set_length(std::uint32_t length);
    std::size_t dispatch(std::size_t len, void (*fn)(void*, const QueuedPacket&, PendingVerdict&),
                         void* ctx);
    void add_verdict(std::uint32_t id);

    static constexpr std::size_t kDatagramBytes = std::size_t{256} * 1024;
    static constexpr std::uint32_t kConfigSeq = 1;  // packet messages carry sequence 0

    MnlSocketPtr sock_;
    std::uint16_t queue_num_;
    std::vector<char> buf_;
    bool have_pending_ = false;
    std::uint32_t max_pending_id_ = 0;
    QueueCounters counters_;
};

template <class Handler>
Result<std::size_t> Queue::receive(Handler&& handle) {
    auto len = receive_raw();
    if (!len)
        return len;
    if (*len == 0)
        return std::size_t{0};
    using H = std::remove_reference_t<Handler>;
    const std::size_t n = dispatch(
        *len,
        [](void* ctx, const QueuedPacket& p, PendingVerdict& v) { (*static_cast<H*>(ctx))(p, v); },
        &handle);
    flush_verdicts();
    return n;
}

}  // namespace smtpfence::nfq
