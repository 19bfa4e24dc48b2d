#include "policy/resolve.h"

#include <optional>
#include <string_view>

#include "common/conf_reader.h"
#include "common/text.h"

namespace smtpfence {
namespace {

using text::printable;

constexpr std::uint64_t kMaxId = 4294967294U;

// "1001" names uid 1001 (CSF's --uid-owner takes either); a name made of digits cannot
// be looked up by name, as useradd refuses all-numeric names.
std::optional<std::uint32_t> numeric_id(std::string_view text) {
    const auto n = text::parse_unsigned(text, kMaxId);
    if (!n)
        return std::nullopt;
    return static_cast<std::uint32_t>(*n);
}

// Records uid with its reason unless it is already allowed: the first reason is the
// most specific one (root, then MTA users, then named users, then group members).
void allow_uid(Allowlist& out, std::uint32_t uid, const std::string& reason) {
    out.uids.insert(uid);
    out.uid_reasons.try_emplace(uid, reason);
}

void allow_gid(Allowlist& out, std::uint32_t gid, const std::string& reason) {
    out.gids.insert(gid);
    out.gid_reasons.try_emplace(gid, reason);
}

void allow_users(Allowlist& out, const std::vector<std::string>& names, const std::string& source,
                 const AccountDb& accounts) {
    for (const std::string& name : names) {
        if (const auto uid = numeric_id(name)) {
            allow_uid(out, *uid, source + " uid " + std::to_string(*uid));
        } else if (const Account* a = accounts.user(name)) {
            allow_uid(out, a->uid, source + " " + name);
        } else {
            out.warnings.push_back(source + ": unknown user \"" + printable(name) +
                                   "\" (skipped; it will be resolved again when /etc/passwd "
                                   "changes)");
        }
    }
}

// quiet_missing: the default "mail,mailman": mailman is absent on most servers.
void allow_groups(Allowlist& out, const std::vector<std::string>& names, const std::string& source,
                  bool quiet_missing, const AccountDb& accounts) {
    for (const std::string& name : names) {
        std::uint32_t gid = 0;
        std::string label;  // how the group is named in reasons
        if (const auto id = numeric_id(name)) {
            gid = *id;
            const GroupEntry* g = accounts.group_by_gid(gid);
            label = g != nullptr ? g->name : "gid " + std::to_string(gid);
            allow_gid(out, gid, source + " gid " + std::to_string(gid));
        } else if (const GroupEntry* g = accounts.group(name)) {
            gid = g->gid;
            label = name;
            allow_gid(out, gid, source + " " + name);
        } else {
            if (!quiet_missing) {
                out.warnings.push_back(source + ": unknown group \"" + printable(name) +
                                       "\" (skipped; it will be resolved again when /etc/group "
                                       "changes)");
            }
            continue;
        }
        // meta skgid sees only a socket's primary gid: members through a supplementary
        // membership are let through by uid instead.
        for (const std::uint32_t uid : accounts.uids_in_group(gid)) {
            allow_uid(out, uid, "member of allowed group " + label);
        }
    }
}

}  // namespace

Allowlist resolve_allowlist(const Policy& policy, const AccountDb& accounts,
                            const ManagedAllow& managed) {
    Allowlist out;
    allow_uid(out, 0, "root (always allowed)");

    for (const std::string& name : policy.mta_users) {
        if (const auto uid = numeric_id(name)) {
            allow_uid(out, *uid, "MTA user uid " + std::to_string(*uid));
        } else if (const Account* a = accounts.user(name)) {
            allow_uid(out, a->uid, "MTA user " + name);
        } else if (!policy.mta_users_auto) {
            // The auto list names every common MTA; most of them are absent on any one
            // server, so only an explicit list is worth a warning.
            out.warnings.push_back("MTA_USERS: unknown user \"" + printable(name) +
                                   "\" (skipped; it will be resolved again when /etc/passwd "
                                   "changes)");
        }
    }

    allow_users(out, policy.allow_users, "SMTP_ALLOWUSER", accounts);
    allow_users(out, managed.users, "smtpfencectl allow", accounts);
    allow_groups(out, policy.allow_groups, "SMTP_ALLOWGROUP", policy.allow_groups_default,
                 accounts);
    allow_groups(out, managed.groups, "smtpfencectl allow --group", false, accounts);
    return out;
}

}  // namespace smtpfence
