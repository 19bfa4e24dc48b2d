#include "policy/name_cache.h"

#include <algorithm>
#include <utility>

namespace smtpfence {

namespace {

using std::chrono::seconds;

// What entry allows at now: the current answer and the addresses still in grace.
template <class Entry, class TimePoint>
std::set<IpAddress> allowed(const Entry& entry, TimePoint now) {
    std::set<IpAddress> out = entry.current;
    for (const auto& [address, until] : entry.grace) {
        if (until > now)
            out.insert(address);
    }
    return out;
}

seconds seconds_until(NameCache::TimePoint when, NameCache::TimePoint now) {
    if (when <= now)
        return seconds{0};
    // Rounded up: "refresh in 0 s" only when it is due.
    return std::chrono::ceil<seconds>(when - now);
}

std::string failure_text(const DnsAnswer& answer) {
    std::string text(dns_status_name(answer.status));
    if (answer.status == DnsStatus::Ok)
        text = "no addresses";
    if (!answer.message.empty())
        text += ": " + answer.message;
    return text;
}

}  // namespace

void NameCache::set_names(const std::set<std::string>& names) {
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (names.contains(it->first)) {
            ++it;
            continue;
        }
        if (!it->second.current.empty() || !it->second.grace.empty())
            ++version_;
        it = entries_.erase(it);
    }
    for (const auto& name : names)
        entries_.try_emplace(name);
}

std::vector<std::string> NameCache::due(TimePoint now) const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) {
        if (!entry.querying && entry.next_query <= now)
            out.push_back(name);
    }
    return out;
}

void NameCache::abandoned(TimePoint now) {
    for (auto& [name, entry] : entries_) {
        if (entry.querying) {
            entry.querying = false;
            entry.next_query = now;
        }
    }
}

void NameCache::started(const std::string& name, TimePoint now) {
    auto it = entries_.find(name);
    if (it == entries_.end())
        return;
    it->second.querying = true;
    // Not due again before an answer came; next_deadline() skips names being queried.
    it->second.next_query = std::max(it->second.next_query, now);
}

void NameCache::on_answer(const std::string& name, const DnsAnswer& answer, TimePoint now) {
    auto it = entries_.find(name);
    if (it == entries_.end())
        return;
    Entry& entry = it->second;
    entry.querying = false;
    const std::set<IpAddress> before = allowed(entry, now);
    if (answer.status == DnsStatus::Ok && !answer.addresses.empty())
        on_good(entry, answer, now);
    else
        on_failure(entry, answer, now);
    if (allowed(entry, now) != before)
        ++version_;
}

void NameCache::on_good(Entry& entry, const DnsAnswer& answer, TimePoint now) {
    for (const auto& address : entry.current) {
        if (!answer.addresses.contains(address) && config_.grace > seconds{0})
            entry.grace[address] = now + config_.grace;
    }
    // An address back in the answer is current again, not in grace.
    for (const auto& address : answer.addresses)
        entry.grace.erase(address);
    entry.current = answer.addresses;
    entry.resolved = true;
    entry.ttl = answer.ttl;
    entry.next_query = now + clamp_ttl(answer.ttl);
    entry.backoff = seconds{0};
    entry.error.reset();
}

// The last good addresses stay (a name that stops resolving keeps them); the retry
// waits ttl_min, then twice as long each time, up to ttl_max.
void NameCache::on_failure(Entry& entry, const DnsAnswer& answer, TimePoint now) {
    if (!entry.error)
        entry.failing_since = now;
    entry.error = failure_text(answer);
    entry.backoff = entry.backoff == seconds{0} ? config_.ttl_min : entry.backoff * 2;
    entry.backoff = std::max(std::min(entry.backoff, config_.ttl_max), seconds{1});
    entry.next_query = now + entry.backoff;
}

void NameCache::expire(TimePoint now) {
    for (auto& [name, entry] : entries_) {
        const auto ended =
            std::erase_if(entry.grace, [&](const auto& item) { return item.second <= now; });
        if (ended > 0)
            ++version_;
    }
}

std::set<IpAddress> NameCache::addresses(const std::string& name, TimePoint now) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
        return {};
    return allowed(it->second, now);
}

std::optional<NameCache::TimePoint> NameCache::next_deadline() const {
    std::optional<TimePoint> out;
    auto consider = [&](TimePoint t) {
        if (!out || t < *out)
            out = t;
    };
    for (const auto& [name, entry] : entries_) {
        if (!entry.querying)
            consider(entry.next_query);
        for (const auto& [address, until] : entry.grace)
            consider(until);
    }
    return out;
}

std::optional<NameStatus> NameCache::status(const std::string& name, TimePoint now) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
        return std::nullopt;
    const Entry& entry = it->second;
    NameStatus out;
    for (const auto& address : allowed(entry, now)) {
        NameStatus::Address item{address, std::nullopt};
        if (!entry.current.contains(address))
            item.grace_left = seconds_until(entry.grace.at(address), now);
        out.addresses.push_back(item);
    }
    out.resolved = entry.resolved;
    out.querying = entry.querying;
    out.refresh_in = entry.querying ? seconds{0} : seconds_until(entry.next_query, now);
    out.ttl = entry.ttl;
    if (entry.error)
        out.error = NameStatus::Failure{*entry.error,
                                        std::chrono::floor<seconds>(now - entry.failing_since)};
    return out;
}

std::vector<std::string> NameCache::names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, entry] : entries_)
        out.push_back(name);
    return out;
}

seconds NameCache::clamp_ttl(std::uint32_t ttl) const {
    return std::min(std::max(seconds{ttl}, config_.ttl_min), config_.ttl_max);
}

}  // namespace smtpfence
