#include "policy/dest_plan.h"

#include <algorithm>
#include <compare>
#include <cstdint>
#include <optional>
#include <string_view>

#include "common/text.h"

namespace smtpfence {
namespace {

using nft::DestRange;
using nft::DestSet;
using Address = std::array<std::uint8_t, 16>;

constexpr std::uint64_t kMaxId = 4294967294U;

// Who an exception reaches in the kernel: an id in a pair of sets (IPv4, IPv6).
struct Owner {
    DestSet v4 = DestSet::All4;
    DestSet v6 = DestSet::All6;
    std::uint32_t id = 0;
};

struct SetKey {
    DestSet set = DestSet::All4;
    std::uint32_t id = 0;
    auto operator<=>(const SetKey&) const = default;
};

// One exception's wish in one (set, id), before the ranges are made disjoint.
struct Item {
    Address lo{};
    Address hi{};
    std::uint16_t port_lo = 0;
    std::uint16_t port_hi = 65535;
    std::size_t exception = 0;
};

// The ports of one address piece served by the same exceptions.
struct PortPiece {
    std::uint16_t lo = 0;
    std::uint16_t hi = 0;
    std::vector<std::size_t> covers;
    bool operator==(const PortPiece&) const = default;
};

std::size_t address_bytes(DestSet set) {
    return nft::is_ipv6(set) ? 16 : 4;
}

// a + 1; false when a was the last address (it wraps to zero).
bool increment(Address& a, std::size_t bytes) {
    for (std::size_t i = bytes; i-- > 0;) {
        if (++a[i] != 0)
            return true;
    }
    return false;
}

void decrement(Address& a, std::size_t bytes) {
    for (std::size_t i = bytes; i-- > 0;) {
        if (a[i]-- != 0)
            return;
    }
}

std::optional<std::uint32_t> numeric_id(std::string_view text) {
    const auto n = text::parse_unsigned(text, kMaxId);
    if (!n)
        return std::nullopt;
    return static_cast<std::uint32_t>(*n);
}

std::string unknown(const DestException& e, std::string_view what, std::string_view file) {
    std::string out = e.origin.empty() ? std::string() : e.origin + ": ";
    return out + "\"" + text::printable(e.text()) + "\": unknown " + std::string(what) + " \"" +
           text::printable(e.who.name) + "\" (skipped; it will be resolved again when " +
           std::string(file) + " changes)";
}

std::vector<Owner> owners_of(const DestException& e, const AccountDb& accounts,
                             std::vector<std::string>& warnings) {
    switch (e.who.kind) {
        case SubjectKind::Everyone:
            return {Owner{}};
        case SubjectKind::User: {
            std::optional<std::uint32_t> uid = numeric_id(e.who.name);
            if (const Account* a = uid ? nullptr : accounts.user(e.who.name))
                uid = a->uid;
            if (!uid) {
                warnings.push_back(unknown(e, "user", "/etc/passwd"));
                return {};
            }
            return {Owner{DestSet::Uid4, DestSet::Uid6, *uid}};
        }
        case SubjectKind::Group:
            break;
    }
    std::optional<std::uint32_t> gid = numeric_id(e.who.name);
    if (const GroupEntry* g = gid ? nullptr : accounts.group(e.who.name))
        gid = g->gid;
    if (!gid) {
        warnings.push_back(unknown(e, "group", "/etc/group"));
        return {};
    }
    std::vector<Owner> out{Owner{DestSet::Gid4, DestSet::Gid6, *gid}};
    // Supplementary members are not seen by meta skgid: they are reached by uid.
    for (const std::uint32_t uid : accounts.uids_in_group(*gid))
        out.push_back(Owner{DestSet::Uid4, DestSet::Uid6, uid});
    return out;
}

// The ports of the active items, cut where any of them starts or ends, each piece with
// the exceptions serving it; neighbours served by the same exceptions merged.
std::vector<PortPiece> port_pieces(const std::vector<Item>& items,
                                   const std::set<std::size_t>& active) {
    std::vector<std::uint32_t> cuts;
    for (const std::size_t i : active) {
        cuts.push_back(items[i].port_lo);
        cuts.push_back(std::uint32_t{items[i].port_hi} + 1);
    }
    std::ranges::sort(cuts);
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<PortPiece> out;
    for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
        std::vector<std::size_t> covers;
        for (const std::size_t i : active) {
            if (items[i].port_lo <= cuts[k] && items[i].port_hi >= cuts[k])
                covers.push_back(items[i].exception);
        }
        if (covers.empty())
            continue;
        std::ranges::sort(covers);
        covers.erase(std::unique(covers.begin(), covers.end()), covers.end());
        const auto lo = static_cast<std::uint16_t>(cuts[k]);
        const auto hi = static_cast<std::uint16_t>(cuts[k + 1] - 1);
        if (!out.empty() && out.back().hi + 1 == lo && out.back().covers == covers)
            out.back().hi = hi;
        else
            out.push_back(PortPiece{lo, hi, std::move(covers)});
    }
    return out;
}

// An address piece being built: extended while its neighbours have the same ports.
struct Piece {
    Address lo{};
    Address hi{};
    std::vector<PortPiece> ports;
};

void emit(const SetKey& key, const Piece& piece, DestPlan& plan) {
    for (const PortPiece& p : piece.ports) {
        const DestRange range{key.set, key.id, piece.lo, piece.hi, p.lo, p.hi};
        plan.ranges.insert(range);
        plan.covers[range] = p.covers;
    }
}

// Makes the items of one (set, id) disjoint ranges: a sweep along the address axis,
// cut at every item's first address and at the address after its last.
void decompose(const SetKey& key, const std::vector<Item>& items, DestPlan& plan) {
    const std::size_t bytes = address_bytes(key.set);
    std::vector<Address> cuts;
    for (const Item& item : items) {
        cuts.push_back(item.lo);
        Address after = item.hi;
        if (increment(after, bytes))
            cuts.push_back(after);
    }
    std::ranges::sort(cuts);
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<std::size_t> by_lo(items.size());
    for (std::size_t i = 0; i < items.size(); ++i)
        by_lo[i] = i;
    std::vector<std::size_t> by_hi = by_lo;
    std::ranges::sort(by_lo, {}, [&](std::size_t i) { return items[i].lo; });
    std::ranges::sort(by_hi, {}, [&](std::size_t i) { return items[i].hi; });

    std::set<std::size_t> active;
    std::optional<Piece> pending;
    std::size_t next_lo = 0;
    std::size_t next_hi = 0;
    for (std::size_t k = 0; k < cuts.size(); ++k) {
        const Address& at = cuts[k];
        for (; next_hi < by_hi.size() && items[by_hi[next_hi]].hi < at; ++next_hi)
            active.erase(by_hi[next_hi]);
        for (; next_lo < by_lo.size() && items[by_lo[next_lo]].lo <= at; ++next_lo)
            active.insert(by_lo[next_lo]);
        if (active.empty())
            continue;
        Address last{};
        if (k + 1 < cuts.size()) {
            last = cuts[k + 1];
            decrement(last, bytes);
        } else {
            std::fill_n(last.begin(), bytes, std::uint8_t{0xff});
        }
        std::vector<PortPiece> ports = port_pieces(items, active);
        Address before_at = at;
        decrement(before_at, bytes);
        if (pending && pending->hi == before_at && pending->ports == ports) {
            pending->hi = last;
            continue;
        }
        if (pending)
            emit(key, *pending, plan);
        pending = Piece{at, last, std::move(ports)};
    }
    if (pending)
        emit(key, *pending, plan);
}

}  // namespace

