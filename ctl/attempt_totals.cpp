#include "ctl/attempt_totals.h"

namespace smtpfence {

void AttemptTotals::update(const std::map<std::uint32_t, nft::PacketCount>& kernel) {
    const auto carry = [](Seen& s, std::uint64_t now) {
        // Attempts between the last read and the rebuild are lost; those after it count.
        if (now < s.last)
            s.base += s.last;
        s.last = now;
    };
    for (auto& [uid, s] : seen_) {
        if (!kernel.contains(uid))
            carry(s, 0);
    }
    for (const auto& [uid, count] : kernel)
        carry(seen_[uid], count.packets);
    for (const auto& [uid, s] : seen_) {
        if (s.base + s.last > 0)
            totals_[uid] = s.base + s.last;
    }
}

}  // namespace smtpfence
