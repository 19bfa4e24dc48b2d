// What one DNS lookup of a name gave: the type the resolver (ctl/dns_resolver.h) hands
// to the name cache (policy/name_cache.h), so that the cache stays free of c-ares.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace smtpfence {

// An IPv4 or IPv6 address, network order; IPv4 in the first 4 bytes (as DestRange).
struct IpAddress {
    int family = 0;  // AF_INET or AF_INET6
    std::array<std::uint8_t, 16> bytes{};

    auto operator<=>(const IpAddress&) const = default;
    // "192.0.2.1", "2001:db8::1".
    [[nodiscard]] std::string text() const;
};

enum class DnsStatus {
    Ok,        // at least one A or AAAA record
    NotFound,  // NXDOMAIN, or the name has neither A nor AAAA records
    ServFail,  // the server answered SERVFAIL
    Timeout,   // no server answered in time
    Refused,   // the server answered REFUSED
    Other,     // anything else (bad answer, connection refused, out of memory)
};

// "ok", "not found", "SERVFAIL", "timeout", "REFUSED", "error".
[[nodiscard]] std::string_view dns_status_name(DnsStatus status);

struct DnsAnswer {
    DnsStatus status = DnsStatus::Other;
    std::string message;  // the resolver's own words ("Domain name not found"); empty when Ok
    std::set<IpAddress> addresses;
    // Seconds the answer may be kept: the least TTL of its address and CNAME records.
    std::uint32_t ttl = 0;
};

}  // namespace smtpfence
