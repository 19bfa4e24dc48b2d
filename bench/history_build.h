// The stores smtpfence-bench-history measures: N attempt records written through the
// worker's own writer (nfq/history_store.h), as a shared hosting server collects them
// over 90 days: 2,000 accounts sending very unequally, a web server uid whose sends are
// billed to an account by working directory, PHP, Perl and Python scripts under
// /home/USER/domains/DOMAIN, destinations in the documentation ranges (RFC 5737, RFC
// 3849), some counted-only records and the reconciler's checkpoints.
//
// Building 10M records takes a while, so a store is kept under
// /var/tmp/smtpfence-bench-history/<N> and used again by the next run when it was
// built for the same N, schema version and generator.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include "common/error.h"

namespace smtpfence::bench {

struct BenchAccount {
    std::string name;
    std::uint32_t uid = 0;
    std::string domain;
};

// The server's users: who the records name and what the daemon's passwd lists.
struct Population {
    std::vector<BenchAccount> accounts;  // by rank: accounts[0] sends the most
    static constexpr std::uint32_t kWebUid = 33;
    static constexpr const char* kWebUser = "www-data";

    [[nodiscard]] static Population make(std::size_t accounts);
    // passwd and group files of these accounts (with root, mail and www-data).
    [[nodiscard]] std::string passwd() const;
    [[nodiscard]] std::string group() const;
};

inline constexpr std::size_t kAccounts = 2000;
inline constexpr const char* kStoreRoot = "/var/tmp/smtpfence-bench-history";

struct StoreInfo {
    std::uint64_t records = 0;
    std::string dir;        // kStoreRoot/<N>
    std::string state_dir;  // dir/state, holding history.db
    bool reused = false;
    std::time_t built = 0;  // when it was built (its records end then)
    // The write path, from the build: the whole of it and its last tenth (the store
    // at its largest), records/commits/checkpoints through HistoryStore.
    double write_seconds = 0;
    double last_tenth_seconds = 0;
    std::uint64_t commits = 0;
    std::uint64_t checkpoints = 0;
    std::uint64_t counted_only = 0;
    // history.db after PRAGMA wal_checkpoint(TRUNCATE), in bytes (the WAL then empty).
    std::uint64_t file_bytes = 0;
};

// The store of `records` records: reused when kStoreRoot/<records> holds one of this
// schema and generator (unless fresh), otherwise (re)built there.
[[nodiscard]] Result<StoreInfo> build_or_reuse(std::uint64_t records, bool fresh);

// history.db's size after a WAL checkpoint (TRUNCATE) on a connection of our own.
[[nodiscard]] Result<std::uint64_t> checkpointed_size(const std::string& state_dir);

}  // namespace smtpfence::bench
