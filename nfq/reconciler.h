// The reconciler: records what the kernel's exact per-uid counters of the blocked set
// hold beyond the attempts the worker explained, so that every attempt is recorded
// exactly once (explained or counted-only), across restarts and kills of the worker.
// Why it reads the counters between two readings of the queue's id sequence, and why
// some records come after a checkpoint: docs/internals.md, "Exact counts".
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "common/error.h"
#include "nfq/attempt.h"
#include "nfq/attempt_log.h"

namespace smtpfence::nfq {

// What the reconciler reads from the kernel: the worker reads nftables and
// /proc/net/netfilter/nfnetlink_queue, unit tests script the readings.
class KernelReadings {
  public:
    virtual ~KernelReadings() = default;
    // The blocked set's handle (a new set, after the table was re-created, has a new
    // one); nullopt while the table or the set is not there.
    [[nodiscard]] virtual Result<std::optional<std::uint64_t>> blocked_set() = 0;
    // The blocked set's packet counter per uid.
    [[nodiscard]] virtual Result<std::map<std::uint32_t, std::uint64_t>> counters() = 0;
    // The last packet id the kernel gave out on the queue; nullopt when it is not bound.
    [[nodiscard]] virtual std::optional<std::uint32_t> queue_id_sequence() = 0;
};

struct ReconcilerStats {
    std::uint64_t reconciles = 0;
    std::uint64_t counted_only = 0;
    std::uint64_t counter_resets = 0;     // the blocked set was replaced under us
    std::uint64_t reconcile_retries = 0;  // rounds postponed: the queue moved while we read
};

class Reconciler {
  public:
    // Fills in a counted-only record's user and account from its uid.
    using Describe = std::function<void(CountedOnly& record)>;
    // Explains every packet waiting in the queue (each through explained()).
    using ExplainWaiting = std::function<Result<void>()>;

    // recovered: what the history holds (HistoryStore::recover), so that a new
    // reconciler starts where the last one's records end.
    Reconciler(KernelReadings& kernel, AttemptSink& sink, Describe describe,
               const LogRecovery& recovered);

    // True for a packet queued before the last reconciled id: it is in that round's
    // counted-only records already, and explaining it would count it twice.
    [[nodiscard]] bool accounted_for(std::uint32_t packet_id) const {
        return reconciled_through_ != 0 && packet_id <= reconciled_through_;
    }

    // The attempt explained from the packet with this id: written to the sink now, or,
    // when it was queued after the readings of the round in progress, once that round's
    // checkpoint is written.
    void explained(std::uint32_t packet_id, Attempt attempt);

    // One round: reads the counters, explains what waits (explain_waiting), writes a
    // counted-only record per uid for what the kernel counted beyond what was explained,
    // then a checkpoint when a counter moved.
    void reconcile(const ExplainWaiting& explain_waiting);

    [[nodiscard]] const ReconcilerStats& stats() const { return stats_; }

  private:
    // The counters read between two equal readings S of the queue's id sequence,
    // with the blocked set's handle; nullopt when this round cannot be reconciled.
    struct Readings {
        std::uint32_t sequence = 0;
        std::uint64_t set_handle = 0;
        std::map<std::uint32_t, std::uint64_t> counters;
    };
    [[nodiscard]] std::optional<Readings> read_kernel();
    void follow_set(std::uint64_t handle);
    // Writes the counted-only records; true when a counter moved.
    bool write_counted_only(const std::map<std::uint32_t, std::uint64_t>& counters,
                            std::time_t now);

    KernelReadings& kernel_;
    AttemptSink& sink_;
    Describe describe_;
    std::uint64_t set_handle_ = 0;
    std::map<std::uint32_t, std::uint64_t> baseline_;
    std::map<std::uint32_t, std::uint64_t> explained_since_;
    std::deque<std::pair<std::uint32_t, std::uint32_t>> explained_pending_;  // (packet id, uid)
    std::uint32_t reconciled_through_ = 0;        // queue packet ids up to this are accounted for
    std::optional<std::uint32_t> holding_after_;  // during reconcile(): its S
    std::vector<Attempt> held_;  // explained with an id > S, written after the checkpoint
    ReconcilerStats stats_;
};

}  // namespace smtpfence::nfq
