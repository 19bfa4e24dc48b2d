#include "ctl/daemon_state.h"

#include "common/log.h"
#include "common/text.h"

namespace smtpfence {

std::string DaemonState::status_line() const {
    std::string line;
    if (!current)
        line = "no policy loaded";
    else if (removed)
        line = "NOT enforcing: the table was removed with smtpfencectl remove";
    else if (!current->loaded.policy.enabled)
        line = "NOT enforcing: SMTP_BLOCK is \"0\"";
    else
        line = "enforcing: " + describe(*current);
    if (input_error) {
        line = "CONFIGURATION ERROR: " + input_error->message + "; " +
               (input_error->fallback ? "the built-in defaults are in force"
                                      : "the rules in force are unchanged") +
               "; " + line;
    }
    if (heal.count > 0)
        line += "; restored after foreign changes " + std::to_string(heal.count) + " time(s)";
    return line;
}

ctl::AccessPolicy control_access(const Desired& desired) {
    ctl::AccessPolicy access;
    access.read_all = desired.loaded.policy.control_read_all;
    const std::string& admin = desired.loaded.policy.control_admin_group;
    if (!admin.empty()) {
        if (const GroupEntry* g = find_group(desired.accounts, admin)) {
            access.admin_gid = g->gid;
        } else {
            log::warning("CONTROL_ADMIN_GROUP: unknown group \"" + text::printable(admin) +
                         "\"; only root may change the allowlist");
        }
    }
    return access;
}

void adopt(DaemonState& state, Desired desired, ctl::ControlServer& server) {
    state.current = std::move(desired);
    state.applied_at = std::time(nullptr);
    server.set_access(control_access(*state.current));
}

const Account* find_user(const AccountDb& db, const std::string& name) {
    if (const Account* a = db.user(name))
        return a;
    if (const auto uid = text::parse_unsigned(name, 4294967294U))
        return db.user_by_uid(static_cast<std::uint32_t>(*uid));
    return nullptr;
}

const GroupEntry* find_group(const AccountDb& db, const std::string& name) {
    if (const GroupEntry* g = db.group(name))
        return g;
    if (const auto gid = text::parse_unsigned(name, 4294967294U))
        return db.group_by_gid(static_cast<std::uint32_t>(*gid));
    return nullptr;
}

}  // namespace smtpfence
