// common/privileges.h without root: the names against the kernel's header, the set
// arithmetic, the documented sets' invariants, and /proc/PID/status parsing on text
// written as the kernel's proc_pid_status() prints it, malformed lines included.
// drop_to itself runs in a forked child (it changes the process for good).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "common/privileges.h"

namespace smtpfence {
namespace {

// The capability lines of fs/proc/array.c: render_cap_t prints "%016llx".
std::string status_text(std::uint64_t inh, std::uint64_t prm, std::uint64_t eff, std::uint64_t bnd,
                        std::uint64_t amb, const std::string& before = {},
                        const std::string& after = {}) {
    std::string out =
        "Name:\tsmtpfenced\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n"
        "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nThreads:\t1\n" +
        before;
    char buf[256];
    const int n =
        std::snprintf(buf, sizeof buf,
                      "CapInh:\t%016llx\nCapPrm:\t%016llx\nCapEff:\t%016llx\nCapBnd:\t%016llx\n"
                      "CapAmb:\t%016llx\n",
                      static_cast<unsigned long long>(inh), static_cast<unsigned long long>(prm),
                      static_cast<unsigned long long>(eff), static_cast<unsigned long long>(bnd),
                      static_cast<unsigned long long>(amb));
    if (n <= 0 || static_cast<std::size_t>(n) >= sizeof buf)
        return "snprintf failed";
    out += buf;
    out += "NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n" + after;
    return out;
}

TEST(CapabilityNames, MatchTheKernelsHeader) {
    EXPECT_EQ(capability_name(CAP_CHOWN), "CAP_CHOWN");
    EXPECT_EQ(capability_name(CAP_DAC_OVERRIDE), "CAP_DAC_OVERRIDE");
    EXPECT_EQ(capability_name(CAP_DAC_READ_SEARCH), "CAP_DAC_READ_SEARCH");
    EXPECT_EQ(capability_name(CAP_FOWNER), "CAP_FOWNER");
    EXPECT_EQ(capability_name(CAP_SETGID), "CAP_SETGID");
    EXPECT_EQ(capability_name(CAP_SETUID), "CAP_SETUID");
    EXPECT_EQ(capability_name(CAP_SETPCAP), "CAP_SETPCAP");
    EXPECT_EQ(capability_name(CAP_NET_ADMIN), "CAP_NET_ADMIN");
    EXPECT_EQ(capability_name(CAP_NET_RAW), "CAP_NET_RAW");
    EXPECT_EQ(capability_name(CAP_SYS_MODULE), "CAP_SYS_MODULE");
    EXPECT_EQ(capability_name(CAP_SYS_PTRACE), "CAP_SYS_PTRACE");
    EXPECT_EQ(capability_name(CAP_SYS_ADMIN), "CAP_SYS_ADMIN");
    EXPECT_EQ(capability_name(CAP_SETFCAP), "CAP_SETFCAP");
    EXPECT_EQ(capability_name(CAP_MAC_OVERRIDE), "CAP_MAC_OVERRIDE");
    EXPECT_EQ(capability_name(CAP_AUDIT_READ), "CAP_AUDIT_READ");
    EXPECT_EQ(capability_name(CAP_BPF), "CAP_BPF");
    EXPECT_EQ(capability_name(CAP_CHECKPOINT_RESTORE), "CAP_CHECKPOINT_RESTORE");
    EXPECT_EQ(CAP_LAST_CAP, CAP_CHECKPOINT_RESTORE) << "a new capability: add its name";
    EXPECT_EQ(capability_name(63), "CAP_63");
}

TEST(CapabilityNames, EveryNameRoundTrips) {
    for (unsigned cap = 0; cap <= CAP_LAST_CAP; ++cap) {
        const std::string name = capability_name(cap);
        EXPECT_EQ(capability_from_name(name), cap) << name;
    }
    EXPECT_EQ(capability_from_name("cap_net_admin"), CAP_NET_ADMIN);
    EXPECT_EQ(capability_from_name("sys_ptrace"), CAP_SYS_PTRACE);
    EXPECT_EQ(capability_from_name("CAP_NOPE"), std::nullopt);
    EXPECT_EQ(capability_from_name(""), std::nullopt);
}

TEST(CapabilitySet, Arithmetic) {
    const CapabilitySet a{CAP_NET_ADMIN, CAP_SETUID, CAP_SETGID};
    const CapabilitySet b{CAP_NET_ADMIN, CAP_SYS_PTRACE};
    EXPECT_EQ(a | b, (CapabilitySet{CAP_NET_ADMIN, CAP_SETUID, CAP_SETGID, CAP_SYS_PTRACE}));
    EXPECT_EQ(a & b, CapabilitySet{CAP_NET_ADMIN});
    EXPECT_EQ(a - b, (CapabilitySet{CAP_SETUID, CAP_SETGID}));
    EXPECT_EQ(b - a, CapabilitySet{CAP_SYS_PTRACE});
    EXPECT_TRUE((a - a).empty());
    EXPECT_TRUE((a & b).subset_of(a));
    EXPECT_TRUE(CapabilitySet{}.subset_of(b));
    EXPECT_FALSE(a.subset_of(b));
    EXPECT_TRUE(a.contains(CAP_SETUID));
    EXPECT_FALSE(a.contains(CAP_SYS_PTRACE));
    EXPECT_FALSE(a.contains(200));  // beyond any mask: never held
    EXPECT_EQ(a.mask(), (1ULL << 12) | (1ULL << 7) | (1ULL << 6));
    EXPECT_EQ(CapabilitySet::from_mask(a.mask()), a);
    EXPECT_EQ(a.members(), (std::vector<unsigned>{CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN}));
}

TEST(CapabilitySet, ToStringNamesInNumberOrder) {
    EXPECT_EQ(CapabilitySet{}.to_string(), "none");
    EXPECT_EQ((CapabilitySet{CAP_NET_ADMIN, CAP_CHOWN}).to_string(), "CAP_CHOWN, CAP_NET_ADMIN");
    EXPECT_EQ(CapabilitySet::from_mask(1ULL << 63).to_string(), "CAP_63");
}

// The documented sets (docs/least-privilege.md) and what they must satisfy.
TEST(DocumentedSets, AreWhatTheDocsSay) {
    EXPECT_EQ(kDaemonCapabilities.to_string(), "CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN");
    EXPECT_EQ(worker_capabilities(false).to_string(),
              "CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE");
    EXPECT_EQ(worker_capabilities(true).to_string(),
              "CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_NET_ADMIN, CAP_SYS_PTRACE");
    EXPECT_EQ(kDaemonBoundingSet.to_string(),
              "CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETGID, CAP_SETUID, "
              "CAP_SETPCAP, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE");
}

TEST(DocumentedSets, TheDaemonsBoundingSetCoversEveryChild) {
    // A program uid 0 executes gets the bounding set: the worker (either variant) must
    // find its capabilities there, plus CAP_SETPCAP to shrink its own bounding set.
    EXPECT_TRUE(kDaemonCapabilities.subset_of(kDaemonBoundingSet));
    EXPECT_TRUE(worker_capabilities(false).subset_of(kDaemonBoundingSet));
    EXPECT_TRUE(worker_capabilities(true).subset_of(kDaemonBoundingSet));
    EXPECT_TRUE(kIptablesSaveCapabilities.subset_of(kDaemonBoundingSet));
    EXPECT_TRUE(kDaemonBoundingSet.contains(CAP_SETPCAP));
    // ... and nothing that would make root all-powerful again.
    for (const unsigned cap : {CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SETFCAP,
                               CAP_SYS_BOOT, CAP_BPF, CAP_MKNOD, CAP_KILL, CAP_FOWNER}) {
        EXPECT_FALSE(kDaemonBoundingSet.contains(cap)) << capability_name(cap);
    }
    // The processes themselves never keep CAP_SETPCAP.
    EXPECT_FALSE(kDaemonCapabilities.contains(CAP_SETPCAP));
    EXPECT_FALSE(worker_capabilities(false).contains(CAP_SETPCAP));
    EXPECT_FALSE(worker_capabilities(true).contains(CAP_SETPCAP));
}

TEST(ProcStatus, ParsesTheKernelsLines) {
    constexpr std::uint64_t kFull = 0x000001ffffffffffULL;  // 41 capabilities
    const std::string text = status_text(0, kDaemonCapabilities.mask(), kDaemonCapabilities.mask(),
                                         kDaemonBoundingSet.mask(), 0);
    const auto r = parse_proc_status_capabilities(text, "/proc/4242/status");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->effective, kDaemonCapabilities);
    EXPECT_EQ(r->permitted, kDaemonCapabilities);
    EXPECT_EQ(r->bounding, kDaemonBoundingSet);
    EXPECT_TRUE(r->inheritable.empty());
    EXPECT_TRUE(r->ambient.empty());
    EXPECT_EQ(r->threads, 1U);
    EXPECT_FALSE(r->no_new_privs);

