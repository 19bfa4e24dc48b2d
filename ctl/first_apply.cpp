#include "ctl/first_apply.h"

#include <chrono>
#include <ctime>
#include <string>

#include "common/log.h"
#include "ctl/service_notify.h"

namespace smtpfence {

Result<void> apply_timed(nft::Engine& engine, const DaemonOptions& options, const Desired& desired,
                         DaemonState& state) {
    const auto start = std::chrono::steady_clock::now();
    auto r = apply_desired(engine, options, desired);
    if (r) {
        const auto took = std::chrono::steady_clock::now() - start;
        state.last_apply = {.count = state.last_apply.count + 1,
                            .at = std::time(nullptr),
                            .took = std::chrono::duration_cast<std::chrono::microseconds>(took)};
    }
    return r;
}

Result<void> FirstApply::apply(const Desired& desired, ApplyRetry::Clock::time_point now) {
    auto r = apply_timed(engine_, options_, desired, state_);
    if (r || !previous_table_in_force())
        return r;
    state_.retry = ApplyRetry::after(r.error().message(), now);
    journal_config_error(state_, r.error().message(), "start", r.error().message());
    log::warning("table inet " + options_.table +
                 " left by a previous run stays in force; applying again in 1 s "
                 "(then less often) and on each reload");
    return {};
}

void FirstApply::retry_if_due(ApplyRetry::Clock::time_point now) {
    std::optional<ApplyRetry>& retry = state_.retry;
    if (!retry || state_.removed || !state_.current || !retry->due(now))
        return;
    if (auto r = apply_timed(engine_, options_, *state_.current, state_); !r) {
        retry->failed_again(r.error().message(), now);
        log::error(retry->error + "; the table a previous run left stays in force; " +
                   "applying again in " + std::to_string(retry->delay.count()) + " s");
        service::status(state_.status_line());
        return;
    }
    retry.reset();
    worker_.sync(state_);
    service::status(state_.status_line());
}

bool FirstApply::previous_table_in_force() {
    auto header = engine_.table_header(options_.table);
    return header && header->has_value() &&
           (!(*header)->owner || *(*header)->owner == engine_.portid());
}

}  // namespace smtpfence
