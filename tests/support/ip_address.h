// IpAddress values from their text, for the tests of the DNS side.
#pragma once

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <set>
#include <string>

#include "policy/dns_answer.h"

namespace smtpfence::testing {

// "192.0.2.1" or "2001:db8::1"; a typo in a test aborts it.
inline IpAddress ip(const std::string& text) {
    IpAddress a;
    a.family = text.find(':') == std::string::npos ? AF_INET : AF_INET6;
    if (::inet_pton(a.family, text.c_str(), a.bytes.data()) != 1) {
        (void)std::fprintf(stderr, "not an IP address: %s\n", text.c_str());
        std::abort();
    }
    return a;
}

inline std::set<IpAddress> ips(std::initializer_list<const char*> texts) {
    std::set<IpAddress> out;
    for (const char* t : texts)
        out.insert(ip(t));
    return out;
}

}  // namespace smtpfence::testing