    const auto full = parse_proc_status_capabilities(status_text(0, kFull, kFull, kFull, 0), "x");
    ASSERT_TRUE(full) << full.error().message();
    EXPECT_EQ(full->effective.members().size(), 41U);
    EXPECT_TRUE(full->effective.contains(CAP_CHECKPOINT_RESTORE));
}

TEST(ProcStatus, HexMasksToNames) {
    // A root shell with systemd's CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW.
    const auto r = parse_proc_status_capabilities(
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\n"
        "CapBnd:\t0000000000003000\nCapAmb:\t0000000000001000\nNoNewPrivs:\t1\n",
        "t");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->effective.to_string(), "CAP_NET_ADMIN, CAP_NET_RAW");
    EXPECT_EQ(r->ambient.to_string(), "CAP_NET_ADMIN");
    EXPECT_EQ(r->threads, 0U) << "no Threads line: unknown";
    EXPECT_TRUE(r->no_new_privs);
}

TEST(ProcStatus, ShortMasksAndSpacesAreAccepted) {
    const auto r = parse_proc_status_capabilities(
        "CapInh:\t0\nCapPrm: 1000\nCapEff:\t  1000  \nCapBnd:\tFFFFFFFFFF\nCapAmb:\t0\n", "t");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->permitted, CapabilitySet{CAP_NET_ADMIN});
    EXPECT_EQ(r->effective, CapabilitySet{CAP_NET_ADMIN});
    EXPECT_EQ(r->bounding.members().size(), 40U);
}

