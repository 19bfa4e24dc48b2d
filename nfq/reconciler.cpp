#include "nfq/reconciler.h"

#include <ctime>

#include "common/log.h"

namespace smtpfence::nfq {

Reconciler::Reconciler(KernelReadings& kernel, AttemptSink& sink, Describe describe,
                       const LogRecovery& recovered)
    : kernel_(kernel),
      sink_(sink),
      describe_(std::move(describe)),
      explained_since_(recovered.explained_since) {
    if (recovered.checkpoint) {
        set_handle_ = recovered.checkpoint->set_handle;
        baseline_ = recovered.checkpoint->kernel;
    }
}

void Reconciler::explained(std::uint32_t packet_id, Attempt attempt) {
    explained_pending_.emplace_back(packet_id, attempt.uid);
    // Queued after the counters being reconciled were read: its record must come
    // after that round's checkpoint, which does not hold it (see reconcile()).
    if (holding_after_.has_value() && packet_id > *holding_after_) {
        held_.push_back(std::move(attempt));
        return;
    }
    sink_.explained(attempt);
}

// The kernel counts a SYN (observe rule) just before it queues it, and gives it the
// queue's next packet id. So the counters read between two identical readings S of the
// queue's id sequence hold exactly the SYNs queued with ids <= S (all of them already in
// our socket, or lost to an overflow), plus those never queued. Attempts we explain
// with an id > S belong to the next round.
void Reconciler::reconcile(const ExplainWaiting& explain_waiting) {
    ++stats_.reconciles;
    const std::optional<Readings> readings = read_kernel();
    if (!readings)
        return;
    follow_set(readings->set_handle);
    const std::uint32_t sequence = readings->sequence;
    // Every packet with an id <= the sequence is in our socket (or was lost to an
    // overflow, and is counted-only): explain what is waiting, then take the explained
    // attempts up to that id. A SYN queued since (id > S) may be explained too: its
    // record is held back until this round's checkpoint is written, as a worker starting
    // after a kill takes the attempts after the last checkpoint as not in its kernel
    // totals; written before it, it would be counted twice.
    holding_after_ = sequence;
    const Result<void> drained = explain_waiting();
    holding_after_.reset();
    if (!drained)
        log::warning("reconcile: " + drained.error().message());
    while (!explained_pending_.empty() && explained_pending_.front().first <= sequence) {
        ++explained_since_[explained_pending_.front().second];
        explained_pending_.pop_front();
    }
    reconciled_through_ = sequence;
    const std::time_t now = std::time(nullptr);
    const bool changed = write_counted_only(readings->counters, now);
    explained_since_.clear();
    if (changed) {
        Checkpoint cp;
        cp.time = now;
        cp.set_handle = set_handle_;
        cp.kernel = baseline_;
        sink_.checkpoint(cp);
    }
    for (const Attempt& a : held_)
        sink_.explained(a);
    held_.clear();
}

std::optional<Reconciler::Readings> Reconciler::read_kernel() {
    const Result<std::optional<std::uint64_t>> set = kernel_.blocked_set();
    // Only the counter dump sits between the two readings, to keep the window in which a
    // queued SYN makes us retry short.
    std::optional<std::uint32_t> before;
    std::optional<std::uint32_t> after;
    Result<std::map<std::uint32_t, std::uint64_t>> counts;
    for (int attempt = 0; attempt < 20; ++attempt) {
        before = kernel_.queue_id_sequence();
        counts = kernel_.counters();
        after = kernel_.queue_id_sequence();
        if (before && before == after)
            break;
    }
    if (!before || before != after) {
        ++stats_.reconcile_retries;
        return std::nullopt;  // a flood is queueing right now: try again next round
    }
    if (!set) {
        log::warning("reconcile: " + set.error().message());
        return std::nullopt;
    }
    const std::optional<std::uint64_t> handle = *set;
    if (!handle)
        return std::nullopt;  // table not there (being restored): try again later
    if (!counts) {
        log::warning("reconcile: " + counts.error().message());
        return std::nullopt;
    }
    return Readings{*before, *handle, std::move(*counts)};
}

void Reconciler::follow_set(std::uint64_t handle) {
    if (handle == set_handle_)
        return;
    // A new blocked set (the table was deleted and re-created): its counters start from
    // zero; what the old set counted since our last checkpoint is gone with it.
    if (set_handle_ != 0) {
        ++stats_.counter_resets;
        log::warning("the blocked set was re-created (handle " + std::to_string(set_handle_) +
                     " -> " + std::to_string(handle) + "): counting restarts from its counters");
    }
    set_handle_ = handle;
    baseline_.clear();
}

bool Reconciler::write_counted_only(const std::map<std::uint32_t, std::uint64_t>& counters,
                                    std::time_t now) {
    bool changed = false;
    for (const auto& [uid, packets] : counters) {
        std::uint64_t& base = baseline_[uid];
        if (packets == base)
            continue;
        // A counter never goes down within one set; if it does, trust the kernel.
        const std::uint64_t delta = packets > base ? packets - base : packets;
        const std::uint64_t seen = explained_since_[uid];
        if (delta > seen) {
            CountedOnly c;
            c.time = now;
            c.uid = uid;
            c.count = delta - seen;
            describe_(c);
            sink_.counted_only(c);
            stats_.counted_only += c.count;
        }
        base = packets;
        changed = true;
    }
    return changed;
}

}  // namespace smtpfence::nfq
