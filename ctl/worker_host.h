// The NFQUEUE worker's host: runs the worker while the policy wants one, and holds
// the queue for it (see worker_host.cpp) so that no SYN is lost while none runs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>

#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/supervisor.h"
#include "nfq/queue.h"

namespace smtpfence {

class WorkerHost {
  public:
    WorkerHost(const DaemonOptions& options, nft::QueueMode queue);
    WorkerHost(const WorkerHost&) = delete;
    WorkerHost& operator=(const WorkerHost&) = delete;

    // Whether this policy, when enforced, has a worker (and so a queue).
    [[nodiscard]] bool wants_worker(const Policy& policy) const;
    // Whether the state in force has a worker.
    [[nodiscard]] bool wanted(const DaemonState& state) const;

    // Binds the queue before an apply when none is held yet (see worker_host.cpp).
    void hold_queue_before_apply(const Desired& desired);
    // Starts, restarts or stops the worker (and the held queue) for the state in force.
    void sync(const DaemonState& state);

    // The supervisor's loop hooks: restarts due (ms until the next, -1: none), a reaped
    // child (true: the worker).
    [[nodiscard]] int tick() { return worker_.tick(); }
    bool ended(pid_t pid, int status) { return worker_.ended(pid, status); }
    void stop() { worker_.stop(); }

    [[nodiscard]] pid_t pid() const { return worker_.pid(); }
    [[nodiscard]] std::uint64_t restarts() const { return worker_.restarts(); }
    // The running worker has said it is ready (its pid in worker.ready).
    [[nodiscard]] bool ready() const;
    [[nodiscard]] nft::QueueMode queue_mode() const { return queue_; }

  private:
    void hold_queue(std::uint16_t num);
    void release_waiting();

    const DaemonOptions& options_;
    nft::QueueMode queue_;
    std::optional<nfq::Queue> held_queue_;  // declared before worker_: outlives it
    WorkerSupervisor worker_;
};

}  // namespace smtpfence
