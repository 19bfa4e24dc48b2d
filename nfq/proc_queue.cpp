#include "nfq/proc_queue.h"

#include <fstream>

namespace smtpfence::nfq {

std::optional<QueueProcStats> read_queue_proc_stats(std::uint16_t queue_num,
                                                    const std::string& path) {
    std::ifstream in(path);
    unsigned long queue = 0;
    QueueProcStats s;
    unsigned long mode = 0;
    unsigned long range = 0;
    int one = 0;
    while (in >> queue >> s.portid >> s.waiting >> mode >> range >> s.queue_dropped >>
           s.user_dropped >> s.id_sequence >> one) {
        if (queue == queue_num)
            return s;
    }
    return std::nullopt;
}

}  // namespace smtpfence::nfq
