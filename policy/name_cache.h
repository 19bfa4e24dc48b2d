// The addresses each exception name currently allows, kept from the DNS answers the
// daemon gets: pure logic, the clock passed in by the caller (the daemon's steady clock,
// a fake one in tests). The rules (TTL floor and ceiling, grace for addresses that left
// the answer, last good set kept on failure, retry backoff) are in docs/ (issue 17).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "policy/dns_answer.h"

namespace smtpfence {

struct NameCacheConfig {
    std::chrono::seconds ttl_min{30};    // DEST_TTL_MIN
    std::chrono::seconds ttl_max{3600};  // DEST_TTL_MAX
    std::chrono::seconds grace{900};     // DEST_GRACE
};

// One name as `list` and `status` show it; durations are relative to the `now` asked.
struct NameStatus {
    struct Address {
        IpAddress address;
        // Set when the address has left the answer and is allowed only until then.
        std::optional<std::chrono::seconds> grace_left;
    };
    std::vector<Address> addresses;      // sorted, current and in grace
    bool resolved = false;               // false until the first good answer
    bool querying = false;               // a query is under way
    std::chrono::seconds refresh_in{0};  // until the next query (0: due now or querying)
    std::uint32_t ttl = 0;               // of the last good answer, as received
    struct Failure {
        std::string text;               // "SERVFAIL: Server failed" (status and message)
        std::chrono::seconds since{0};  // how long the name has been failing
    };
    std::optional<Failure> error;  // the name is failing now
};

class NameCache {
  public:
    using Clock = std::chrono::steady_clock;
    using TimePoint = Clock::time_point;

    explicit NameCache(NameCacheConfig config) : config_(config) {}
    // New bounds (a reload): they apply from each name's next answer on.
    void configure(NameCacheConfig config) { config_ = config; }

    // The names wanted now: new ones are due at once, dropped ones are forgotten.
    void set_names(const std::set<std::string>& names);
    // Names to query now: due and not already being queried. Sorted.
    [[nodiscard]] std::vector<std::string> due(TimePoint now) const;
    // A query for name was sent; it is not due again until its answer arrived.
    void started(const std::string& name, TimePoint now);
    // The queries under way will never answer (the resolver was replaced): their
    // names are due again at now.
    void abandoned(TimePoint now);
    // The answer to the query for name (ignored when the name was dropped meanwhile).
    void on_answer(const std::string& name, const DnsAnswer& answer, TimePoint now);
    // Forgets addresses whose grace has ended (the next deadline may say when).
    void expire(TimePoint now);

    // The addresses name allows at now: the current answer and those still in grace.
    [[nodiscard]] std::set<IpAddress> addresses(const std::string& name, TimePoint now) const;
    // The earliest time something is due: a query (of a name not being queried) or the
    // end of a grace. nullopt when nothing is.
    [[nodiscard]] std::optional<TimePoint> next_deadline() const;
    // Changes whenever the addresses some name allows change (an answer, a grace that
    // ended, a name dropped): the caller re-plans the kernel's sets when it moved.
    [[nodiscard]] std::uint64_t version() const { return version_; }

    [[nodiscard]] std::optional<NameStatus> status(const std::string& name, TimePoint now) const;
    [[nodiscard]] std::vector<std::string> names() const;

  private:
    struct Entry {
        std::set<IpAddress> current;           // the last good answer
        std::map<IpAddress, TimePoint> grace;  // left the answer; allowed until
        bool resolved = false;
        bool querying = false;
        TimePoint next_query = TimePoint::min();  // due at once
        std::uint32_t ttl = 0;
        std::chrono::seconds backoff{0};  // the last retry delay; 0 after success
        std::optional<std::string> error;
        TimePoint failing_since{};
    };
    void on_good(Entry& entry, const DnsAnswer& answer, TimePoint now);
    void on_failure(Entry& entry, const DnsAnswer& answer, TimePoint now);
    [[nodiscard]] std::chrono::seconds clamp_ttl(std::uint32_t ttl) const;

    NameCacheConfig config_;
    std::map<std::string, Entry> entries_;
    std::uint64_t version_ = 0;
};

}  // namespace smtpfence
