#include "policy/destination.h"

#include <arpa/inet.h>

#include <algorithm>

#include "common/text.h"

namespace smtpfence {
namespace {

// RFC 1035's limits: a name of at most 253 characters (255 bytes on the wire), labels
// of 1-63.
constexpr std::size_t kMaxNameBytes = 253;
constexpr std::size_t kMaxLabelBytes = 63;

std::unexpected<Error> bad(std::string_view value, std::string problem) {
    return fail(0, text::printable(value), std::move(problem));
}

// An error about part of the value, shown as about the whole value.
std::unexpected<Error> about(std::string_view whole, Error e) {
    e.what = text::printable(whole);
    return std::unexpected(std::move(e));
}

std::uint8_t width(Family f) {
    return f == Family::V4 ? 32 : 128;
}

bool has_host_bits(const Network& n) {
    for (std::size_t bit = n.prefix; bit < width(n.family); ++bit) {
        if ((n.addr[bit / 8] & (0x80U >> (bit % 8))) != 0)
            return true;
    }
    return false;
}

Network without_host_bits(Network n) {
    for (std::size_t bit = n.prefix; bit < width(n.family); ++bit)
        n.addr[bit / 8] = static_cast<std::uint8_t>(n.addr[bit / 8] & ~(0x80U >> (bit % 8)));
    return n;
}

std::optional<Network> parse_address(std::string_view text) {
    const std::string nul_terminated(text);
    Network n;
    if (text.find(':') != std::string_view::npos) {
        n.family = Family::V6;
        n.prefix = 128;
        if (::inet_pton(AF_INET6, nul_terminated.c_str(), n.addr.data()) != 1)
            return std::nullopt;
    } else if (::inet_pton(AF_INET, nul_terminated.c_str(), n.addr.data()) != 1) {
        return std::nullopt;
    }
    return n;
}

Result<std::uint16_t> parse_port(std::string_view whole, std::string_view port) {
    if (port.empty())
        return bad(whole, "no port after ':'");
    if (!text::is_all_digits(port))
        return bad(whole, "port \"" + text::printable(port) + "\" is not a number");
    const auto n = text::parse_unsigned(port, 65535);
    if (!n || *n == 0)
        return bad(whole, "port " + text::printable(port) + " is out of range (1-65535)");
    return static_cast<std::uint16_t>(*n);
}

bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// The name lowercased, without a trailing dot, or what is wrong with it.
Result<std::string> parse_name(std::string_view whole, std::string_view name) {
    if (name.size() > 1 && name.back() == '.')
        name.remove_suffix(1);
    if (name.size() > kMaxNameBytes) {
        return bad(whole, "the name is " + std::to_string(name.size()) + " bytes long (at most " +
                              std::to_string(kMaxNameBytes) + ")");
    }
    std::string out;
    std::size_t label_start = 0;
    for (std::size_t i = 0; i <= name.size(); ++i) {
        if (i == name.size() || name[i] == '.') {
            const std::size_t length = i - label_start;
            if (length == 0)
                return bad(whole, "empty label in the name (\"..\" or a leading '.')");
            if (length > kMaxLabelBytes) {
                return bad(whole, "label \"" +
                                      text::printable(name.substr(label_start, length), 20) +
                                      "\" is " + std::to_string(length) + " bytes long (at most " +
                                      std::to_string(kMaxLabelBytes) + ")");
            }
            label_start = i + 1;
        } else if (!is_name_char(name[i])) {
            return bad(whole, "character '" + text::printable(name.substr(i, 1)) +
                                  "' is not allowed in a name (letters, digits, '-', '_')");
        }
        if (i < name.size())
            out.push_back(name[i] >= 'A' && name[i] <= 'Z' ? static_cast<char>(name[i] - 'A' + 'a')
                                                           : name[i]);
    }
    return out;
}

// The advice for an address the kernel never sees as IPv6: a socket connecting to
// ::ffff:198.51.100.1 sends IPv4 packets to 198.51.100.1.
std::optional<std::string> ipv4_mapped_problem(const Network& n) {
    static constexpr std::array<std::uint8_t, 12> kMapped = {0, 0, 0, 0, 0,    0,
                                                             0, 0, 0, 0, 0xff, 0xff};
    if (n.family != Family::V6 || n.prefix < 96 ||
        !std::equal(kMapped.begin(), kMapped.end(), n.addr.begin())) {
        return std::nullopt;
    }
    Network v4;
    std::copy_n(n.addr.begin() + 12, 4, v4.addr.begin());
    v4.prefix = static_cast<std::uint8_t>(n.prefix - 96);
    return "an IPv4-mapped IPv6 address: connections to it are IPv4 packets, write the IPv4 "
           "form " +
           v4.text();
}

// Checks that apply to an address or network however it was written.
Result<Destination> network_destination(std::string_view whole, const Network& n,
                                        std::optional<std::uint16_t> port) {
    if (n.prefix == 0 || (n.family == Family::V6 && n.prefix == 96 && ipv4_mapped_problem(n))) {
        return bad(whole,
                   "a /0 network covers every address; to let an account reach any host, use "
                   "`smtpfencectl allow USER` (or --group GROUP) instead");
    }
    if (auto problem = ipv4_mapped_problem(n))
        return bad(whole, std::move(*problem));
    return Destination{n.text(), n, port};
}

// Bare IPv6 (two colons or more, no brackets): an address or network without a port.
Result<Destination> parse_bare_ipv6(std::string_view whole) {
    auto n = parse_network(whole);
    if (n)
        return network_destination(whole, *n, std::nullopt);
    const auto colon = whole.rfind(':');
    const std::string_view head = whole.substr(0, colon);
    const std::string_view tail = whole.substr(colon + 1);
    if (text::is_all_digits(tail) && head.find(':') != std::string_view::npos &&
        parse_network(head)) {
        return bad(whole, "an IPv6 address with a port needs brackets: [" + text::printable(head) +
                              "]:" + std::string(tail));
    }
    return std::unexpected(n.error());
}

Result<Destination> parse_bracketed(std::string_view whole) {
    const auto close = whole.find(']');
    if (close == std::string_view::npos)
        return bad(whole, "'[' without ']'");
    const std::string_view inside = whole.substr(1, close - 1);
    const std::string_view rest = whole.substr(close + 1);
    if (inside.find(':') == std::string_view::npos)
        return bad(whole, "brackets are for IPv6 addresses only");
    std::optional<std::uint16_t> port;
    if (!rest.empty()) {
        if (rest.front() != ':')
            return bad(whole, "expected ':PORT' or nothing after ']'");
        auto p = parse_port(whole, rest.substr(1));
        if (!p)
            return std::unexpected(p.error());
        port = *p;
    }
    auto n = parse_network(inside);
    if (!n)
        return about(whole, n.error());
    return network_destination(whole, *n, port);
}

bool looks_like_ipv4(std::string_view host) {
    return std::any_of(host.begin(), host.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
           std::all_of(host.begin(), host.end(),
                       [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

}  // namespace

std::array<std::uint8_t, 16> Network::last() const {
    std::array<std::uint8_t, 16> out = addr;
    for (std::size_t bit = prefix; bit < width(family); ++bit)
        out[bit / 8] = static_cast<std::uint8_t>(out[bit / 8] | (0x80U >> (bit % 8)));
    return out;
}

std::string Network::text() const {
    char buf[INET6_ADDRSTRLEN] = {};
    const int af = family == Family::V4 ? AF_INET : AF_INET6;
    // Cannot fail: the buffer fits either family.
    static_cast<void>(::inet_ntop(af, addr.data(), buf, sizeof buf));
    std::string out(buf);
    if (prefix != width(family))
        out += "/" + std::to_string(prefix);
    return out;
}

Network ipv4_address(const std::array<std::uint8_t, 4>& bytes) {
    Network n;
    std::copy(bytes.begin(), bytes.end(), n.addr.begin());
    return n;
}

Network ipv6_address(const std::array<std::uint8_t, 16>& bytes) {
    return Network{Family::V6, bytes, 128};
}

Result<Network> parse_network(std::string_view text) {
    const auto slash = text.find('/');
    const std::string_view address = text.substr(0, slash);
    auto n = parse_address(address);
    const bool v6 = address.find(':') != std::string_view::npos;
    if (!n)
        return bad(text, v6 ? "not an IPv6 address" : "not an IPv4 address");
    if (slash == std::string_view::npos)
        return *n;
    const std::string_view prefix = text.substr(slash + 1);
    const auto bits = text::parse_unsigned(prefix, width(n->family));
    if (!bits) {
        return bad(text, "prefix \"" + text::printable(prefix) + "\" is not a number from 0 to " +
                             std::to_string(width(n->family)));
    }
    n->prefix = static_cast<std::uint8_t>(*bits);
    if (has_host_bits(*n)) {
        return bad(text, "host bits set (did you mean " + without_host_bits(*n).text() + "?)");
    }
    return *n;
}

std::string Destination::text() const {
    if (!port)
        return host;
    if (network && network->family == Family::V6)
        return "[" + host + "]:" + std::to_string(*port);
    return host + ":" + std::to_string(*port);
}

Result<Destination> parse_destination(std::string_view text) {
    if (text.empty())
        return fail(0, "destination", "empty (expected HOST[:PORT])");
    if (std::any_of(text.begin(), text.end(), [](char c) {
            const auto byte = static_cast<unsigned char>(c);
            return byte < 0x20 || byte == 0x7f;
        })) {
        return bad(text, "control characters are not allowed");
    }
    if (text.front() == '[')
        return parse_bracketed(text);
    const auto colons = std::count(text.begin(), text.end(), ':');
    if (colons >= 2)
        return parse_bare_ipv6(text);
    const auto colon = text.find(':');
    const std::string_view host = text.substr(0, colon);
    std::optional<std::uint16_t> port;
    if (colon != std::string_view::npos) {
        auto p = parse_port(text, text.substr(colon + 1));
        if (!p)
            return std::unexpected(p.error());
        port = *p;
    }
    if (host.empty())
        return bad(text, "empty host");
    if (host.find('/') != std::string_view::npos || looks_like_ipv4(host)) {
        auto n = parse_network(host);
        if (!n)
            return about(text, n.error());
        return network_destination(text, *n, port);
    }
    auto name = parse_name(text, host);
    if (!name)
        return std::unexpected(name.error());
    return Destination{std::move(*name), std::nullopt, port};
}

std::string Subject::text() const {
    switch (kind) {
        case SubjectKind::User:
            return name;
        case SubjectKind::Group:
            return "group " + name;
        case SubjectKind::Everyone:
            break;
    }
    return "everyone";
}

std::string DestException::text() const {
    return who.text() + " to " + to.text();
}

}  // namespace smtpfence
