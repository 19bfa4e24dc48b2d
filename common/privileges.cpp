#include "common/privileges.h"

#include <cap-ng.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>

#include "common/files.h"
#include "common/text.h"

namespace smtpfence {
namespace {

// The kernel's names, by number (include/uapi/linux/capability.h); a test checks them
// against that header's constants.
constexpr std::array<std::string_view, 41> kNames = {"CAP_CHOWN",
                                                     "CAP_DAC_OVERRIDE",
                                                     "CAP_DAC_READ_SEARCH",
                                                     "CAP_FOWNER",
                                                     "CAP_FSETID",
                                                     "CAP_KILL",
                                                     "CAP_SETGID",
                                                     "CAP_SETUID",
                                                     "CAP_SETPCAP",
                                                     "CAP_LINUX_IMMUTABLE",
                                                     "CAP_NET_BIND_SERVICE",
                                                     "CAP_NET_BROADCAST",
                                                     "CAP_NET_ADMIN",
                                                     "CAP_NET_RAW",
                                                     "CAP_IPC_LOCK",
                                                     "CAP_IPC_OWNER",
                                                     "CAP_SYS_MODULE",
                                                     "CAP_SYS_RAWIO",
                                                     "CAP_SYS_CHROOT",
                                                     "CAP_SYS_PTRACE",
                                                     "CAP_SYS_PACCT",
                                                     "CAP_SYS_ADMIN",
                                                     "CAP_SYS_BOOT",
                                                     "CAP_SYS_NICE",
                                                     "CAP_SYS_RESOURCE",
                                                     "CAP_SYS_TIME",
                                                     "CAP_SYS_TTY_CONFIG",
                                                     "CAP_MKNOD",
                                                     "CAP_LEASE",
                                                     "CAP_AUDIT_WRITE",
                                                     "CAP_AUDIT_CONTROL",
                                                     "CAP_SETFCAP",
                                                     "CAP_MAC_OVERRIDE",
                                                     "CAP_MAC_ADMIN",
                                                     "CAP_SYSLOG",
                                                     "CAP_WAKE_ALARM",
                                                     "CAP_BLOCK_SUSPEND",
                                                     "CAP_AUDIT_READ",
                                                     "CAP_PERFMON",
                                                     "CAP_BPF",
                                                     "CAP_CHECKPOINT_RESTORE"};

// A /proc/PID/status file is about 1.5 KiB; anything near this is not one.
constexpr std::size_t kMaxStatusBytes = 1U << 20U;

// The kernel prints each mask as 16 hex digits ("%016llx"); fewer are accepted, nothing
// else is.
std::optional<std::uint64_t> parse_mask(std::string_view text) {
    if (text.empty() || text.size() > 16)
        return std::nullopt;
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
    if (ec != std::errc() || end != text.data() + text.size())
        return std::nullopt;
    return value;
}

std::optional<unsigned> parse_decimal(std::string_view text) {
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size())
        return std::nullopt;
    return value;
}

Result<CapabilityReport> read_status(const std::string& path) {
    auto text = read_text_file(path, kMaxStatusBytes);
    if (!text)
        return std::unexpected(text.error());
    return parse_proc_status_capabilities(*text, path);
}

// What the process holds against what it should, named: "CapEff: CAP_KILL still held,
// CAP_NET_ADMIN missing".
void describe_difference(std::string& out, std::string_view field, CapabilitySet held,
                         CapabilitySet wanted) {
    if (held == wanted)
        return;
    std::string parts;
    if (const CapabilitySet extra = held - wanted; !extra.empty())
        parts = extra.to_string() + " still held";
    if (const CapabilitySet missing = wanted - held; !missing.empty())
        parts += (parts.empty() ? "" : ", ") + missing.to_string() + " missing";
    out += (out.empty() ? "" : "; ") + std::string(field) + ": " + parts;
}

// What libcap-ng's capng_apply return codes mean (cap-ng.c, 0.8.x).
std::string_view apply_stage(int rc) {
    switch (rc) {
        case -2:
        case -3:
        case -4:
            return "shrinking the bounding set";
        case -5:
            return "capset (effective, permitted, inheritable)";
        case -6:
        case -7:
        case -8:
            return "clearing the ambient set";
        default:
            return "reading the process's capabilities";
    }
}

}  // namespace

