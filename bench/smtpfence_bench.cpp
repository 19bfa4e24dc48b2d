// smtpfence-bench: the numbers behind DESIGN.md's performance claims, measured side by
// side in one run. A program, not a test: it prints rates, times and ratios and never
// judges timing by its exit status (that is non-zero only when something broke: setup
// failed, or a connection of the blocked uid got through).
//
// The machine is shared and noisy, so no number is taken alone. Every variant runs once
// per round, in an order rotated from round to round (a refusal measurement is further
// cut into slices interleaved with the other variants' slices), so a slow phase of the
// machine hits all variants alike; ratios are taken between variants of the same round,
// and the report gives the median and the spread (min..max) over the rounds. Refusal
// rates are given per second of wall-clock time and per second of CPU time of the
// connecting process: on a busy machine the first also measures the scheduler's share,
// the second only the kernel's work per refused connect().
//
// Everything happens in network namespaces made for the run (see sandbox.h), never in
// the host's:
//   remote    192.0.2.25 (TEST-NET-1) on lo and a listener on port 25: only a SYN that
//             got past the firewall under test reaches it, so a connect() that
//             succeeds is a bug, and one that fails otherwise than ECONNREFUSED is noise;
//   client    one per firewall variant, each holding just that firewall, linked to the
//             remote by a veth pair (198.18.N.0/24, RFC 2544's benchmarking range);
//   apply     the table replaced by Engine::apply and by `nft -f`;
//   change    two tables of 10 and 10,000 allowlisted uids for single-element changes.
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bench/report.h"
#include "bench/sandbox.h"
#include "nft/engine.h"
#include "nft/ruleset.h"

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Users of the allowlists are 1000, 1001, ...; the blocked user is in none of them.
constexpr std::uint32_t kFirstAllowedUid = 1000;
constexpr uid_t kBlockedUid = 60000;
constexpr gid_t kBlockedGid = 60000;
// The uid added and removed again by the allowlist-change measurement.
constexpr std::uint32_t kChangeUid = 50000;
constexpr std::array<std::size_t, 3> kUserCounts{1, 100, 10000};
constexpr std::size_t kApplyUsers = 10000;
constexpr std::array<std::size_t, 2> kChangeUsers{10, 10000};
// The goals of the issue: refusal rate at 10,000 users >= 0.9 of the floor; one change
// "the same time" at 10 and 10,000 users, read as a ratio within 1/1.25 .. 1.25 (closer
// than this a shared 2-core machine cannot resolve).
constexpr double kRefusalGoal = 0.9;
constexpr double kChangeTolerance = 1.25;
// The connect() loop's count bound, per second of budget: far above any rate a kernel
// reaches, it only stops a loop whose clock misbehaves.
constexpr double kMaxAttemptsPerSecond = 5e6;

struct Options {
    int rounds = 5;
    double seconds = 1.0;
    int slices = 5;
    int apply_reps = 3;
    int change_reps = 200;
    bool quick = false;
};

// ---- numbers -------------------------------------------------------------------------

std::string duration_text(double seconds) {
    if (seconds >= 1.0) {
        return strf("%.2f s", seconds);
    }
    if (seconds >= 1e-3) {
        return strf("%.2f ms", seconds * 1e3);
    }
    return strf("%.1f us", seconds * 1e6);
}

template <class F>
Result<double> timed(F&& f) {
    const auto start = Clock::now();
    Result<void> r = f();
    const auto end = Clock::now();
    if (!r) {
        return std::unexpected(r.error());
    }
    return std::chrono::duration<double>(end - start).count();
}

// Engine::apply's report (what became of the blocked set's counters) does not matter
// here; only whether it worked.
Result<void> done(const Result<nft::ApplyReport>& r) {
    if (!r) {
        return std::unexpected(r.error());
    }
    return {};
}

std::set<std::uint32_t> allowed_uids(std::size_t count) {
    std::set<std::uint32_t> uids;
    for (std::size_t i = 0; i < count; ++i) {
        uids.insert(kFirstAllowedUid + static_cast<std::uint32_t>(i));
    }
    return uids;
}

// ---- namespaces and firewalls -------------------------------------------------------

// SmtpfenceNoObserve: smtpfence's ruleset without the observe chain (queue mode none),
// shown beside the real one so the observe chain's share of the cost can be read off.
enum class Firewall { Floor, Smtpfence, SmtpfenceNoObserve, CsfNft, CsfLegacy };