TEST(ProcStatus, UnknownLinesAreIgnored) {
    const auto r = parse_proc_status_capabilities(
        status_text(0, 0, 0, 0, 0, "CapFuture:\tnot ours\nSomething:\txyz\n", "Cpus_allowed:\t3\n"),
        "t");
    ASSERT_TRUE(r) << r.error().message();
}

struct Malformed {
    std::string name;
    std::string text;
    std::string message;  // the whole error message
};

class ProcStatusErrors : public ::testing::TestWithParam<Malformed> {};

TEST_P(ProcStatusErrors, NameTheLine) {
    const auto r = parse_proc_status_capabilities(GetParam().text, "/proc/77/status");
    ASSERT_FALSE(r) << "parsed: " << GetParam().text;
    EXPECT_EQ(r.error().message(), GetParam().message);
}

const std::string kHead = "Name:\tw\nThreads:\t1\n";
const std::string kGoodCaps =
    "CapInh:\t0000000000000000\nCapPrm:\t0000000000001000\nCapEff:\t0000000000001000\n"
    "CapBnd:\t0000000000001000\nCapAmb:\t0000000000000000\n";

INSTANTIATE_TEST_SUITE_P(
    Malformed, ProcStatusErrors,
    ::testing::Values(
        Malformed{
            "NotHex",
            kHead + "CapInh:\t0\nCapPrm:\t0\nCapEff:\t00000000000010zz\nCapBnd:\t0\nCapAmb:\t0\n",
            "/proc/77/status:5: CapEff: \"00000000000010zz\" is not a hex capability mask"},
        Malformed{
            "TooLong",
            kHead + "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t10000000000000000\nCapAmb:\t0\n",
            "/proc/77/status:6: CapBnd: \"10000000000000000\" is not a hex capability mask"},
        Malformed{"Empty", kHead + "CapInh:\t\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\nCapAmb:\t0\n",
                  "/proc/77/status:3: CapInh: \"\" is not a hex capability mask"},
        Malformed{"Negative",
                  kHead + "CapInh:\t0\nCapPrm:\t-1\nCapEff:\t0\nCapBnd:\t0\nCapAmb:\t0\n",
                  "/proc/77/status:4: CapPrm: \"-1\" is not a hex capability mask"},
        Malformed{"TwoValues",
                  kHead + "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\nCapAmb:\t0 0\n",
                  "/proc/77/status:7: CapAmb: \"0 0\" is not a hex capability mask"},
        Malformed{
            "NoColon",
            kHead + "CapInh:\t0\nCapPrm:\t0\nCapEff 0000000000001000\nCapBnd:\t0\nCapAmb:\t0\n",
            "/proc/77/status:5: \"CapEff 0000000000001000\" is not a \"CapEff:\" line"},
        Malformed{"Twice", kHead + kGoodCaps + "CapEff:\t0000000000000000\n",
                  "/proc/77/status:8: a second CapEff line"},
        Malformed{"Missing", kHead + "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\n",
                  "/proc/77/status: no CapAmb line"},
        Malformed{"Nothing", "", "/proc/77/status: no CapInh line"},
        Malformed{"BadThreads", "Threads:\tmany\n" + kGoodCaps,
                  "/proc/77/status:1: Threads: \"many\" is not a number"},
        Malformed{"BadNoNewPrivs", kGoodCaps + "NoNewPrivs:\t2\n",
                  "/proc/77/status:6: NoNewPrivs: \"2\" is not 0 or 1"}),
    [](const ::testing::TestParamInfo<Malformed>& p) { return p.param.name; });

