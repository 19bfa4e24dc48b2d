// Programming and reading our table: the operations the daemon, the tests and the
// benchmark need, all through one Transport and (for changes) one Batch.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "common/error.h"
#include "nft/netlink.h"
#include "nft/ruleset.h"

namespace smtpfence::nft {

struct PacketCount {
    std::uint64_t packets = 0;
    std::uint64_t bytes = 0;
};

class Engine {
  public:
    explicit Engine(Transport& transport) : transport_(transport) {}

    // Which queue verdict this kernel accepts: tries the native `queue` expression,
    // then the xtables NFQUEUE target, each in a throwaway table created and deleted
    // in the same transaction (nothing is left behind either way). None when neither
    // exists. probe_table must not be a table anyone uses.
    [[nodiscard]] Result<QueueMode> probe_queue_mode(const std::string& probe_table);

    // Replaces the table with ruleset in one transaction: create-if-missing, delete,
    // create, sets, elements, chains, rules. Either the old or the new table is in
    // force at every instant; on error the old one stays.
    [[nodiscard]] Result<void> apply(const Ruleset& ruleset);

    // Adds and removes uid/gid elements of one set in one transaction: O(changes),
    // whatever the set's size. Adding an element that exists is not an error;
    // removing one that does not is ENOENT (and nothing changes).
    [[nodiscard]] Result<void> change_elements(const std::string& table, const std::string& set,
                                               const std::set<std::uint32_t>& add,
                                               const std::set<std::uint32_t>& remove);

    // Deletes the table if it exists (idempotent).
    [[nodiscard]] Result<void> remove(const std::string& table);

    [[nodiscard]] Result<bool> table_exists(const std::string& table);

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