Result<void> load_floor(const Netns& ns) {
    return run_text(ns, {"nft", "-f", "/dev/stdin"},
                    "table inet bench_floor {\n"
                    "\tchain output {\n"
                    "\t\ttype filter hook output priority filter; policy accept;\n"
                    "\t\ttcp dport 25 reject with tcp reset\n"
                    "\t}\n"
                    "}\n");
}

nft::RulesetSpec smtpfence_spec(const std::string& table, std::size_t users, nft::QueueMode queue) {
    nft::RulesetSpec spec;
    spec.table = table;
    spec.allow_uids = allowed_uids(users);
    spec.queue = queue;
    return spec;
}

Result<void> load_smtpfence(const Netns& ns, std::size_t users, nft::QueueMode queue) {
    auto e = NsEngine::open(ns);
    if (!e) {
        return std::unexpected(e.error());
    }
    return done(
        (*e)->engine().apply(nft::build_ruleset(smtpfence_spec("smtpfence", users, queue))));
}

// CSF's SMTP_BLOCK shape: one owner-match ACCEPT per allowed user, then the reject, so
// a blocked user's SYN walks past every allowed user's rule.
std::string csf_rules(std::size_t users) {
    std::string out = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n";
    for (const std::uint32_t uid : allowed_uids(users)) {
        out += "-A OUTPUT -p tcp --dport 25 -m owner --uid-owner " + std::to_string(uid) +
               " -j ACCEPT\n";
    }
    out += "-A OUTPUT -p tcp --dport 25 -j REJECT --reject-with tcp-reset\nCOMMIT\n";
    return out;
}

Result<void> load_csf(const Netns& ns, const std::string& restore, std::size_t users) {
    // -w: the xtables lock file is shared with the host's iptables; wait, don't fail.
    return run_text(ns, {restore, "-w", "10"}, csf_rules(users));
}

struct RefusalVariant {
    Firewall firewall;
    std::size_t users;  // allowlisted users; 0 for the floor
    std::string label;
    Netns ns;
    std::vector<double> rates;   // refusals per second, one per round
    std::vector<double> ratios;  // rate / the floor's rate in the same round
    // The same per second of CPU time the connecting process got: the cost of a refused
    // connect() with the time other processes of a busy machine took left out.
    std::vector<double> cpu_rates;
    std::vector<double> cpu_ratios;
    ProbeCounts total;
};

ProbeSpec blocked_probe(double seconds) {
    ProbeSpec p;
    p.uid = kBlockedUid;
    p.gid = kBlockedGid;
    p.addr = kRemoteAddr;
    p.port = kSmtpPort;
    p.seconds = seconds;
    p.max_attempts = static_cast<std::uint64_t>(std::max(1.0, seconds * kMaxAttemptsPerSecond));
    return p;
}

Result<ProbeCounts> connect_once(const Netns& ns, std::uint32_t uid) {
    ProbeSpec p = blocked_probe(0);
    p.uid = uid;
    p.gid = uid;
    p.max_attempts = 1;
    return probe_connects(ns, p, Millis(5000));
}

// Proves the variant measures what its label says: the blocked uid is refused, and
// (where anyone is allowed) the first and last allowed uids reach the remote, so the
// path is there and refusals come from the firewall alone.
Result<void> verify(const RefusalVariant& v) {
    auto blocked = connect_once(v.ns, kBlockedUid);
    if (!blocked) {
        return std::unexpected(blocked.error());
    }
    if (blocked->refused != 1) {
        return fail(0, "verify " + v.label,
                    "the blocked uid was not refused (connected " +
                        std::to_string(blocked->connected) + ", errno " +
                        std::to_string(blocked->first_other_errno) + ")");
    }
    if (v.users == 0) {
        return {};
    }
    for (const std::uint32_t uid :
         {kFirstAllowedUid, kFirstAllowedUid + static_cast<std::uint32_t>(v.users) - 1}) {
        auto allowed = connect_once(v.ns, uid);
        if (!allowed) {
            return std::unexpected(allowed.error());
        }
        if (allowed->connected != 1) {
            return fail(
                allowed->first_other_errno, "verify " + v.label,
                "allowed uid " + std::to_string(uid) + " did not reach " + kRemoteAddr + ":25");
        }
    }
    return {};
}

// ---- the run ---------------------------------------------------------------------

