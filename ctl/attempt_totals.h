// Per-uid attempt totals for smtpfence_attempts_total (docs/metrics.md): fed with the
// kernel's `blocked` set counters, they only grow within the daemon's life. A counter
// that goes down (the set was rebuilt, an element was deleted) is carried: what was
// last seen is added to a base, so a Prometheus counter never sees a reset it did not
// cause itself.
#pragma once

#include <cstdint>
#include <map>

#include "nft/engine.h"

namespace smtpfence {

class AttemptTotals {
  public:
    // The blocked set's counters as read now; a uid missing from them counts as 0.
    void update(const std::map<std::uint32_t, nft::PacketCount>& kernel);
    // The totals of the uids seen with attempts (none with 0).
    [[nodiscard]] const std::map<std::uint32_t, std::uint64_t>& by_uid() const { return totals_; }

  private:
    struct Seen {
        std::uint64_t base = 0;  // the sum of the counters seen before they went down
        std::uint64_t last = 0;  // the kernel's counter when last read
    };
    std::map<std::uint32_t, Seen> seen_;
    std::map<std::uint32_t, std::uint64_t> totals_;
};

}  // namespace smtpfence