TEST(ProcStatus, OurOwnStatusParses) {
    const auto r = current_capabilities();
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_GE(r->threads, 1U);
    EXPECT_TRUE(r->effective.subset_of(r->permitted));
    const auto same = capabilities_of(::getpid());
    ASSERT_TRUE(same) << same.error().message();
    EXPECT_EQ(same->bounding, r->bounding);
}

TEST(ProcStatus, AMissingProcessIsAnErrorNamingTheFile) {
    const auto r = capabilities_of(999999999);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message(), "/proc/999999999/status: No such file or directory");
}

// drop_to in a child: 0 when it did what the test expects, else an exit code per reason.
// The child writes the error message to a pipe for the failure text.
struct ChildResult {
    int status = -1;
    std::string message;
};

template <class F>
ChildResult in_child(F body) {
    int fds[2];
    if (::pipe(fds) != 0)
        return {};
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::close(fds[0]);
        const std::string message = body();
        (void)!::write(fds[1], message.data(), message.size());
        ::_exit(message.empty() ? 0 : 1);
    }
    ::close(fds[1]);
    ChildResult out;
    char buf[1024];
    ssize_t n = 0;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
        out.message.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    out.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return out;
}

TEST(DropTo, KeepsExactlyTheSetAndShrinksTheBoundingSet) {
    const ChildResult r = in_child([]() -> std::string {
        const bool root = ::geteuid() == 0;
        const CapabilitySet keep{CAP_NET_ADMIN};
        const CapabilitySet bounding{CAP_NET_ADMIN, CAP_NET_RAW};
        auto before = current_capabilities();
        if (!before)
            return before.error().message();
        auto dropped = drop_to(keep, bounding);
        if (!root) {
            // Not root: a no-op, which succeeds when nothing beyond keep is held.
            const bool holds_more =
                !(before->effective | before->permitted | before->ambient).subset_of(keep);
            if (dropped.has_value() == holds_more)
                return "not root: drop_to answered " + std::string(dropped ? "ok" : "an error") +
                       (dropped ? "" : ": " + dropped.error().message());
            return {};
        }
        if (!dropped)
            return dropped.error().message();
        auto after = current_capabilities();
        if (!after)
            return after.error().message();
        if (after->effective != keep || after->permitted != keep || !after->inheritable.empty() ||
            !after->ambient.empty() || after->bounding != (bounding & before->bounding))
            return "holds CapEff " + after->effective.to_string() + ", CapBnd " +
                   after->bounding.to_string();
        // Dropped for good: asking for more now is refused, naming what is missing.
        auto again = drop_to(CapabilitySet{CAP_NET_ADMIN, CAP_SYS_ADMIN}, bounding);
        if (again)
            return "regained CAP_SYS_ADMIN";
        const std::string expected = "kept CAP_SYS_ADMIN outside the bounding set asked for";
        if (again.error().message().find(expected) == std::string::npos)
            return "unexpected error: " + again.error().message();
        auto more = drop_to(CapabilitySet{CAP_NET_ADMIN, CAP_NET_RAW}, bounding);
        if (more || more.error().message().find("cannot keep CAP_NET_RAW: not in the permitted "
                                                "set") == std::string::npos)
            return "kept CAP_NET_RAW, or said so unclearly: " +
                   (more ? std::string("ok") : more.error().message());
        return {};
    });
    EXPECT_EQ(r.status, 0) << r.message;
}