struct ApplyVariant {
    std::string label;
    std::function<Result<void>()> run;
    std::vector<double> round_medians;
};

struct ChangeTable {
    std::size_t users;
    std::string table;
    std::vector<double> add;  // per-round medians
    std::vector<double> remove;
    std::vector<double> any;
};

std::string first_line(const std::string& s) {
    return s.substr(0, s.find('\n'));
}

int fail_setup(const Error& e) {
    note("smtpfence-bench: setup failed: %s\n", e.message().c_str());
    return 1;
}

void loud(const std::string& message) {
    note("\n!!! BUG: %s !!!\n\n", message.c_str());
    std::printf("\n!!! BUG: %s !!!\n\n", message.c_str());
}

int run(const Options& opt) {
    const auto run_start = Clock::now();
    if (::geteuid() != 0) {
        note("smtpfence-bench: must run as root (network namespaces, nftables)\n");
        return 1;
    }
    auto remote = Remote::create();
    if (!remote) {
        return fail_setup(remote.error());
    }

    // ---- environment -----------------------------------------------------------
    utsname uts{};
    if (::uname(&uts) != 0) {
        return fail_setup(Error{errno, "uname", {}});
    }
    std::string nft_version = "?";
    std::string iptables_version = "?";
    if (const auto r = testing::run(remote->ns(), {"nft", "--version"}); r.exit_code == 0) {
        nft_version = first_line(r.output());
    }
    if (const auto r = testing::run(remote->ns(), {"iptables", "-V"}); r.exit_code == 0) {
        iptables_version = first_line(r.output());
    }
    const std::string nft_restore = testing::find_program("iptables-nft-restore");
    const std::string legacy_restore = testing::find_program("iptables-legacy-restore");
    if (nft_restore.empty()) {
        return fail_setup(Error{ENOENT, "find iptables-nft-restore", {}});
    }

    auto apply_ns = Netns::create_anonymous();
    if (!apply_ns) {
        return fail_setup(apply_ns.error());
    }
    auto apply_engine = NsEngine::open(*apply_ns);
    if (!apply_engine) {
        return fail_setup(apply_engine.error());
    }
    nft::Engine& apply_eng = (*apply_engine)->engine();
    auto queue = apply_eng.probe_queue_mode("bench_probe");
    if (!queue) {
        return fail_setup(queue.error().wrap("probe the queue mode"));
    }
    const std::string queue_name = nft::to_string(*queue);

    std::printf(
        "smtpfence-bench: %d rounds, %.2f s per refusal measurement in %d interleaved slices, %d "
        "apply runs and %d "
        "allowlist changes per variant and round\n",
        opt.rounds, opt.seconds, opt.slices, opt.apply_reps, opt.change_reps);
    std::printf("kernel %s %s, %ld CPUs; %s; %s; iptables-legacy %s\n", uts.sysname, uts.release,
                ::sysconf(_SC_NPROCESSORS_ONLN), nft_version.c_str(), iptables_version.c_str(),
                legacy_restore.empty() ? "absent" : "present");
    std::printf("queue mode probed on this kernel: %s (smtpfence's refusal variants use it)\n\n",
                queue_name.c_str());
    (void)std::fflush(stdout);

    // ---- refusal variants ------------------------------------------------------
    note("setting up namespaces and firewalls...\n");
    std::vector<RefusalVariant> variants;
    auto add_variant = [&](Firewall fw, std::size_t users, std::string label) -> Result<void> {
        auto ns = remote->add_client();
        if (!ns) {
            return std::unexpected(ns.error());
        }
        Result<void> loaded;
        switch (fw) {
            case Firewall::Floor:
                loaded = load_floor(*ns);
                break;
            case Firewall::Smtpfence:
                loaded = load_smtpfence(*ns, users, *queue);
                break;
            case Firewall::SmtpfenceNoObserve:
                loaded = load_smtpfence(*ns, users, nft::QueueMode::None);
                break;
            case Firewall::CsfNft:
                loaded = load_csf(*ns, nft_restore, users);
                break;
            case Firewall::CsfLegacy:
                loaded = load_csf(*ns, legacy_restore, users);
                break;
        }
        if (!loaded) {
            return std::unexpected(loaded.error().wrap("load " + label));
        }
        variants.push_back(
            RefusalVariant{fw, users, std::move(label), std::move(*ns), {}, {}, {}, {}, {}});
        return verify(variants.back());
    };
    struct Setup {
        Firewall firewall;
        std::size_t users;
        std::string label;
    };
    std::vector<Setup> setups{{Firewall::Floor, 0, "floor: one nft reject rule"}};
    for (const std::size_t n : kUserCounts) {
        setups.push_back({Firewall::Smtpfence, n, "smtpfence (set, queue " + queue_name + ")"});
    }
    if (*queue != nft::QueueMode::None) {
        setups.push_back(
            {Firewall::SmtpfenceNoObserve, kUserCounts.back(), "smtpfence, no observe chain"});
    }
    for (const std::size_t n : kUserCounts) {
        setups.push_back({Firewall::CsfNft, n, "CSF-style iptables-nft"});
    }
    if (!legacy_restore.empty()) {
        for (const std::size_t n : kUserCounts) {
            setups.push_back({Firewall::CsfLegacy, n, "CSF-style iptables-legacy"});
        }
    }
    for (Setup& s : setups) {
        if (auto r = add_variant(s.firewall, s.users, std::move(s.label)); !r) {
            return fail_setup(r.error());
        }
    }

    // ---- apply variants ----------------------------------------------------------
    // nft's text `queue num N bypass` is the native queue expression, which some
    // kernels refuse; both sides apply the ruleset without the observe chain so that
    // they apply the very same thing.
    const nft::RulesetSpec apply_spec =
        smtpfence_spec("bench_apply", kApplyUsers, nft::QueueMode::None);
    const nft::Ruleset prebuilt = nft::build_ruleset(apply_spec);
    // "table ...; delete table ..." first: like Engine::apply, nft -f then replaces an
    // existing table in one transaction.
    auto apply_text = text_fd("table inet bench_apply {}\ndelete table inet bench_apply\n" +
                              nft::render_nft(prebuilt));
    if (!apply_text) {
        return fail_setup(apply_text.error());
    }
    std::vector<ApplyVariant> applies;
    applies.push_back({"smtpfence: build_ruleset + Engine::apply",
                       [&] { return done(apply_eng.apply(nft::build_ruleset(apply_spec))); },
                       {}});
    applies.push_back({"smtpfence: Engine::apply (prebuilt)",
                       [&] { return done(apply_eng.apply(prebuilt)); },
                       {}});
    applies.push_back({"nft -f (render_nft text, same ruleset)",
                       [&] {
                           return run_ok(*apply_ns, {"nft", "-f", "/dev/stdin"}, apply_text->get());
                       },
                       {}});
    for (ApplyVariant& a : applies) {
        if (auto r = a.run(); !r) {
            return fail_setup(r.error().wrap(a.label));
        }
        auto uids = apply_eng.read_u32_set("bench_apply", nft::kSetAllowUid);
        if (!uids) {
            return fail_setup(uids.error());
        }
        if (uids->size() != kApplyUsers) {
            return fail_setup(Error{0, a.label,
                                    "the kernel holds " + std::to_string(uids->size()) +
                                        " allowlisted uids, not " + std::to_string(kApplyUsers)});
        }
    }

    // ---- change tables -----------------------------------------------------------
    auto change_ns = Netns::create_anonymous();
    if (!change_ns) {
        return fail_setup(change_ns.error());
    }
    auto change_engine = NsEngine::open(*change_ns);
    if (!change_engine) {
        return fail_setup(change_engine.error());
    }
    nft::Engine& change_eng = (*change_engine)->engine();
    std::vector<ChangeTable> changes;
    for (const std::size_t n : kChangeUsers) {
        ChangeTable t{n, "bench_change_" + std::to_string(n), {}, {}, {}};
        if (auto r = done(change_eng.apply(nft::build_ruleset(smtpfence_spec(t.table, n, *queue))));
            !r) {
            return fail_setup(r.error());
        }
        if (auto r = change_eng.change_elements(t.table, nft::kSetAllowUid, {kChangeUid}, {}); !r) {
            return fail_setup(r.error());
        }
        auto uids = change_eng.read_u32_set(t.table, nft::kSetAllowUid);
        if (!uids) {
            return fail_setup(uids.error());
        }
        if (uids->size() != n + 1 || !uids->contains(kChangeUid)) {
            return fail_setup(
                Error{0, "add uid to " + t.table, "the kernel's set does not show it"});
        }
        if (auto r = change_eng.change_elements(t.table, nft::kSetAllowUid, {}, {kChangeUid}); !r) {
            return fail_setup(r.error());
        }
        changes.push_back(std::move(t));
    }

    // ---- rounds -----------------------------------------------------------------------
    bool broken = false;
    auto measure_refusal = [&](RefusalVariant& v, double seconds) -> Result<ProbeCounts> {
        auto c = probe_connects(v.ns, blocked_probe(seconds));
        if (!c) {
            return std::unexpected(
                c.error().wrap(v.label + ", " + std::to_string(v.users) + " users"));
        }
        v.total.attempts += c->attempts;
        v.total.refused += c->refused;
        v.total.connected += c->connected;
        v.total.other += c->other;
        if (v.total.first_other_errno == 0) {
            v.total.first_other_errno = c->first_other_errno;
        }
        if (c->connected > 0) {
            broken = true;
            loud(std::to_string(c->connected) + " connection(s) of blocked uid " +
                 std::to_string(kBlockedUid) + " got through " + v.label + " with " +
                 std::to_string(v.users) + " users");
        }
        return *c;
    };
    auto change_round = [&](int round, int reps, bool record) -> Result<void> {
        std::array<std::vector<double>, kChangeUsers.size()> add{}, remove{};
        for (int k = 0; k < reps; ++k) {
            for (std::size_t j = 0; j < changes.size(); ++j) {
                ChangeTable& t =
                    changes[(static_cast<std::size_t>(k + round) + j) % changes.size()];
                const std::size_t idx = t.users == kChangeUsers[0] ? 0 : 1;
                auto a = timed([&] {
                    return change_eng.change_elements(t.table, nft::kSetAllowUid, {kChangeUid}, {});
                });
                if (!a) {
                    return std::unexpected(a.error());
                }
                auto r = timed([&] {
                    return change_eng.change_elements(t.table, nft::kSetAllowUid, {}, {kChangeUid});
                });
                if (!r) {
                    return std::unexpected(r.error());
                }
                add[idx].push_back(*a);
                remove[idx].push_back(*r);
            }
        }
        if (!record) {
            return {};
        }
        for (std::size_t i = 0; i < changes.size(); ++i) {
            std::vector<double> any = add[i];
            any.insert(any.end(), remove[i].begin(), remove[i].end());
            changes[i].add.push_back(spread(add[i]).median);
            changes[i].remove.push_back(spread(remove[i]).median);
            changes[i].any.push_back(spread(any).median);
        }
        return {};
    };
    auto apply_round = [&](int round, int reps, bool record) -> Result<void> {
        std::vector<std::vector<double>> samples(applies.size());
        for (int k = 0; k < reps; ++k) {
            for (std::size_t j = 0; j < applies.size(); ++j) {
                const std::size_t i = (static_cast<std::size_t>(k + round) + j) % applies.size();
                auto t = timed(applies[i].run);
                if (!t) {
                    return std::unexpected(t.error().wrap(applies[i].label));
                }
                samples[i].push_back(*t);
            }
        }
        if (record) {
            for (std::size_t i = 0; i < applies.size(); ++i) {
                applies[i].round_medians.push_back(spread(samples[i]).median);
            }
        }
        return {};
    };

    note("warming up...\n");
    for (RefusalVariant& v : variants) {
        if (auto r = measure_refusal(v, std::min(0.2, opt.seconds)); !r) {
            return fail_setup(r.error());
        }
        v.total = {};
    }
    if (auto r = apply_round(0, 1, false); !r) {
        return fail_setup(r.error());
    }
    if (auto r = change_round(0, 10, false); !r) {
        return fail_setup(r.error());
    }

    const std::size_t nv = variants.size();
    for (int round = 0; round < opt.rounds; ++round) {
        const auto round_start = Clock::now();
        // Each variant's time in the round comes in slices, interleaved with the other
        // variants' slices: a slow spell of the machine then hits every variant alike.
        std::vector<std::uint64_t> refused(nv);
        std::vector<std::int64_t> elapsed_ns(nv);
        std::vector<std::int64_t> cpu_ns(nv);
        for (int slice = 0; slice < opt.slices; ++slice) {
            for (std::size_t k = 0; k < nv; ++k) {
                const std::size_t i = (k + static_cast<std::size_t>(round + slice)) % nv;
                auto c = measure_refusal(variants[i], opt.seconds / opt.slices);
                if (!c) {
                    note("smtpfence-bench: %s\n", c.error().message().c_str());
                    return 1;
                }
                refused[i] += c->refused;
                elapsed_ns[i] += c->elapsed_ns;
                cpu_ns[i] += c->cpu_ns;
            }
        }
        auto per_second = [](std::uint64_t n, std::int64_t ns) {
            return ns > 0 ? static_cast<double>(n) / (static_cast<double>(ns) / 1e9) : 0.0;
        };
        const double floor_rate = per_second(refused[0], elapsed_ns[0]);
        const double floor_cpu_rate = per_second(refused[0], cpu_ns[0]);
        for (std::size_t i = 0; i < nv; ++i) {
            RefusalVariant& v = variants[i];
            v.rates.push_back(per_second(refused[i], elapsed_ns[i]));
            v.ratios.push_back(floor_rate > 0 ? v.rates.back() / floor_rate : 0);
            v.cpu_rates.push_back(per_second(refused[i], cpu_ns[i]));
            v.cpu_ratios.push_back(floor_cpu_rate > 0 ? v.cpu_rates.back() / floor_cpu_rate : 0);
        }
        if (auto r = apply_round(round, opt.apply_reps, true); !r) {
            note("smtpfence-bench: %s\n", r.error().message().c_str());
            return 1;
        }
        if (auto r = change_round(round, opt.change_reps, true); !r) {
            note("smtpfence-bench: %s\n", r.error().message().c_str());
            return 1;
        }
        note("round %d/%d done in %.1f s\n", round + 1, opt.rounds,
             std::chrono::duration<double>(Clock::now() - round_start).count());
    }

    // ---- report -------------------------------------------------------------------------
    std::printf(
        "Connect refusal rate: blocked uid %u, socket()+connect()+close() to %s:%u as fast as "
        "it goes\n",
        kBlockedUid, kRemoteAddr, kSmtpPort);
    std::printf(
        "(median [min..max] over %d rounds; ratio: this variant / the floor, taken per round, "
        "median [min..max])\n",
        opt.rounds);
    using Series = std::vector<double> RefusalVariant::*;
    auto refusal_table = [&](const char* title, const char* unit, Series rates, Series ratios) {
        std::printf("\n%s\n", title);
        std::printf("%-34s %7s %10s %10s %10s %9s  %s\n", "variant", "users", unit, "min", "max",
                    "us/conn", "ratio to floor");
        for (const RefusalVariant& v : variants) {
            const Spread r = spread(v.*rates);
            std::printf("%-34s %7s %10s %10s %10s %9.2f  %s\n", v.label.c_str(),
                        v.users == 0 ? "-" : grouped(static_cast<double>(v.users)).c_str(),
                        grouped(r.median).c_str(), grouped(r.min).c_str(), grouped(r.max).c_str(),
                        r.median > 0 ? 1e6 / r.median : 0.0,
                        v.firewall == Firewall::Floor ? "1 (floor)"
                                                      : ratio_text(spread(v.*ratios)).c_str());
        }
    };
    refusal_table("refusals per second of wall-clock time", "median/s", &RefusalVariant::rates,
                  &RefusalVariant::ratios);
    refusal_table(
        "refusals per second of CPU time the connecting process got (other processes' share of a "
        "busy machine left out)",
        "median/cpu-s", &RefusalVariant::cpu_rates, &RefusalVariant::cpu_ratios);
    std::uint64_t attempts = 0;
    std::uint64_t connected = 0;
    for (const RefusalVariant& v : variants) {
        attempts += v.total.attempts;
        connected += v.total.connected;
    }
    for (const RefusalVariant& v : variants) {
        if (v.total.other > 0) {
            std::printf(
                "warning: %s, %zu users: %s of %s connect()s failed otherwise than ECONNREFUSED "
                "(first: %s)\n",
                v.label.c_str(), v.users, grouped(static_cast<double>(v.total.other)).c_str(),
                grouped(static_cast<double>(v.total.attempts)).c_str(),
                errno_text(v.total.first_other_errno).c_str());
        }
    }

    std::printf("\nApply the full policy, %s allowlisted uids, replacing the existing table\n",
                grouped(static_cast<double>(kApplyUsers)).c_str());
    std::printf(
        "(queue mode none on both sides: nft's text form of the queue verdict is the native "
        "expression, which this kernel may refuse; per round the median of %d runs; then median "
        "[min..max] over rounds)\n\n",
        opt.apply_reps);
    const Spread nft_apply = spread(applies.back().round_medians);
    for (const ApplyVariant& a : applies) {
        const Spread s = spread(a.round_medians);
        std::printf("%-42s %10s  [%s..%s]", a.label.c_str(), duration_text(s.median).c_str(),
                    duration_text(s.min).c_str(), duration_text(s.max).c_str());
        if (&a != &applies.back()) {
            std::printf("   ratio to nft -f %.3f", s.median / nft_apply.median);
        }
        std::printf("\n");
    }

    std::printf(
        "\nOne allowlist change: Engine::change_elements of one uid in set %s, each add and "
        "each remove timed alone\n",
        nft::kSetAllowUid);
    std::printf(
        "(%d adds + %d removes per table and round, tables alternating; per round the median; "
        "then median [min..max] over rounds)\n\n",
        opt.change_reps, opt.change_reps);
    std::printf("%-16s %28s %28s   %s\n", "operation", "10 users", "10,000 users",
                "ratio 10,000/10 (per round)");
    auto change_row = [&](const char* name, std::vector<double> ChangeTable::*field) {
        const auto& small = changes[0].*field;
        const auto& large = changes[1].*field;
        std::vector<double> ratios;
        ratios.reserve(small.size());
        for (std::size_t i = 0; i < small.size(); ++i) {
            ratios.push_back(large[i] / small[i]);
        }
        const Spread s = spread(small);
        const Spread l = spread(large);
        std::printf("%-16s %28s %28s   %s\n", name,
                    (duration_text(s.median) + " [" + duration_text(s.min) + ".." +
                     duration_text(s.max) + "]")
                        .c_str(),
                    (duration_text(l.median) + " [" + duration_text(l.min) + ".." +
                     duration_text(l.max) + "]")
                        .c_str(),
                    ratio_text(spread(ratios)).c_str());
        return ratios;
    };
    const double add_ratio = spread(change_row("add one uid", &ChangeTable::add)).median;
    const double remove_ratio = spread(change_row("remove one uid", &ChangeTable::remove)).median;
    (void)change_row("either", &ChangeTable::any);

    // ---- summary -------------------------------------------------------------------------
    auto find = [&](Firewall fw, std::size_t users) -> const RefusalVariant* {
        for (const RefusalVariant& v : variants) {
            if (v.firewall == fw && v.users == users) {
                return &v;
            }
        }
        return nullptr;
    };
    const std::size_t most = kUserCounts.back();
    const RefusalVariant* sf = find(Firewall::Smtpfence, most);
    const double sf_ratio = spread(sf->ratios).median;
    const double sf_cpu_ratio = spread(sf->cpu_ratios).median;
    auto same_time = [](double ratio) {
        return ratio <= kChangeTolerance && ratio >= 1 / kChangeTolerance;
    };
    // A change is an add or a remove: both must take the same time at either size.
    const bool change_met = same_time(add_ratio) && same_time(remove_ratio);

    std::printf("\nSummary\n");
    std::printf("  goal: blocked-SYN refusal rate with %s allowlisted users >= %.2f of the floor\n",
                grouped(static_cast<double>(most)).c_str(), kRefusalGoal);
    auto verdict = [](bool met) { return met ? "goal met" : "goal NOT met"; };
    std::printf("        wall clock: smtpfence %s/s vs floor %s/s, ratio %.3f  -> %s\n",
                grouped(spread(sf->rates).median).c_str(),
                grouped(spread(variants[0].rates).median).c_str(), sf_ratio,
                verdict(sf_ratio >= kRefusalGoal));
    std::printf("        CPU time:   smtpfence %s/cpu-s vs floor %s/cpu-s, ratio %.3f  -> %s\n",
                grouped(spread(sf->cpu_rates).median).c_str(),
                grouped(spread(variants[0].cpu_rates).median).c_str(), sf_cpu_ratio,
                verdict(sf_cpu_ratio >= kRefusalGoal));
    std::string csf_line;
    for (const Firewall fw : {Firewall::CsfNft, Firewall::CsfLegacy}) {
        if (const RefusalVariant* v = find(fw, most)) {
            csf_line += strf("%s%s %s/s (ratio %.3f wall, %.3f CPU)", csf_line.empty() ? "" : ", ",
                             fw == Firewall::CsfNft ? "iptables-nft" : "iptables-legacy",
                             grouped(spread(v->rates).median).c_str(), spread(v->ratios).median,
                             spread(v->cpu_ratios).median);
        }
    }
    std::printf("        for comparison, CSF-style with %s rules: %s\n",
                grouped(static_cast<double>(most)).c_str(), csf_line.c_str());
    std::printf(
        "  goal: one allowlist change takes the same time at 10 and 10,000 users (ratio within "
        "%.2f..%.2f)\n",
        1 / kChangeTolerance, kChangeTolerance);
    std::printf(
        "        add: %s at 10, %s at 10,000: ratio %.3f; remove: %s at 10, %s at 10,000: "
        "ratio %.3f  -> %s\n",
        duration_text(spread(changes[0].add).median).c_str(),
        duration_text(spread(changes[1].add).median).c_str(), add_ratio,
        duration_text(spread(changes[0].remove).median).c_str(),
        duration_text(spread(changes[1].remove).median).c_str(), remove_ratio, verdict(change_met));
    std::printf("  apply with %s users: smtpfence %s (build + apply) vs nft -f %s: ratio %.3f\n",
                grouped(static_cast<double>(kApplyUsers)).c_str(),
                duration_text(spread(applies[0].round_medians).median).c_str(),
                duration_text(nft_apply.median).c_str(),
                spread(applies[0].round_medians).median / nft_apply.median);
    std::printf("  connections of the blocked uid that got through: %s of %s connect()s%s\n",
                grouped(static_cast<double>(connected)).c_str(),
                grouped(static_cast<double>(attempts)).c_str(),
                connected > 0 ? "  !!! BUG !!!" : "");
    std::printf("  total run time %.1f s\n",
                std::chrono::duration<double>(Clock::now() - run_start).count());
    return broken ? 1 : 0;
}