std::vector<unsigned> CapabilitySet::members() const {
    std::vector<unsigned> out;
    for (unsigned cap = 0; cap < 64; ++cap) {
        if (contains(cap))
            out.push_back(cap);
    }
    return out;
}

std::string CapabilitySet::to_string() const {
    if (empty())
        return "none";
    std::string out;
    for (const unsigned cap : members())
        out += (out.empty() ? "" : ", ") + capability_name(cap);
    return out;
}

std::string capability_name(unsigned cap) {
    if (cap < kNames.size())
        return std::string(kNames[cap]);
    return "CAP_" + std::to_string(cap);
}

std::optional<unsigned> capability_from_name(std::string_view name) {
    std::string wanted = text::upper(name);
    if (!wanted.starts_with("CAP_"))
        wanted = "CAP_" + wanted;
    for (unsigned cap = 0; cap < kNames.size(); ++cap) {
        if (kNames[cap] == wanted)
            return cap;
    }
    return std::nullopt;
}

Result<CapabilityReport> parse_proc_status_capabilities(std::string_view text,
                                                        std::string_view source) {
    struct Field {
        std::string_view key;
        CapabilitySet CapabilityReport::*set;
        bool seen = false;
    };
    std::array<Field, 5> fields{{{"CapInh", &CapabilityReport::inheritable},
                                 {"CapPrm", &CapabilityReport::permitted},
                                 {"CapEff", &CapabilityReport::effective},
                                 {"CapBnd", &CapabilityReport::bounding},
                                 {"CapAmb", &CapabilityReport::ambient}}};
    CapabilityReport report;
    const std::string where(source);
    std::size_t line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string_view::npos)
            end = text.size();
        const std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        const std::string at = where + ":" + std::to_string(line_no);
        const std::size_t colon = line.find(':');
        const std::string_view key = line.substr(0, colon);
        const std::string_view value = colon == std::string_view::npos
                                           ? std::string_view()
                                           : text::trim(line.substr(colon + 1));
        if (key == "Threads") {
            const auto n = parse_decimal(value);
            if (!n)
                return fail(0, at, "Threads: \"" + std::string(value) + "\" is not a number");
            report.threads = *n;
            continue;
        }
        if (key == "NoNewPrivs") {
            if (value != "0" && value != "1")
                return fail(0, at, "NoNewPrivs: \"" + std::string(value) + "\" is not 0 or 1");
            report.no_new_privs = value == "1";
            continue;
        }
        for (Field& f : fields) {
            // "CapEff 0000" or "CapEff=..." is a broken line of ours, not another key.
            if (!line.starts_with(f.key))
                continue;
            if (colon != f.key.size()) {
                return fail(0, at,
                            "\"" + std::string(text::trim(line)) + "\" is not a \"" +
                                std::string(f.key) + ":\" line");
            }
            if (f.seen)
                return fail(0, at, "a second " + std::string(f.key) + " line");
            const auto mask = parse_mask(value);
            if (!mask) {
                return fail(0, at,
                            std::string(f.key) + ": \"" + std::string(value) +
                                "\" is not a hex capability mask");
            }
            report.*(f.set) = CapabilitySet::from_mask(*mask);
            f.seen = true;
            break;
        }
    }
    for (const Field& f : fields) {
        if (!f.seen)
            return fail(0, where, "no " + std::string(f.key) + " line");
    }
    return report;
}

Result<CapabilityReport> current_capabilities() {
    return read_status("/proc/self/status");
}

Result<CapabilityReport> capabilities_of(pid_t pid) {
    return read_status("/proc/" + std::to_string(pid) + "/status");
}

