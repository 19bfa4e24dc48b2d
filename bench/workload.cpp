#include "bench/workload.h"

#include <arpa/inet.h>

#include <cstring>

#include "bench/report.h"
#include "bench/sandbox.h"

namespace smtpfence::bench {
namespace {

constexpr std::uint16_t kSubmissionPort = 587;

nft::DestRange one_address(nft::DestSet set, std::uint32_t uid, const std::string& addr,
                           std::uint16_t port) {
    nft::DestRange r;
    r.set = set;
    r.id = uid;
    const int family = nft::is_ipv6(set) ? AF_INET6 : AF_INET;
    (void)::inet_pton(family, addr.c_str(), r.addr_lo.data());
    r.addr_hi = r.addr_lo;
    r.port_lo = port;
    r.port_hi = port;
    return r;
}

}  // namespace

std::set<std::uint32_t> allowed_uids(std::size_t count) {
    std::set<std::uint32_t> uids;
    for (std::size_t i = 0; i < count; ++i) {
        uids.insert(kFirstAllowedUid + static_cast<std::uint32_t>(i));
    }
    return uids;
}

std::set<nft::DestRange> exception_ranges(std::size_t count) {
    std::set<nft::DestRange> ranges;
    for (std::uint32_t i = 0; i < count; ++i) {
        const std::uint32_t uid = kFirstExceptionUid + i;
        const std::uint32_t hi = (i >> 8) & 0xff;
        const std::uint32_t lo = i & 0xff;
        if (i == 0) {
            ranges.insert(one_address(nft::DestSet::Uid4, uid, kRemoteAddr, kSmtpPort));
        } else if (i % 10 == 1) {
            ranges.insert(
                one_address(nft::DestSet::Uid6, uid, strf("2001:db8:1::%x", i), kSubmissionPort));
        } else if (i % 10 == 2) {
            // 100.64.0.0/10 holds 16,384 /24s, one per exception.
            nft::DestRange r = one_address(nft::DestSet::Uid4, uid,
                                           strf("100.%u.%u.0", 64 + (i >> 8), lo), kSubmissionPort);
            r.addr_hi[3] = 0xff;
            ranges.insert(r);
        } else {
            ranges.insert(one_address(nft::DestSet::Uid4, uid, strf("10.%u.%u.%u", i >> 16, hi, lo),
                                      kSubmissionPort));
        }
    }
    return ranges;
}

nft::DestRange change_exception() {
    return one_address(nft::DestSet::Uid4, kChangeUid, "203.0.113.7", kSubmissionPort);
}

nft::RulesetSpec smtpfence_spec(const std::string& table, std::size_t users, std::size_t exceptions,
                                nft::QueueMode queue) {
    nft::RulesetSpec spec;
    spec.table = table;
    spec.allow_uids = allowed_uids(users);
    spec.dest = exception_ranges(exceptions);
    spec.queue = queue;
    return spec;
}

}  // namespace smtpfence::bench