TEST(DropTo, ABoundingSetWithoutTheKeptSetIsRefused) {
    const auto r = drop_to(CapabilitySet{CAP_NET_ADMIN, CAP_SETUID}, CapabilitySet{CAP_NET_ADMIN});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message().find("kept CAP_SETUID outside the bounding set"),
              std::string::npos)
        << r.error().message();
}

TEST(DropTo, WithoutSetpcapTheBoundingSetCannotShrinkAndSaysSo) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root (as non-root drop_to changes nothing)";
    const ChildResult r = in_child([]() -> std::string {
        // First without CAP_SETPCAP (bounding set untouched), then ask for a smaller
        // bounding set.
        auto before = current_capabilities();
        if (!before)
            return before.error().message();
        auto first = drop_to(CapabilitySet{CAP_NET_ADMIN}, before->bounding);
        if (!first)
            return "first drop: " + first.error().message();
        auto second = drop_to(CapabilitySet{CAP_NET_ADMIN}, CapabilitySet{CAP_NET_ADMIN});
        if (second)
            return "shrank the bounding set without CAP_SETPCAP";
        if (second.error().message().find("from the bounding set: that needs CAP_SETPCAP") ==
            std::string::npos)
            return "unclear error: " + second.error().message();
        return {};
    });
    EXPECT_EQ(r.status, 0) << r.message;
}

TEST(ForbidNewPrivileges, SetsNoNewPrivs) {
    const ChildResult r = in_child([]() -> std::string {
        if (auto ok = forbid_new_privileges(); !ok)
            return ok.error().message();
        auto now = current_capabilities();
        if (!now)
            return now.error().message();
        return now->no_new_privs ? "" : "NoNewPrivs is still 0";
    });
    EXPECT_EQ(r.status, 0) << r.message;
}

}  // namespace
}  // namespace smtpfence
