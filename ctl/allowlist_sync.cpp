#include "ctl/allowlist_sync.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <set>
#include <string>

#include "common/log.h"
#include "common/sets.h"
#include "common/text.h"

namespace smtpfence {

Result<void> AllowlistSync::refresh() {
    std::optional<Desired>& current = state_.current;
    if (!current)
        return {};
    auto accounts = AccountDb::load(options_.passwd_path, options_.group_path);
    if (!accounts)
        return std::unexpected(accounts.error());
    auto managed = load_managed_allow(managed_allow_path(options_));
    if (!managed)
        return std::unexpected(managed.error());
    Allowlist next = resolve_allowlist(current->loaded.policy, *accounts, *managed);
    const Allowlist& now = current->allow;
    const auto add_u = set_minus(next.uids, now.uids);
    const auto del_u = set_minus(now.uids, next.uids);
    const auto add_g = set_minus(next.gids, now.gids);
    const auto del_g = set_minus(now.gids, next.gids);
    if (state_.enforcing() && !(add_u.empty() && del_u.empty() && add_g.empty() && del_g.empty())) {
        auto r = engine_.change_elements(options_.table, "allow_uid", add_u, del_u);
        if (r)
            r = engine_.change_elements(options_.table, "allow_gid", add_g, del_g);
        if (!r) {
            // The table is not as we left it (edited by hand, flushed): rebuild it whole.
            log::warning("allowlist change as set elements failed (" + r.error().message() +
                         "); re-applying the whole table");
            nft::RulesetSpec spec =
                make_spec(current->loaded.policy, next, options_.table, kernel_);
            spec.dest = current->spec.dest;  // the exceptions as DestSync keeps them
            auto applied = engine_.apply(nft::build_ruleset(spec));
            if (!applied)
                return std::unexpected(applied.error());
        }
        log::notice("allowlist re-resolved: uids +[" + text::join_numbers(add_u) + "] -[" +
                    text::join_numbers(del_u) + "], gids +[" + text::join_numbers(add_g) + "] -[" +
                    text::join_numbers(del_g) + "]");
    }
    for (const std::string& w : next.warnings)
        log::warning(w);
    current->accounts = std::move(*accounts);
    current->managed = std::move(*managed);
    current->allow = std::move(next);
    current->spec.allow_uids = current->allow.uids;
    current->spec.allow_gids = current->allow.gids;
    adopt(state_, std::move(*current), server_);
    return {};
}

}  // namespace smtpfence
