#include "ctl/dest_sync.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "common/local_time.h"
#include "common/log.h"
#include "common/sets.h"

namespace smtpfence {
namespace {

using nlohmann::json;

bool in_range(const nft::DestRange& r, const Network& address, std::uint16_t port) {
    const std::size_t len = address.family == Family::V6 ? 16 : 4;
    const auto lo =
        std::lexicographical_compare_three_way(r.addr_lo.begin(), r.addr_lo.begin() + len,
                                               address.addr.begin(), address.addr.begin() + len);
    const auto hi =
        std::lexicographical_compare_three_way(address.addr.begin(), address.addr.begin() + len,
                                               r.addr_hi.begin(), r.addr_hi.begin() + len);
    return lo <= 0 && hi <= 0 && port >= r.port_lo && port <= r.port_hi;
}

bool applies_to(const nft::DestRange& r, bool ipv6, std::uint32_t uid, std::uint32_t gid) {
    if (nft::is_ipv6(r.set) != ipv6)
        return false;
    switch (r.set) {
        case nft::DestSet::Uid4:
        case nft::DestSet::Uid6:
            return r.id == uid;
        case nft::DestSet::Gid4:
        case nft::DestSet::Gid6:
            return r.id == gid;
        case nft::DestSet::All4:
        case nft::DestSet::All6:
            return true;
    }
    return false;
}

// The cache's addresses as the planner takes them: each a /32 or a /128.
std::vector<Network> as_networks(const std::set<IpAddress>& addresses) {
    std::vector<Network> out;
    out.reserve(addresses.size());
    for (const IpAddress& a : addresses) {
        if (a.family == AF_INET6) {
            out.push_back(ipv6_address(a.bytes));
        } else {
            std::array<std::uint8_t, 4> v4{};
            std::copy_n(a.bytes.begin(), 4, v4.begin());
            out.push_back(ipv4_address(v4));
        }
    }
    return out;
}

// A name's state for `list`: its addresses (those that left the answer with the end
// of their grace), the next lookup, and a failure with its start.
json name_json(const NameStatus& status) {
    const std::time_t now = std::time(nullptr);
    json j = {{"addresses", json::array()}, {"grace", json::array()}};
    for (const NameStatus::Address& a : status.addresses) {
        if (a.grace_left)
            j["grace"].push_back(
                {{"address", a.address.text()}, {"until", now + a.grace_left->count()}});
        else
            j["addresses"].push_back(a.address.text());
    }
    j["resolved"] = status.resolved;
    j["ttl"] = status.ttl;
    if (!status.querying)
        j["refresh_in"] = status.refresh_in.count();
    if (status.error) {
        j["error"] = status.error->text;
        j["error_since"] = now - status.error->since.count();
    }
    return j;
}

std::vector<std::string> rule_texts(const std::vector<DestException>& exceptions) {
    std::vector<std::string> out;
    out.reserve(exceptions.size());
    for (const DestException& e : exceptions)
        out.push_back(e.text());
    return out;
}

}  // namespace

std::vector<DestException> exceptions_of(const Desired& desired) {
    std::vector<DestException> out = desired.loaded.policy.allow_dest;
    out.insert(out.end(), desired.managed.exceptions.begin(), desired.managed.exceptions.end());
    return out;
}

DestSync::DestSync(const DaemonOptions& options, nft::Engine& engine, DaemonState& state)
    : options_(options),
      engine_(engine),
      state_(state),
      resolv_watch_({options.resolv_conf_path}),
      cache_(NameCacheConfig{}),
      day_ends_(local_midnight(std::time(nullptr), 1)) {}

void DestSync::open_resolver() {
    resolv_watch_.rearm();
    DnsResolverOptions resolver_options;
    resolver_options.resolv_conf = options_.resolv_conf_path;
    auto r = DnsResolver::create(resolver_options);
    if (!r) {
        // Names keep what they had; lookups start again when the file changes.
        resolver_error_ = r.error().message();
        resolver_.reset();
        cache_.abandoned(Clock::now());
        log::error("DNS resolver: " + resolver_error_ +
                   "; names in destination exceptions keep their last addresses");
        return;
    }
    resolver_error_.clear();
    // The old channel ends its queries without an answer: their names are due again.
    resolver_.reset();
    resolver_.emplace(std::move(*r));
    cache_.abandoned(Clock::now());
}

DestPlan DestSync::plan_for(const Desired& desired) const {
    const auto now = Clock::now();
    return plan_destinations(
        exceptions_of(desired), desired.accounts,
        [&](const std::string& name) { return as_networks(cache_.addresses(name, now)); });
}

void DestSync::watch_names(const std::vector<DestException>& exceptions, const Policy& policy) {
    std::set<std::string> names;
    for (const DestException& e : exceptions) {
        if (e.to.is_name())
            names.insert(e.to.host);
    }
    cache_.configure(NameCacheConfig{policy.dest_ttl_min, policy.dest_ttl_max, policy.dest_grace});
    cache_.set_names(names);
    if (!names.empty() && !resolver_)
        open_resolver();
}

void DestSync::prepare(Desired& desired) {
    // The cache is left alone until the apply succeeded: a failed reload keeps the old
    // names, their addresses and their bounds.
    Pending p;
    p.exceptions = exceptions_of(desired);
    p.policy = desired.loaded.policy;
    p.plan = plan_for(desired);
    for (const std::string& w : p.plan.warnings)
        log::warning(w);
    desired.spec.dest = p.plan.ranges;
    if (state_.enforcing() && !plan_.ranges.empty()) {
        if (auto counts = engine_.read_dest_counters(options_.table))
            p.counts = std::move(*counts);
    }
    pending_ = std::move(p);
}

void DestSync::apply_succeeded() {
    if (!pending_)
        return;
    Pending p = std::move(*pending_);
    pending_.reset();
    if (p.counts)
        retire(*p.counts, plan_.ranges);  // the whole table was replaced
    plan_ = std::move(p.plan);
    rule_texts_ = rule_texts(p.exceptions);
    forget_gone_rules();
    watch_names(p.exceptions, p.policy);
    cache_version_ = cache_.version();
    retry_at_.reset();
}

// The rules a range serves, each once (the same rule in the config and allow.list).
std::set<std::string> DestSync::rules_of(const nft::DestRange& range) const {
    std::set<std::string> out;
    if (const auto covers = plan_.covers.find(range); covers != plan_.covers.end()) {
        for (const std::size_t i : covers->second)
            out.insert(rule_texts_.at(i));
    }
    return out;
}

void DestSync::retire(const std::map<nft::DestRange, nft::PacketCount>& counts,
                      const std::set<nft::DestRange>& gone) {
    for (const nft::DestRange& r : gone) {
        if (const auto count = counts.find(r); count != counts.end()) {
            for (const std::string& rule : rules_of(r))
                retired_[rule] += count->second.packets;
        }
    }
}

// The uses of rules no longer in force are dropped: a rule denied and added again
// starts from zero, and the maps do not grow with history.
void DestSync::forget_gone_rules() {
    const std::set<std::string> live(rule_texts_.begin(), rule_texts_.end());
    std::erase_if(retired_, [&](const auto& kv) { return !live.contains(kv.first); });
    std::erase_if(today_base_, [&](const auto& kv) { return !live.contains(kv.first); });
}

Result<void> DestSync::replan() {
    if (!state_.current)
        return {};
    Desired& current = *state_.current;
    const auto exceptions = exceptions_of(current);
    watch_names(exceptions, current.loaded.policy);
    DestPlan next = plan_for(current);
    const auto add = set_minus(next.ranges, plan_.ranges);
    const auto remove = set_minus(plan_.ranges, next.ranges);
    if (state_.enforcing() && !(add.empty() && remove.empty())) {
        // Counted before the ranges go; kept only once they went.
        std::optional<std::map<nft::DestRange, nft::PacketCount>> counts;
        if (!remove.empty()) {
            if (auto c = engine_.read_dest_counters(options_.table))
                counts = std::move(*c);
        }
        if (auto r = engine_.change_dest(options_.table, add, remove); r) {
            if (counts)
                retire(*counts, remove);
        } else {
            // The table is not as we left it (edited by hand, flushed): rebuild it whole.
            log::warning("destination exceptions as set elements failed (" + r.error().message() +
                         "); re-applying the whole table");
            nft::RulesetSpec spec = current.spec;
            spec.dest = next.ranges;
            if (!counts) {  // every set is replaced: keep what all of them counted
                if (auto c = engine_.read_dest_counters(options_.table))
                    counts = std::move(*c);
            }
            if (auto applied = engine_.apply(nft::build_ruleset(spec)); !applied) {
                retry_at_ = Clock::now() + kRetryDelay;
                return std::unexpected(applied.error());
            }
            if (counts)
                retire(*counts, plan_.ranges);  // every set was replaced
        }
        log::notice("destination exceptions: " + std::to_string(add.size()) + " range(s) added, " +
                    std::to_string(remove.size()) + " removed");
    }
    current.spec.dest = next.ranges;
    plan_ = std::move(next);
    rule_texts_ = rule_texts(exceptions);
    forget_gone_rules();
    cache_version_ = cache_.version();
    retry_at_.reset();
    return {};
}

void DestSync::add_pollfds(std::vector<pollfd>& fds) {
    pollfd_from_ = fds.size();
    if (resolver_) {
        for (const pollfd& p : resolver_->poll_fds())
            fds.push_back(p);
    }
    pollfd_to_ = fds.size();
}

void DestSync::process(const std::vector<pollfd>& fds) {
    if (!resolver_ || pollfd_to_ > fds.size())
        return;
    resolver_->process(std::vector<pollfd>(fds.begin() + static_cast<std::ptrdiff_t>(pollfd_from_),
                                           fds.begin() + static_cast<std::ptrdiff_t>(pollfd_to_)));
}

int DestSync::timeout_ms() const {
    const auto now = Clock::now();
    if (!resolver_)
        return -1;  // nothing to look up with: the loop's second-long turns expire graces
    std::optional<std::chrono::milliseconds> t = resolver_->timeout();
    if (const auto deadline = cache_.next_deadline()) {
        // A name due at once is due at TimePoint::min(): no subtraction from that.
        const auto until = *deadline <= now
                               ? std::chrono::milliseconds(0)
                               : std::chrono::ceil<std::chrono::milliseconds>(*deadline - now);
        t = t ? std::min(*t, until) : until;
    }
    if (!t)
        return -1;
    return static_cast<int>(std::clamp<std::int64_t>(t->count(), 0, 60000));
}

void DestSync::watch() {
    if (resolv_watch_.changed()) {
        log::notice(options_.resolv_conf_path + " changed: the DNS resolver reads it again");
        open_resolver();
    }
}

void DestSync::start_lookups() {
    if (!resolver_)
        return;
    const auto now = Clock::now();
    for (const std::string& name : cache_.due(now)) {
        cache_.started(name, now);
        resolver_->resolve(name, [this, name](const DnsAnswer& answer) {
            cache_.on_answer(name, answer, Clock::now());
        });
    }
}

void DestSync::tick() {
    if (state_.current)
        start_lookups();
    cache_.expire(Clock::now());
    roll_day();
    const bool retry_due = retry_at_ && Clock::now() >= *retry_at_;
    if (cache_.version() != cache_version_ || retry_due) {
        if (auto r = replan(); !r)
            log::error("destination exceptions: " + r.error().message() +
                       "; the elements in force are unchanged");
    }
}

std::map<std::string, std::uint64_t> DestSync::uses_now() {
    std::map<std::string, std::uint64_t> uses = retired_;
    if (plan_.ranges.empty() || !state_.enforcing())
        return uses;
    auto counts = engine_.read_dest_counters(options_.table);
    if (!counts)
        return uses;
    for (const auto& [range, count] : *counts) {
        for (const std::string& rule : rules_of(range))
            uses[rule] += count.packets;
    }
    return uses;
}

void DestSync::roll_day() {
    const std::time_t now = std::time(nullptr);
    if (now < day_ends_)
        return;
    today_base_ = uses_now();
    day_ends_ = local_midnight(now, 1);
}

json DestSync::list_json() {
    json out = json::array();
    if (!state_.current)
        return out;
    roll_day();
    const auto uses = uses_now();
    const auto now = Clock::now();
    for (const DestException& e : exceptions_of(*state_.current)) {
        const std::string rule = e.text();
        const auto used = uses.contains(rule) ? uses.at(rule) : 0;
        const auto base = today_base_.contains(rule) ? today_base_.at(rule) : 0;
        json j = {{"rule", rule},
                  {"who", e.who.text()},
                  {"to", e.to.text()},
                  {"origin", e.origin},
                  {"uses", used},
                  {"uses_today", used >= base ? used - base : used},
                  {"addresses", json::array()},
                  {"grace", json::array()}};
        if (!e.to.is_name()) {
            j["addresses"].push_back(e.to.host);
        } else {
            if (const auto status = cache_.status(e.to.host, now))
                j.update(name_json(*status));
        }
        out.push_back(std::move(j));
    }
    return out;
}

json DestSync::status_json() const {
    json unresolved = json::object();
    std::size_t count = 0;
    if (state_.current) {
        const auto exceptions = exceptions_of(*state_.current);
        count = exceptions.size();
        for (const DestException& e : exceptions) {
            if (!e.to.is_name())
                continue;
            const auto status = cache_.status(e.to.host, Clock::now());
            if (status && status->error)
                unresolved[e.to.host] = status->error->text;
        }
    }
    json j = {{"exceptions", count},
              {"ranges", plan_.ranges.size()},
              {"names", cache_.names().size()},
              {"failing", unresolved}};
    if (!resolver_error_.empty())
        j["resolver_error"] = resolver_error_;
    return j;
}

std::vector<std::string> DestSync::covering(std::uint32_t uid, std::uint32_t gid,
                                            const Network& address, std::uint16_t port) const {
    std::set<std::string> which;
    const bool ipv6 = address.family == Family::V6;
    for (const auto& [range, covers] : plan_.covers) {
        if (applies_to(range, ipv6, uid, gid) && in_range(range, address, port)) {
            const auto rules = rules_of(range);
            which.insert(rules.begin(), rules.end());
        }
    }
    return {which.begin(), which.end()};
}

std::optional<std::vector<Network>> DestSync::addresses_of(const std::string& name) const {
    const auto names = cache_.names();
    if (!std::ranges::binary_search(names, name))
        return std::nullopt;
    return as_networks(cache_.addresses(name, Clock::now()));
}

}  // namespace smtpfence
