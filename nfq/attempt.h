// Attempt records and the one small interface every sink implements.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <string>

namespace smtpfence::nfq {

// One direct-out attempt that the worker saw and explained.
struct Attempt {
    std::time_t time = 0;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::string user;         // the uid's account name, "" when none
    std::string account;      // hosting account billed (see attribute_account)
    bool identified = false;  // process found
    pid_t pid = 0;
    std::string exe, cwd, cmdline;
    std::string family;  // "ipv4" / "ipv6"
    std::string src, dst;
    std::uint16_t sport = 0, dport = 0;
};

// Attempts the kernel counted but the worker did not see one by one (per-uid rate
// limit, queue overflow, worker down): counted, not explained.
struct CountedOnly {
    std::time_t time = 0;
    std::uint32_t uid = 0;
    std::string user;
    std::string account;
    std::uint64_t count = 0;
};

// The reconciler's position: the kernel's per-uid totals already accounted for, in
// the `blocked` set identified by its handle (a new set restarts from zero).
struct Checkpoint {
    std::time_t time = 0;
    std::uint64_t set_handle = 0;
    std::map<std::uint32_t, std::uint64_t> kernel;
};

// Where the reconciler stands after a restart (HistoryStore::recover): the last
// checkpoint and the explained attempts recorded after it, per uid.
struct LogRecovery {
    std::optional<Checkpoint> checkpoint;
    std::map<std::uint32_t, std::uint64_t> explained_since;
};

class AttemptSink {
  public:
    virtual ~AttemptSink() = default;
    virtual void explained(const Attempt& attempt) = 0;
    virtual void counted_only(const CountedOnly& record) = 0;
    virtual void checkpoint(const Checkpoint& checkpoint) = 0;
};

}  // namespace smtpfence::nfq
