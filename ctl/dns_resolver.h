// Non-blocking DNS lookups of exception names (A and AAAA, with their TTLs) through
// c-ares, on the servers of a resolv.conf. The daemon's loop polls poll_fds(), passes
// what became ready to process() and wakes after timeout() even without I/O; answers
// arrive through the callbacks, from inside process(). DNS only: /etc/hosts carries no
// TTL, so a name there would never be refreshed.
#pragma once

#include <ares.h>
#include <poll.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/handles.h"
#include "policy/dns_answer.h"

namespace smtpfence {

struct DnsResolverOptions {
    std::string resolv_conf = "/etc/resolv.conf";  // the daemon's --resolv-conf
    // The first try's wait for each server; c-ares doubles it every round of tries.
    std::chrono::milliseconds timeout{2000};
    int tries = 2;  // rounds over the servers before an answer is Timeout
};

class DnsResolver {
  public:
    using Callback = std::function<void(DnsAnswer)>;

    [[nodiscard]] static Result<DnsResolver> create(const DnsResolverOptions& options = {});
    DnsResolver(DnsResolver&&) noexcept = default;
    // Not assignable: assigning would free the pending counter before the old channel,
    // whose destruction still ends its queries through it. Reset, then emplace.
    DnsResolver& operator=(DnsResolver&&) = delete;

    // Asks for name's A and AAAA records; done runs once with the answer, from inside a
    // later process() (or at once when the query cannot even start). done must not
    // throw: an exception is caught and logged. Not run when the resolver is destroyed
    // with the query pending.
    void resolve(const std::string& name, Callback done);

    // The sockets to poll, with the events c-ares waits for (POLLIN, POLLOUT).
    [[nodiscard]] std::vector<pollfd> poll_fds() const;
    // Reads and writes what poll() reported in ready's revents (entries with none are
    // passed over) and handles the timeouts that have passed; call it also when
    // timeout() ran out with nothing ready.
    void process(const std::vector<pollfd>& ready);
    // How long until process() must run even without I/O (a try timing out), rounded
    // up; nullopt when no query is pending.
    [[nodiscard]] std::optional<std::chrono::milliseconds> timeout() const;
    // Queries sent and not yet answered.
    [[nodiscard]] std::size_t pending() const { return *pending_; }

  private:
    using ChannelPtr = std::unique_ptr<ares_channeldata, CDeleter<ares_destroy>>;
    struct Query;
    static void on_done(void* arg, int status, int timeouts, ares_addrinfo* result);

    DnsResolver(ChannelPtr channel, std::unique_ptr<std::size_t> pending)
        : pending_(std::move(pending)), channel_(std::move(channel)) {}
    // On the heap: the queries count down through it, and the resolver may move.
    // Declared first so that it outlives the channel, whose destruction still ends
    // (without calling back) the queries pending.
    std::unique_ptr<std::size_t> pending_;
    ChannelPtr channel_;
};

}  // namespace smtpfence
