// The destination exceptions in the kernel (docs/relay-exceptions.md): the config's
// SMTP_ALLOWDEST and allow.list's `... to HOST[:PORT]` lines, their names resolved
// through c-ares without blocking the daemon's loop, planned into the six dest_* sets
// and kept there as set-element changes when an answer, an account or the list changes.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_watch.h"
#include "ctl/daemon.h"
#include "ctl/daemon_state.h"
#include "ctl/dns_resolver.h"
#include "nft/dest_range.h"
#include "nft/engine.h"
#include "policy/dest_plan.h"
#include "policy/name_cache.h"

namespace smtpfence {

// Every exception in force: the config's first, then allow.list's.
[[nodiscard]] std::vector<DestException> exceptions_of(const Desired& desired);

class DestSync {
  public:
    DestSync(const DaemonOptions& options, nft::Engine& engine, DaemonState& state);

    // Before desired is applied whole (start, reload): its names are looked up from now
    // on, and desired.spec.dest is planned from the addresses known now (a name not
    // answered yet has none until its answer). The counters of the sets about to be
    // replaced are read, to be kept once apply_succeeded() says they were replaced.
    void prepare(Desired& desired);
    void apply_succeeded();

    // The accounts or allow.list changed (state.current is the new one): re-plans and
    // changes the kernel's elements, O(difference).
    [[nodiscard]] Result<void> replan();

    // The loop's part: the resolver's sockets, its timeouts, due lookups and the grace
    // and refresh deadlines of the names.
    void add_pollfds(std::vector<pollfd>& fds);
    // Every loop turn, whatever poll() returned: c-ares handles its timeouts here.
    void process(const std::vector<pollfd>& fds);
    [[nodiscard]] int timeout_ms() const;
    void tick();
    // Each second: resolv.conf changed? Then the resolver reads it again.
    void watch();

    // For `list` and `status`.
    [[nodiscard]] nlohmann::json list_json();
    [[nodiscard]] nlohmann::json status_json() const;
    // The exceptions (their text) that let uid (primary gid gid) reach address:port,
    // as the kernel's sets decide it now.
    [[nodiscard]] std::vector<std::string> covering(std::uint32_t uid, std::uint32_t gid,
                                                    const Network& address,
                                                    std::uint16_t port) const;
    // The addresses a name of an exception has now; nullopt when no exception names it.
    [[nodiscard]] std::optional<std::vector<Network>> addresses_of(const std::string& name) const;

  private:
    using Clock = std::chrono::steady_clock;
    [[nodiscard]] DestPlan plan_for(const Desired& desired) const;
    void watch_names(const std::vector<DestException>& exceptions, const Policy& policy);
    [[nodiscard]] std::set<std::string> rules_of(const nft::DestRange& range) const;
    void forget_gone_rules();
    void start_lookups();
    void open_resolver();
    // Adds the packets counted by the ranges about to disappear to their exceptions.
    void retire(const std::map<nft::DestRange, nft::PacketCount>& counts,
                const std::set<nft::DestRange>& gone);
    [[nodiscard]] std::map<std::string, std::uint64_t> uses_now();
    void roll_day();

    const DaemonOptions& options_;
    nft::Engine& engine_;
    DaemonState& state_;
    FileWatch resolv_watch_;
    std::optional<DnsResolver> resolver_;
    std::string resolver_error_;
    NameCache cache_;
    std::uint64_t cache_version_ = 0;
    DestPlan plan_;                        // what the kernel holds
    std::vector<std::string> rule_texts_;  // plan_'s exceptions, by index
    // prepare()'s, until apply_succeeded(): the exceptions, policy and plan of the
    // desired state, and the counters of the sets the apply replaces.
    struct Pending {
        std::vector<DestException> exceptions;
        Policy policy;
        DestPlan plan;
        std::optional<std::map<nft::DestRange, nft::PacketCount>> counts;
    };
    std::optional<Pending> pending_;
    // A replan whose kernel change failed is tried again then (not on every turn).
    static constexpr std::chrono::seconds kRetryDelay{5};
    std::optional<Clock::time_point> retry_at_;
    std::map<std::string, std::uint64_t> retired_;     // uses of ranges gone, per rule
    std::map<std::string, std::uint64_t> today_base_;  // uses at local midnight
    std::time_t day_ends_ = 0;
    std::size_t pollfd_from_ = 0, pollfd_to_ = 0;
};

}  // namespace smtpfence
