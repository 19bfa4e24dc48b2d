#include "ctl/dns_resolver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <exception>
#include <mutex>
#include <utility>

#include "common/log.h"

namespace smtpfence {

namespace {

// Once per process, never undone: c-ares wants it before the first channel and its
// cleanup only when no channel is left, which a daemon does not need to track.
Result<> init_library() {
    static int status = -1;
    static std::once_flag once;
    std::call_once(once, [] { status = ares_library_init(ARES_LIB_INIT_ALL); });
    if (status != ARES_SUCCESS)
        return fail(0, "c-ares: library init", ares_strerror(status));
    return {};
}

DnsStatus status_of(int ares_status) {
    switch (ares_status) {
        case ARES_SUCCESS:
            return DnsStatus::Ok;
        case ARES_ENOTFOUND:  // NXDOMAIN
        case ARES_ENODATA:    // the name exists without A or AAAA
            return DnsStatus::NotFound;
        case ARES_ESERVFAIL:
        // c-ares 1.18 tries the next server after a SERVFAIL, REFUSED or NOTIMP answer
        // (as glibc does) and, once every server failed, reports this instead.
        case ARES_ECONNREFUSED:
            return DnsStatus::ServFail;
        case ARES_ETIMEOUT:
            return DnsStatus::Timeout;
        case ARES_EREFUSED:
            return DnsStatus::Refused;
        default:
            return DnsStatus::Other;
    }
}

std::uint32_t ttl_of(int ttl) {
    return ttl < 0 ? 0 : static_cast<std::uint32_t>(ttl);
}

// The addresses of a successful answer, and its TTL: the least of its address records
// and of the CNAMEs that led to them (the chain is only as fresh as its shortest link).
void read_answer(const ares_addrinfo* result, DnsAnswer& answer) {
    std::optional<std::uint32_t> ttl;
    auto least = [&](int t) { ttl = std::min(ttl.value_or(UINT32_MAX), ttl_of(t)); };
    const ares_addrinfo_node* nodes = result != nullptr ? result->nodes : nullptr;
    const ares_addrinfo_cname* cnames = result != nullptr ? result->cnames : nullptr;
    for (const ares_addrinfo_node* node = nodes; node != nullptr; node = node->ai_next) {
        IpAddress address;
        address.family = node->ai_family;
        if (node->ai_family == AF_INET) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(node->ai_addr);
            std::memcpy(address.bytes.data(), &in->sin_addr, sizeof in->sin_addr);
        } else if (node->ai_family == AF_INET6) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(node->ai_addr);
            std::memcpy(address.bytes.data(), &in6->sin6_addr, sizeof in6->sin6_addr);
        } else {
            continue;
        }
        answer.addresses.insert(address);
        least(node->ai_ttl);
    }
    for (const ares_addrinfo_cname* cname = cnames; cname != nullptr; cname = cname->next)
        least(cname->ttl);
    answer.ttl = ttl.value_or(0);
    if (answer.addresses.empty()) {
        answer.status = DnsStatus::NotFound;
        answer.message = "no A or AAAA records";
    }
}

}  // namespace

struct DnsResolver::Query {
    std::string name;
    Callback done;
    std::size_t* pending;
};

Result<DnsResolver> DnsResolver::create(const DnsResolverOptions& options) {
    if (auto ok = init_library(); !ok)
        return std::unexpected(ok.error());
    ares_options opts{};
    int mask = 0;
    opts.timeout = static_cast<int>(options.timeout.count());
    mask |= ARES_OPT_TIMEOUTMS;
    opts.tries = options.tries;
    mask |= ARES_OPT_TRIES;
    // "b": DNS only, never /etc/hosts (no TTL there).
    std::string lookups = "b";
    opts.lookups = lookups.data();
    mask |= ARES_OPT_LOOKUPS;
    // No search domains: an exception names a host in full, never relative to ours.
    opts.domains = nullptr;
    opts.ndomains = 0;
    mask |= ARES_OPT_DOMAINS;
    std::string resolv_conf = options.resolv_conf;
    opts.resolvconf_path = resolv_conf.data();
    mask |= ARES_OPT_RESOLVCONF;

    ares_channel channel = nullptr;
    const int status = ares_init_options(&channel, &opts, mask);
    ChannelPtr owned(channel);
    if (status != ARES_SUCCESS)
        return fail(0, "c-ares: init from " + options.resolv_conf, ares_strerror(status));
    return DnsResolver(std::move(owned), std::make_unique<std::size_t>(0));
}

void DnsResolver::resolve(const std::string& name, Callback done) {
    ares_addrinfo_hints hints{};
    hints.ai_family = AF_UNSPEC;
    // NOSORT: no RFC 6724 sorting, which connects a UDP socket to every address (the
    // order does not matter for a set, and the loop must not block).
    hints.ai_flags = ARES_AI_NOSORT;
    ++*pending_;
    auto* query = new Query{name, std::move(done), pending_.get()};
    // c-ares owns query until on_done, which it calls exactly once, destruction included.
    ares_getaddrinfo(channel_.get(), query->name.c_str(), nullptr, &hints, &DnsResolver::on_done,
                     query);
}

void DnsResolver::on_done(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
    std::unique_ptr<Query> query(static_cast<Query*>(arg));
    std::unique_ptr<ares_addrinfo, CDeleter<ares_freeaddrinfo>> owned(result);
    --*query->pending;
    // The resolver is going away (or the query was cancelled): whoever asked is too.
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
        return;
    DnsAnswer answer;
    answer.status = status_of(status);
    if (status == ARES_SUCCESS) {
        read_answer(result, answer);
    } else {
        answer.message = ares_strerror(status);
        if (status == ARES_ECONNREFUSED)
            answer.message += " (each server answered SERVFAIL or REFUSED, or was unreachable)";
    }
    // Nothing may unwind into c-ares.
    try {
        query->done(std::move(answer));
    } catch (const std::exception& e) {
        log::error("DNS answer for " + query->name + ": " + e.what());
    } catch (...) {
        log::error("DNS answer for " + query->name + ": unknown exception");
    }
}

std::vector<pollfd> DnsResolver::poll_fds() const {
    ares_socket_t socks[ARES_GETSOCK_MAXNUM];
    const int bits = ares_getsock(channel_.get(), socks, ARES_GETSOCK_MAXNUM);
    std::vector<pollfd> out;
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short events = 0;
        if (ARES_GETSOCK_READABLE(bits, i))
            events |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i))
            events |= POLLOUT;
        if (events != 0)
            out.push_back(pollfd{socks[i], events, 0});
    }
    return out;
}

void DnsResolver::process(const std::vector<pollfd>& ready) {
    bool any = false;
    for (const pollfd& p : ready) {
        if (p.revents == 0)
            continue;
        any = true;
        // An error or hang-up is for c-ares to see as a failed read.
        const bool readable = (p.revents & (POLLIN | POLLERR | POLLHUP | POLLNVAL)) != 0;
        const bool writable = (p.revents & POLLOUT) != 0;
        ares_process_fd(channel_.get(), readable ? p.fd : ARES_SOCKET_BAD,
                        writable ? p.fd : ARES_SOCKET_BAD);
    }
    // Nothing ready: the call only handles the tries that timed out.
    if (!any)
        ares_process_fd(channel_.get(), ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

std::optional<std::chrono::milliseconds> DnsResolver::timeout() const {
    timeval tv{};
    if (ares_timeout(channel_.get(), nullptr, &tv) == nullptr)
        return std::nullopt;
    return std::chrono::milliseconds(tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000);
}

}  // namespace smtpfence