int bench_main(int argc, char** argv) {
    Options opt;
    CLI::App app{
        "smtpfence-bench: blocked-SYN refusal rates, apply and allowlist-change times, "
        "measured side by side in interleaved rounds (root; runs in its own network "
        "namespaces)"};
    app.add_option("--rounds", opt.rounds,
                   "rounds; each runs every variant once (default 5, --quick 2)")
        ->check(CLI::Range(1, 1000));
    app.add_option("--seconds", opt.seconds,
                   "seconds per refusal measurement (default 1.0, --quick 0.2)")
        ->check(CLI::Range(0.01, 600.0));
    app.add_option("--apply-reps", opt.apply_reps,
                   "apply runs per variant and round (default 3, --quick 1)")
        ->check(CLI::Range(1, 1000));
    app.add_option("--change-reps", opt.change_reps,
                   "allowlist changes per table and round (default 200, --quick 30)")
        ->check(CLI::Range(1, 100000));
    app.add_option("--slices", opt.slices,
                   "interleaved slices each refusal measurement is cut into (default 5, --quick 2)")
        ->check(CLI::Range(1, 1000));
    app.add_flag("--quick", opt.quick, "a smoke run of a few seconds");
    CLI11_PARSE(app, argc, argv);
    if (opt.quick) {
        if (app.count("--rounds") == 0) {
            opt.rounds = 2;
        }
        if (app.count("--seconds") == 0) {
            opt.seconds = 0.2;
        }
        if (app.count("--slices") == 0) {
            opt.slices = 2;
        }
        if (app.count("--apply-reps") == 0) {
            opt.apply_reps = 1;
        }
        if (app.count("--change-reps") == 0) {
            opt.change_reps = 30;
        }
    }
    // Nothing to clean up by hand: the namespaces are descriptors of this process and
    // every child dies with it (PR_SET_PDEATHSIG). Say so, and go.
    struct sigaction sa {};
    sa.sa_handler = [](int) {
        static const char msg[] = "\nsmtpfence-bench: interrupted; its namespaces go with it\n";
        (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
        ::_exit(130);
    };
    (void)::sigaction(SIGINT, &sa, nullptr);
    (void)::sigaction(SIGTERM, &sa, nullptr);
    return run(opt);
}

}  // namespace
}  // namespace smtpfence::bench

int main(int argc, char** argv) {
    // Errors are values throughout; only allocation failure (or a library's exception)
    // can end up here.
    try {
        return smtpfence::bench::bench_main(argc, argv);
    } catch (const std::exception& e) {
        (void)std::fprintf(stderr, "smtpfence-bench: %s\n", e.what());
    } catch (...) {
        (void)std::fprintf(stderr, "smtpfence-bench: unknown exception\n");
    }
    return 1;
}
