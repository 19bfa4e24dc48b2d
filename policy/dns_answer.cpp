#include "policy/dns_answer.h"

#include <arpa/inet.h>
#include <sys/socket.h>

namespace smtpfence {

std::string IpAddress::text() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (::inet_ntop(family, bytes.data(), buf, sizeof buf) == nullptr)
        return "?";
    return buf;
}

std::string_view dns_status_name(DnsStatus status) {
    switch (status) {
        case DnsStatus::Ok:
            return "ok";
        case DnsStatus::NotFound:
            return "not found";
        case DnsStatus::ServFail:
            return "SERVFAIL";
        case DnsStatus::Timeout:
            return "timeout";
        case DnsStatus::Refused:
            return "REFUSED";
        case DnsStatus::Other:
            break;
    }
    return "error";
}

}  // namespace smtpfence
