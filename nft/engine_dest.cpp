// The Engine's operations on the destination-exception sets (nft/dest_sets.h).
#include <linux/netfilter.h>

#include <span>

#include "nft/batch.h"
#include "nft/dest_sets.h"
#include "nft/engine.h"
#include "nft/query.h"

namespace smtpfence::nft {
namespace {

// The elements of ranges that belong to the set, added to or deleted from it.
void put_elements(Batch& batch, const std::string& table, DestSet set, DestKind kind,
                  const std::set<DestRange>& ranges, Op op) {
    std::vector<ElementKey> keys;
    std::vector<ElementKey> key_ends;  // stays empty for an exact set
    for (const DestRange& r : ranges) {
        if (r.set != set || dest_kind(r) != kind)
            continue;
        DestKeys k = dest_keys(r);
        keys.push_back(std::move(k.key));
        if (kind == DestKind::Interval)
            key_ends.push_back(std::move(k.key_end));
    }
    if (keys.empty())
        return;
    const std::string name = dest_set_name(set, kind);
    const std::string what =
        op == Op::Delete ? "delete " + std::to_string(keys.size()) + " element(s) from set " + name
                         : "add " + std::to_string(keys.size()) + " element(s) to set " + name;
    batch.set_elements(table, name, keys, op, what, key_ends);
}

std::span<const std::uint8_t> elem_data(nftnl_set_elem* e, std::uint16_t attr) {
    std::uint32_t len = 0;
    const void* data = nftnl_set_elem_get(e, attr, &len);
    if (data == nullptr)
        return {};
    return {static_cast<const std::uint8_t*>(data), len};
}

}  // namespace

Result<void> Engine::change_dest(const std::string& table, const std::set<DestRange>& add,
                                 const std::set<DestRange>& remove) {
    Batch batch(NFPROTO_INET);
    for (const Op op : {Op::Delete, Op::Create}) {
        for (const DestSet set : kDestSets) {
            for (const DestKind kind : kDestKinds)
                put_elements(batch, table, set, kind, op == Op::Delete ? remove : add, op);
        }
    }
    return with_context(batch.commit(transport_), "table inet " + table);
}

Result<std::map<DestRange, PacketCount>> Engine::read_dest_counters(const std::string& table) {
    std::map<DestRange, PacketCount> out;
    for (const DestSet set : kDestSets) {
        for (const DestKind kind : kDestKinds) {
            auto r =
                dump_elements(transport_, table, dest_set_name(set, kind), [&](nftnl_set_elem* e) {
                    const auto key = elem_data(e, NFTNL_SET_ELEM_KEY);
                    // A one-point interval element may come without its end too.
                    auto key_end = elem_data(e, NFTNL_SET_ELEM_KEY_END);
                    if (key_end.empty())
                        key_end = key;
                    if (const auto range = dest_range_from_keys(set, kind, key, key_end))
                        out[*range] = elem_counter(e);
                });
            if (!r)
                return std::unexpected(r.error());
        }
    }
    return out;
}

}  // namespace smtpfence::nft
