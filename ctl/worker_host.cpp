#include "ctl/worker_host.h"

#include <string>
#include <string_view>
#include <vector>

#include "common/files.h"
#include "common/log.h"
#include "common/text.h"
#include "nfq/worker.h"

namespace smtpfence {

WorkerHost::WorkerHost(const DaemonOptions& options, nft::QueueMode queue)
    : options_(options), queue_(queue), worker_({}) {
    worker_.set_on_exit([this] { release_waiting(); });
}

bool WorkerHost::wants_worker(const Policy& p) const {
    return !options_.no_worker && queue_ != nft::QueueMode::None && p.enabled;
}

bool WorkerHost::wanted(const DaemonState& state) const {
    return state.current && state.enforcing() && wants_worker(state.current->loaded.policy);
}

// When no queue is held yet (start, or enforcing again after `remove` or
// SMTP_BLOCK = "0"), the queue is bound before the rule that feeds it is applied:
// a SYN reaching the rule before then passes it (no queue: bypass), while one sent
// to a queue whose binding is under way could be dropped (see nfq::Queue::open).
// A changed QUEUE_NUM is bound after the apply (sync), as the rules in force
// still feed the old queue if the apply fails.
void WorkerHost::hold_queue_before_apply(const Desired& desired) {
    if (!held_queue_ && wants_worker(desired.loaded.policy))
        hold_queue(desired.loaded.policy.queue_num);
}

void WorkerHost::sync(const DaemonState& state) {
    if (wanted(state)) {
        const Policy& p = state.current->loaded.policy;
        hold_queue(p.queue_num);
        std::vector<std::string> argv = worker_argv(options_, p);
        if (held_queue_)
            argv.insert(argv.end(), {"--queue-fd", std::to_string(held_queue_->fd())});
        worker_.set_argv(std::move(argv));
        worker_.ensure_running();
    } else {
        worker_.stop();
        held_queue_.reset();
        worker_.set_inherited_fd(-1);
    }
}

// The daemon binds the NFQUEUE and hands the socket to each worker it starts: the
// queue then stays bound when a worker dies, and the daemon answers the SYNs that
// waited for it at once (release_waiting) instead of the kernel dropping them,
// which would have each client retransmit a second later and be counted twice.
void WorkerHost::hold_queue(std::uint16_t num) {
    if (held_queue_ && held_queue_->number() == num)
        return;
    held_queue_.reset();
    worker_.set_inherited_fd(-1);
    auto q = nfq::Queue::open(num, 0);  // length 0: fail-open until a worker is ready
    if (!q) {
        log::warning(q.error().message() +
                     "; the worker binds the queue itself (if it dies, the SYNs waiting "
                     "for it may be counted twice)");
        return;
    }
    held_queue_ = std::move(*q);
    worker_.set_inherited_fd(held_queue_->fd());
}

void WorkerHost::release_waiting() {
    if (!held_queue_)
        return;
    if (auto r = held_queue_->release_waiting(); !r)
        log::warning("release the SYNs that waited for the worker: " + r.error().message());
}

bool WorkerHost::ready() const {
    if (worker_.pid() <= 0)
        return false;
    auto text = read_text_file(nfq::ready_file_path(options_.state_dir), 64);
    if (!text)
        return false;
    const std::string_view t(*text);
    return text::parse_unsigned(t.substr(0, t.find('\n')), 4194304) ==
           static_cast<std::uint64_t>(worker_.pid());
}

}  // namespace smtpfence