DestPlan plan_destinations(const std::vector<DestException>& exceptions, const AccountDb& accounts,
                           const AddressesOf& addresses_of) {
    DestPlan plan;
    std::map<std::string, std::vector<Network>, std::less<>> resolved;
    std::map<SetKey, std::vector<Item>> wanted;
    for (std::size_t i = 0; i < exceptions.size(); ++i) {
        const DestException& e = exceptions[i];
        const std::vector<Owner> owners = owners_of(e, accounts, plan.warnings);
        if (owners.empty())
            continue;
        std::vector<Network> single;
        const std::vector<Network>* networks = &single;
        if (e.to.network) {
            single.push_back(*e.to.network);
        } else {
            auto it = resolved.find(e.to.host);
            if (it == resolved.end())
                it = resolved.emplace(e.to.host, addresses_of(e.to.host)).first;
            networks = &it->second;
        }
        const std::uint16_t port_lo = e.to.port.value_or(0);
        const std::uint16_t port_hi = e.to.port.value_or(65535);
        for (const Owner& owner : owners) {
            for (const Network& n : *networks) {
                const SetKey key{n.family == Family::V4 ? owner.v4 : owner.v6, owner.id};
                wanted[key].push_back(Item{n.first(), n.last(), port_lo, port_hi, i});
            }
        }
    }
    for (const auto& [key, items] : wanted)
        decompose(key, items, plan);
    return plan;
}

}  // namespace smtpfence
