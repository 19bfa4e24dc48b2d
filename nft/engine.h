// Programming and reading our table: the operations the daemon, the tests and the
// benchmark need, all through one Transport and (for changes) one Batch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "nft/dest_range.h"
#include "nft/netlink.h"
#include "nft/ruleset.h"

namespace smtpfence::nft {

struct PacketCount {
    std::uint64_t packets = 0;
    std::uint64_t bytes = 0;
};

// What apply() did with the per-uid counters of the blocked set.
struct ApplyReport {
    bool table_existed = false;
    bool counters_kept = false;  // the blocked set (and its counters) survived
    std::string note;            // why they did not, when they did not
};

// Our table as the kernel holds it now.
struct TableInventory {
    bool exists = false;
    std::uint32_t flags = 0;             // NFT_TABLE_F_* (kTableFlagOwner, ...)
    std::optional<std::uint32_t> owner;  // the owning netlink port, while one holds it
    struct ChainInfo {
        std::string name;
        bool base = false;  // hooked (then hook, priority and type below are set)
        std::uint32_t hook = 0;
        std::int32_t priority = 0;
        std::string type;
    };
    std::vector<ChainInfo> chains;
    struct SetInfo {
        std::string name;
        std::uint32_t flags = 0;
        std::uint32_t key_type = 0;
        std::uint32_t key_len = 0;
        std::uint64_t handle = 0;
    };
    std::vector<SetInfo> sets;
    [[nodiscard]] const SetInfo* set(const std::string& name) const;
};

// Whether a probe's refusal (errno) means the kernel lacks what was probed: it refuses
// an unknown flag or attribute value with EOPNOTSUPP or EINVAL. Any other error is
// the probe's own failure (no permission, no nf_tables), not an answer.
[[nodiscard]] bool kernel_lacks_feature(int code);

class Engine {
  public:
    explicit Engine(Transport& transport) : transport_(transport) {}

    // Which queue verdict this kernel accepts: tries the native `queue` expression,
    // then the xtables NFQUEUE target, each in a throwaway table created and deleted
    // in the same transaction (nothing is left behind either way). None when neither
    // exists. probe_table must not be a table anyone uses.
    [[nodiscard]] Result<QueueMode> probe_queue_mode(const std::string& probe_table);

    // Whether this kernel has owned, persistent tables (NFT_TABLE_F_OWNER and
    // NFT_TABLE_F_PERSIST, Linux 6.9): probed like the queue mode, in a throwaway table.
    [[nodiscard]] Result<bool> probe_ownership(const std::string& probe_table);

    // Whether this kernel has set expressions (NFT_SET_EXPR, Linux 5.11): a set with
    // a counter and that flag, in a throwaway table. Linux 5.10 takes the counter
    // without the flag but gives the elements a rule adds no copy of it
    // (RulesetSpec::set_expressions).
    [[nodiscard]] Result<bool> probe_set_expressions(const std::string& probe_table);

    // Replaces our table's content with ruleset in one transaction: either the old or
    // the new rules are in force at every instant; on error the old ones stay.
    // Every chain and set is replaced except the `blocked` set, which is kept (when
    // compatible) so that the kernel's per-uid attempt counters survive reloads. When
    // the table changed under us between inventory and commit, falls back to
    // replacing the whole table (counters restart; the report says so).
    // An owned ruleset takes ownership of the table for this transport's socket: a
    // table left orphaned by a previous daemon is adopted first, in a transaction of
    // its own (its old rules stay in force meanwhile), then updated as above;
    // one that was not owned is replaced whole (ownership cannot be added later). A
    // table owned by another live socket is refused with EPERM, naming its port.
    [[nodiscard]] Result<ApplyReport> apply(const Ruleset& ruleset);

    // Chains and sets of our table.
    [[nodiscard]] Result<TableInventory> inventory(const std::string& table);

    // Adds and removes uid/gid elements of one set in one transaction: O(changes),
    // whatever the set's size. Adding an element that exists is not an error;
    // removing one that does not is ENOENT (and nothing changes).
    [[nodiscard]] Result<void> change_elements(const std::string& table, const std::string& set,
                                               const std::set<std::uint32_t>& add,
                                               const std::set<std::uint32_t>& remove);

    // Removes and adds elements of the six destination sets (relay exceptions) in one
    // transaction: O(changes), whatever the sets' sizes. Removals go first, so a range
    // can be replaced by an overlapping one in the same call. Adding an element that
    // exists is not an error. The kernel (pipapo) checks less than it seems, so
    // callers must add disjoint ranges and remove only ranges they added: it refuses
    // (EEXIST) a new range only when its first or last point lies in another element,
    // and it finds the element to remove by its first point alone, so removing a range
    // that is not there removes the element holding that point, or is ENOENT when none
    // does. A refused call changes nothing.
    [[nodiscard]] Result<void> change_dest(const std::string& table, const std::set<DestRange>& add,
                                           const std::set<DestRange>& remove);

    // Every element of the six destination sets with its counter: the connections
    // each range let through.
    [[nodiscard]] Result<std::map<DestRange, PacketCount>> read_dest_counters(
        const std::string& table);

    // Deletes the table if it exists (idempotent). EPERM when another live socket
    // owns it.
    [[nodiscard]] Result<void> remove(const std::string& table);

    [[nodiscard]] Result<bool> table_exists(const std::string& table);
    // The table's flags and owner; nullopt when it does not exist.
    struct TableHeader {
        std::uint32_t flags = 0;
        std::optional<std::uint32_t> owner;
    };
    [[nodiscard]] Result<std::optional<TableHeader>> table_header(const std::string& table);

    [[nodiscard]] std::uint32_t portid() const { return transport_.portid(); }

    // The elements of a uid/gid set as the kernel holds them.
    [[nodiscard]] Result<std::set<std::uint32_t>> read_u32_set(const std::string& table,
                                                               const std::string& set);

    // The blocked set's per-uid counters.
    [[nodiscard]] Result<std::map<std::uint32_t, PacketCount>> read_blocked(
        const std::string& table);

  private:
    Transport& transport_;
};

}  // namespace smtpfence::nft
