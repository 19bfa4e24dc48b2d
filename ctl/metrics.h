// The daemon's state in the Prometheus text exposition format, for node_exporter's
// textfile collector. Every metric, its source and its cardinality: docs/metrics.md.
#pragma once

#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smtpfence {

struct MetricsSnapshot {
    struct Account {
        std::string account;  // the uid's account name; the uid as text when unknown
        std::uint32_t uid = 0;
        std::uint64_t attempts = 0;
    };
    struct Queue {
        std::uint64_t waiting = 0;
        std::uint64_t dropped = 0;
        std::uint64_t user_dropped = 0;
    };
    std::string version;
    bool enforcing = false;
    bool config_error = false;
    bool table_present = false;
    bool table_owned = false;
    std::uint64_t self_heals = 0;
    std::uint64_t self_heal_failures = 0;
    bool worker_up = false;
    std::uint64_t worker_restarts = 0;
    std::optional<Queue> queue;  // nullopt: no queue bound (no worker, or not yet)
    std::vector<Account> attempts;
    std::optional<std::uint64_t> explained;  // nullopt: no attempt history to read
    std::uint64_t allowed_uids = 0;
    std::uint64_t allowed_gids = 0;
    std::uint64_t destination_exceptions = 0;
    std::optional<double> last_apply_seconds;  // nullopt: no apply yet
    std::time_t last_apply_at = 0;
};

// A label value as the text format wants it: backslash, double quote and newline
// escaped (\\, \", \n), each byte that is not part of valid UTF-8 replaced by U+FFFD
// (the format is UTF-8 text), everything else as it is.
[[nodiscard]] std::string escape_label_value(std::string_view value);

// The whole textfile: HELP and TYPE before each metric, one sample a line.
[[nodiscard]] std::string render_metrics(const MetricsSnapshot& m);

}  // namespace smtpfence
