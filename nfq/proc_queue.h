// The kernel's own view of one NFQUEUE: /proc/net/netfilter/nfnetlink_queue, which
// shows the queues of the reader's network namespace, one line per bound queue:
// "queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace smtpfence::nfq {

struct QueueProcStats {
    std::uint32_t portid = 0;         // the bound socket's netlink port id
    std::uint64_t waiting = 0;        // packets queued, not yet given a verdict
    std::uint64_t queue_dropped = 0;  // dropped: the queue was full (queue maxlen)
    std::uint64_t user_dropped = 0;   // dropped: the socket's receive buffer was full (ENOBUFS)
    std::uint32_t id_sequence = 0;    // the last packet id given out
};

// nullopt when nobody is bound to queue_num. path is for tests.
[[nodiscard]] std::optional<QueueProcStats> read_queue_proc_stats(
    std::uint16_t queue_num, const std::string& path = "/proc/net/netfilter/nfnetlink_queue");

}  // namespace smtpfence::nfq