Result<void> drop_to(CapabilitySet keep, CapabilitySet bounding) {
    const std::string what = "drop capabilities to " + keep.to_string();
    if (!keep.subset_of(bounding)) {
        return fail(EINVAL, what,
                    "kept " + (keep - bounding).to_string() +
                        " outside the bounding set asked for: it would be lost at the next exec");
    }
    auto before = current_capabilities();
    if (!before)
        return std::unexpected(before.error().wrap(what));

    if (::geteuid() != 0) {
        // Not root: nothing to drop, and a process that somehow holds more (ambient
        // capabilities given by its parent, file capabilities) is told so.
        const CapabilitySet held = before->effective | before->permitted | before->ambient;
        if (held.subset_of(keep))
            return {};
        return fail(0, what,
                    "not uid 0, so nothing is dropped, but the process holds " +
                        (held - keep).to_string() + " beyond that");
    }

    if (before->threads > 1) {
        return fail(0, what,
                    std::to_string(before->threads) +
                        " threads: capabilities belong to each thread, drop them before "
                        "starting any");
    }
    if (const CapabilitySet missing = keep - before->permitted; !missing.empty()) {
        return fail(EPERM, what,
                    "cannot keep " + missing.to_string() +
                        ": not in the permitted set this process was started with");
    }
    // The bounding set only shrinks: what is already out of it (systemd's
    // CapabilityBoundingSet=) stays out, and is not an error here.
    const CapabilitySet new_bounding = bounding & before->bounding;
    const CapabilitySet leaving_bounding = before->bounding - new_bounding;
    if (!leaving_bounding.empty() && !before->effective.contains(CAP_SETPCAP)) {
        return fail(EPERM, what,
                    "cannot drop " + leaving_bounding.to_string() +
                        " from the bounding set: that needs CAP_SETPCAP, which this process "
                        "does not hold");
    }

    capng_clear(CAPNG_SELECT_ALL);  // inheritable and ambient stay empty
    // One set at a time: libcap-ng's update and apply take single enumerators (or the
    // enumerators it defines for unions).
    for (const unsigned cap : keep.members()) {
        for (const capng_type_t type : {CAPNG_EFFECTIVE, CAPNG_PERMITTED}) {
            if (capng_update(CAPNG_ADD, type, cap) != 0) {
                return fail(EINVAL, what,
                            "this kernel or libcap-ng does not know " + capability_name(cap));
            }
        }
    }
    for (const unsigned cap : new_bounding.members()) {
        if (capng_update(CAPNG_ADD, CAPNG_BOUNDING_SET, cap) != 0)
            return fail(EINVAL, what,
                        "this kernel or libcap-ng does not know " + capability_name(cap));
    }
    // capng_apply does the bounding set first, while CAP_SETPCAP is still effective,
    // then capset, then the ambient set. Selecting the bounding set when it does not
    // change would ask for CAP_SETPCAP for nothing.
    errno = 0;
    int rc = 0;
    if (leaving_bounding.empty()) {
        rc = capng_apply(CAPNG_SELECT_CAPS);
        if (rc == 0)
            rc = capng_apply(CAPNG_SELECT_AMBIENT);
    } else {
        rc = capng_apply(CAPNG_SELECT_ALL);
    }
    const int apply_errno = errno;

    // What the kernel says we hold now, whatever libcap-ng answered.
    auto after = current_capabilities();
    if (!after)
        return std::unexpected(after.error().wrap(what));
    std::string differences;
    describe_difference(differences, "CapEff", after->effective, keep);
    describe_difference(differences, "CapPrm", after->permitted, keep);
    describe_difference(differences, "CapInh", after->inheritable, {});
    describe_difference(differences, "CapAmb", after->ambient, {});
    describe_difference(differences, "CapBnd", after->bounding, new_bounding);
    if (rc != 0) {
        return fail(apply_errno, what,
                    "libcap-ng failed " + std::string(apply_stage(rc)) + " (capng_apply " +
                        std::to_string(rc) + ")" +
                        (differences.empty() ? "" : "; now " + differences));
    }
    if (!differences.empty())
        return fail(0, what, "the kernel shows " + differences);
    return {};
}

Result<void> forbid_new_privileges() {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail(errno, "prctl(PR_SET_NO_NEW_PRIVS)");
    return {};
}

}  // namespace smtpfence
