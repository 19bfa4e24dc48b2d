#include "ctl/handlers.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/log.h"
#include "common/text.h"
#include "nfq/da_sink.h"
#include "nfq/proc_queue.h"

#ifndef SMTPFENCE_VERSION
#define SMTPFENCE_VERSION "unknown"
#endif

namespace smtpfence {
namespace {

using ctl::Command;
using ctl::ErrorCode;
using nlohmann::json;

// Why the daemon enforces what it does, or nothing.
std::string summary(const DaemonState& state) {
    if (!state.current)
        return "no policy loaded";
    if (state.removed) {
        return "the table was removed with `smtpfencectl remove`; `smtpfencectl reload` "
               "restores it";
    }
    if (!state.current->loaded.policy.enabled)
        return "SMTP_BLOCK is \"0\" in " + state.current->loaded.policy.source;
    return describe(*state.current);
}

json self_heal_status(const HealStats& heal, bool events) {
    json j = {{"events", events}, {"restored", heal.count}, {"failed", heal.failures}};
    if (heal.count + heal.failures > 0) {
        j["last"] = {{"at", heal.last_at},     {"by", heal.last_who},
                     {"what", heal.last_what}, {"restore_us", heal.last_restore_us},
                     {"ok", heal.last_ok},     {"error", heal.last_error}};
    }
    return j;
}

}  // namespace

std::unexpected<ctl::ProtocolError> refuse(ErrorCode code, std::string message) {
    return std::unexpected(ctl::ProtocolError{code, std::move(message)});
}

Answer Handlers::answer(const ctl::Request& r) {
    switch (r.command) {
        case Command::Version:
            return json{{"protocol", ctl::kProtocolVersion}, {"version", SMTPFENCE_VERSION}};
        case Command::Status:
            return status();
        case Command::List:
            return list();
        case Command::Check:
            return check(r);
        case Command::Allow:
        case Command::Deny:
            return change(r);
        case Command::Reload:
            return reload();
        case Command::Remove:
            return remove();
        case Command::Test:  // a child answers these (Controller::dispatch)
        case Command::Attempts:
        case Command::Top:
            break;
    }
    return refuse(ErrorCode::UnknownCommand, "not handled");
}

Answer Handlers::reload() {
    if (auto ok = reload_(); !ok)
        return refuse(ErrorCode::Failed,
                      ok.error().message() + "; the rules in force are unchanged");
    return json{{"enforcing", state_.enforcing()},
                {"description", state_.current ? describe(*state_.current) : std::string()}};
}

Answer Handlers::remove() {
    if (auto ok = engine_.remove(options_.table); !ok)
        return refuse(ErrorCode::Failed, ok.error().message());
    state_.removed = true;
    worker_.sync(state_);
    log::notice("control: table inet " + options_.table +
                " removed on request: outbound SMTP is no longer guarded (reload "
                "restores it)");
    return json{{"removed", true}, {"table", options_.table}};
}

Answer Handlers::status() {
    json j;
    j["version"] = SMTPFENCE_VERSION;
    j["enforcing"] = state_.enforcing();
    j["summary"] = summary(state_);
    if (const std::optional<ApplyRetry>& retry = state_.retry) {
        j["config_error"] = {
            {"message", state_.error_text()},
            {"since", state_.input_error ? state_.input_error->since : retry->since},
            {"in_force", "the table a previous run left (applied again within " +
                             std::to_string(retry->delay.count()) + " s, and on reload)"}};
    } else if (const std::optional<InputError>& error = state_.input_error) {
        j["config_error"] = {{"message", error->message},
                             {"since", error->since},
                             {"in_force", error->fallback ? "built-in defaults"
                                                          : "the last configuration that loaded"}};
    }
    auto present = engine_.table_exists(options_.table);
    j["table"] = {{"family", "inet"},
                  {"name", options_.table},
                  {"present", present ? json(*present) : json(nullptr)}};
    if (state_.enforcing() && present && !*present)
        j["problem"] =
            "the table is missing from the kernel (flushed by hand?); "
            "`smtpfencectl reload` puts it back";
    j["table"]["owned"] = state_.current && state_.current->spec.owned;
    j["self_heal"] = self_heal_status(state_.heal, guard_.has_events());
    j["queue"] = {{"mode", nft::to_string(worker_.queue_mode())}};
    if (state_.current)
        add_policy_status(j);
    j["applied_at"] = state_.applied_at;
    j["csf"] = {{"mode", !options_.csf_conf_path.empty()},
                {"csf_conf", options_.csf_conf_path},
                {"rules_loaded", !state_.csf_rules.empty()},
                {"explanation", state_.csf_rules}};
    add_worker_status(j);
    j["destination_exceptions"] = dest_.status_json();
    if (present && *present) {
        if (auto blocked = engine_.read_blocked(options_.table)) {
            std::uint64_t total = 0;
            for (const auto& [uid, c] : *blocked)
                total += c.packets;
            j["counters"] = {{"uids_blocked", blocked->size()}, {"attempts", total}};
        }
    }
    j["metrics"] = {{"path", state_.metrics.path},
                    {"last_written", state_.metrics.last_written},
                    {"last_error", state_.metrics.last_error},
                    {"failures", state_.metrics.failures}};
    j["control"] = {{"socket", server_.path()},
                    {"requests", server_.requests()},
                    {"rejected", server_.rejected()}};
    return j;
}

// The policy in force, its queue as the kernel reports it, and DirectAdmin's pipeline.
void Handlers::add_policy_status(json& j) const {
    const Desired& current = *state_.current;
    const Policy& p = current.loaded.policy;
    j["config"] = p.source;
    j["allow_list"] = managed_allow_path(options_);
    j["ports"] = p.ports;
    j["action"] = p.action == BlockAction::Drop ? "drop" : "reject";
    j["allowed"] = {{"uids", current.allow.uids.size()}, {"gids", current.allow.gids.size()}};
    j["queue"]["num"] = p.queue_num;
    if (const auto q = nfq::read_queue_proc_stats(p.queue_num)) {
        j["queue"]["bound"] = true;
        j["queue"]["waiting"] = q->waiting;
        j["queue"]["queue_dropped"] = q->queue_dropped;
        j["queue"]["user_dropped"] = q->user_dropped;
        j["queue"]["id_sequence"] = q->id_sequence;
    } else {
        j["queue"]["bound"] = false;
    }
    j["warnings"] = current.warnings;
    const auto da = nfq::resolve_da_pipeline(p.da_pipeline, options_.virtual_dir);
    j["directadmin"] = {
        {"enabled", da.enabled && !options_.no_worker},
        {"reason", options_.no_worker ? "off: --no-worker (nothing is recorded)" : da.reason},
        {"virtual_dir", options_.virtual_dir},
        {"attempt_weight", p.da_attempt_weight}};
}

void Handlers::add_worker_status(json& j) const {
    const pid_t pid = worker_.pid();
    j["worker"] = {{"running", pid > 0},
                   {"ready", worker_.ready()},
                   {"pid", pid > 0 ? pid : 0},
                   {"restarts", worker_.restarts()},
                   {"wanted", worker_.wanted(state_)}};
}

Answer Handlers::list() {
    if (!state_.current)
        return refuse(ErrorCode::Failed, "no policy loaded");
    const Desired& current = *state_.current;
    json uids = json::array();
    for (const std::uint32_t uid : current.allow.uids) {
        const Account* a = current.accounts.user_by_uid(uid);
        uids.push_back({{"uid", uid},
                        {"name", a != nullptr ? a->name : ""},
                        {"reason", current.allow.uid_reasons.at(uid)}});
    }
    json gids = json::array();
    for (const std::uint32_t gid : current.allow.gids) {
        const GroupEntry* g = current.accounts.group_by_gid(gid);
        gids.push_back({{"gid", gid},
                        {"name", g != nullptr ? g->name : ""},
                        {"reason", current.allow.gid_reasons.at(gid)}});
    }
    return json{{"uids", uids},
                {"gids", gids},
                {"managed",
                 {{"file", managed_allow_path(options_)},
                  {"users", current.managed.users},
                  {"groups", current.managed.groups}}},
                {"exceptions", dest_.list_json()},
                {"warnings", current.allow.warnings},
                {"enforcing", state_.enforcing()}};
}

Answer Handlers::check(const ctl::Request& r) {
    if (!state_.current)
        return refuse(ErrorCode::Failed, "no policy loaded");
    const Desired& current = *state_.current;
    const std::string name = r.user.value_or("");
    const Account* a = find_user(current.accounts, name);
    if (a == nullptr)
        return refuse(ErrorCode::NotFound,
                      "no user \"" + text::printable(name) + "\" in " + options_.passwd_path);
    const Policy& p = current.loaded.policy;
    json j = {{"user", a->name}, {"uid", a->uid}, {"gid", a->gid}, {"ports", p.ports}};
    bool blocked = false;
    std::string reason;
    if (!state_.enforcing()) {
        reason = state_.removed ? "nothing is enforced: the table was removed"
                                : "nothing is enforced: SMTP_BLOCK is \"0\" in " + p.source;
    } else if (const auto it = current.allow.uid_reasons.find(a->uid);
               it != current.allow.uid_reasons.end()) {
        reason = "allowed: " + it->second;
    } else if (const auto g = current.allow.gid_reasons.find(a->gid);
               g != current.allow.gid_reasons.end()) {
        reason = "allowed: primary group gid " + std::to_string(a->gid) + " (" + g->second + ")";
    } else if (r.to) {
        const auto dest = parse_destination(*r.to);
        if (dest && dest->network &&
            dest->network->prefix != (dest->network->family == Family::V4 ? 32 : 128)) {
            return refuse(
                ErrorCode::InvalidArgument,
                "check --to takes one host (a name or an address), not the network " + dest->host);
        }
        check_destination(*a, *r.to, j);
        return j;
    } else {
        blocked = true;
        reason = "blocked: not root, not an MTA user, not in SMTP_ALLOWUSER or " +
                 managed_allow_path(options_) + ", no allowed group; connections to remote ports " +
                 text::join_numbers(p.ports) + " are " +
                 (p.action == BlockAction::Drop ? "dropped" : "refused") +
                 (p.allow_local ? " (this server's own addresses are allowed)" : "");
    }
    j["blocked"] = blocked;
    j["reason"] = reason;
    return j;
}

Answer Handlers::change(const ctl::Request& r) {
    if (!state_.current)
        return refuse(ErrorCode::Failed, "no policy loaded");
    if (r.to)
        return change_exception(r);
    const bool add = r.command == Command::Allow;
    const AllowKind kind = r.user ? AllowKind::User : AllowKind::Group;
    const std::string name = r.user.value_or(r.group.value_or(""));
    const std::string what = r.user ? "user" : "group";
    // Only names that exist now are accepted: a typo must not be stored silently.
    // (A name that disappears later is re-resolved, and then simply not allowed.)
    const bool exists = r.user ? find_user(state_.current->accounts, name) != nullptr
                               : find_group(state_.current->accounts, name) != nullptr;
    if (add && !exists) {
        return refuse(ErrorCode::NotFound,
                      "no " + what + " \"" + name + "\" in " +
                          (r.user ? options_.passwd_path : options_.group_path));
    }
    const std::string path = managed_allow_path(options_);
    auto changed = change_managed_allow(path, kind, name, add);
    if (!changed)
        return refuse(ErrorCode::Failed, changed.error().message());
    if (auto applied = allowlist_.refresh(); !applied) {
        return refuse(ErrorCode::Failed,
                      path + " was updated, but applying it failed: " + applied.error().message() +
                          " (the daemon retries when the file "
                          "changes or on reload)");
    }
    json j = {{"kind", what},
              {"name", name},
              {"changed", changed->changed},
              {"file", path},
              {"enforcing", state_.enforcing()}};
    if (!add && (r.user || r.group)) {
        if (auto still = still_allowed(r.user.has_value(), name))
            j["still_allowed"] = *still;
    }
    log::notice("control: " + std::string(add ? "allow " : "deny ") + what + " " + name +
                (changed->changed ? "" : " (no change)"));
    return j;
}

// After a deny: still allowed through the config or a group? Said, as the admin meant
// to block.
std::optional<std::string> Handlers::still_allowed(bool user, const std::string& name) const {
    const Desired& current = *state_.current;
    if (user) {
        const Account* a = find_user(current.accounts, name);
        if (a == nullptr)
            return std::nullopt;
        if (const auto it = current.allow.uid_reasons.find(a->uid);
            it != current.allow.uid_reasons.end())
            return it->second;
        if (const auto g = current.allow.gid_reasons.find(a->gid);
            g != current.allow.gid_reasons.end())
            return g->second;
        return std::nullopt;
    }
    const GroupEntry* g = find_group(current.accounts, name);
    if (g == nullptr)
        return std::nullopt;
    if (const auto it = current.allow.gid_reasons.find(g->gid);
        it != current.allow.gid_reasons.end())
        return it->second;
    return std::nullopt;
}

// check USER --to HOST[:PORT]: what the kernel's exception sets decide for each address
// the destination has now and each port asked (one, or every guarded port).
void Handlers::check_destination(const Account& a, const std::string& to, json& j) const {
    const Policy& p = state_.current->loaded.policy;
    auto dest = parse_destination(to);  // the protocol parsed it: canonical text
    if (!dest) {
        j["blocked"] = true;
        j["reason"] = "blocked: " + dest.error().message();
        return;
    }
    std::vector<Network> addresses;
    std::string unknown;
    if (dest->network) {
        addresses.push_back(*dest->network);
    } else if (auto known = dest_.addresses_of(dest->host)) {
        addresses = std::move(*known);
        if (addresses.empty())
            unknown = dest->host +
                      " has no address yet (its lookup is pending or failing: see "
                      "`smtpfencectl list`)";
    } else {
        unknown = "no exception names " + dest->host +
                  " (smtpfenced looks up only the names of exceptions; give an address to ask "
                  "about one)";
    }
    std::vector<std::uint16_t> ports;
    if (dest->port)
        ports.push_back(*dest->port);
    else
        ports = p.ports;
    std::vector<std::string> rules;  // in the order of the exceptions, each once
    std::vector<std::string> refused;
    for (const std::uint16_t port : ports) {
        if (std::ranges::find(p.ports, port) == p.ports.end())
            continue;  // not guarded: nothing to decide
        bool all = !addresses.empty();
        for (const Network& address : addresses) {
            const auto by = dest_.covering(a.uid, a.gid, address, port);
            for (const std::string& rule : by) {
                if (std::ranges::find(rules, rule) == rules.end())
                    rules.push_back(rule);
            }
            all = all && !by.empty();
        }
        if (!all)
            refused.push_back(std::to_string(port));
    }
    j["to"] = dest->text();
    j["exceptions"] = rules;
    j["blocked"] = !refused.empty();
    if (!unknown.empty()) {
        j["reason"] = "blocked: " + unknown;
    } else if (refused.empty()) {
        j["reason"] = rules.empty() ? "allowed: " + dest->text() + " is not on a guarded port"
                                    : "allowed by exception " + text::join(rules, "; ");
    } else {
        j["reason"] = "blocked: no exception lets " + a.name + " reach " + dest->host +
                      " on port " + text::join(refused, ", ") +
                      (rules.empty() ? std::string()
                                     : " (partly covered by " + text::join(rules, "; ") + ")");
    }
}

// allow/deny ... --to: an exception in allow.list, then the sets changed as elements.
Answer Handlers::change_exception(const ctl::Request& r) {
    const bool add = r.command == Command::Allow;
    auto dest = parse_destination(*r.to);
    if (!dest)
        return refuse(ErrorCode::InvalidArgument, "to " + dest.error().message());
    Subject who{SubjectKind::Everyone, ""};
    if (r.user) {
        if (add && find_user(state_.current->accounts, *r.user) == nullptr)
            return refuse(ErrorCode::NotFound,
                          "no user \"" + *r.user + "\" in " + options_.passwd_path);
        who = Subject{SubjectKind::User, *r.user};
    } else if (r.group) {
        if (add && find_group(state_.current->accounts, *r.group) == nullptr)
            return refuse(ErrorCode::NotFound,
                          "no group \"" + *r.group + "\" in " + options_.group_path);
        who = Subject{SubjectKind::Group, *r.group};
    }
    const DestException exception{who, *dest, managed_allow_path(options_)};
    const std::string path = managed_allow_path(options_);
    auto changed = change_managed_exception(path, exception, add);
    if (!changed)
        return refuse(ErrorCode::Failed, changed.error().message());
    auto applied = allowlist_.refresh();
    if (applied)
        applied = dest_.replan();
    if (!applied) {
        return refuse(ErrorCode::Failed,
                      path + " was updated, but applying it failed: " + applied.error().message() +
                          " (the daemon retries when the file changes or on reload)");
    }
    log::notice("control: " + std::string(add ? "allow " : "deny ") + exception.text() +
                (changed->changed ? "" : " (no change)"));
    json j = {{"kind", "exception"},
              {"name", exception.text()},
              {"changed", changed->changed},
              {"file", path},
              {"enforcing", state_.enforcing()}};
    if (!add) {
        for (const DestException& e : state_.current->loaded.policy.allow_dest) {
            if (e.text() == exception.text())
                j["still_allowed"] = "SMTP_ALLOWDEST in " + e.origin;
        }
    }
    return j;
}

}  // namespace smtpfence
