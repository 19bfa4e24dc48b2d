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
//             one of them holds 10,000 relay exceptions besides 10,000 allowlisted
//             uids (bench/workload.h), which the blocked uid's SYNs look up and miss;
//   apply     the table replaced by Engine::apply and by `nft -f`;
//   change    two tables of 10 and 10,000 allowlisted uids and as many exceptions for
//             single-element changes (bench/change_bench.h).
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
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_main.h"
#include "bench/change_bench.h"
#include "bench/report.h"
#include "bench/sandbox.h"
#include "bench/workload.h"
#include "nft/engine.h"
#include "nft/ruleset.h"

namespace smtpfence::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr gid_t kBlockedGid = 60000;
constexpr std::array<std::size_t, 3> kUserCounts{1, 100, 10000};
constexpr std::size_t kApplyUsers = 10000;
// Relay exceptions of the variant that holds them, beside kUserCounts.back() users.
constexpr std::size_t kExceptions = 10000;
// The goal of the issues (refusal rate at 10,000 users, and with 10,000 exceptions
// besides): >= 0.9 of the floor. The change goal's tolerance is in change_bench.h.
constexpr double kRefusalGoal = 0.9;
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

// Engine::apply's report (what became of the blocked set's counters) does not matter
// here; only whether it worked.
Result<void> done(const Result<nft::ApplyReport>& r) {
    if (!r) {
        return std::unexpected(r.error());
    }
    return {};
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

// Also proves that the kernel holds every exception: read_dest_counters lists every
// element of the six dest sets.
Result<void> load_smtpfence(const Netns& ns, std::size_t users, std::size_t exceptions,
                            nft::QueueMode queue) {
    auto e = NsEngine::open(ns);
    if (!e) {
        return std::unexpected(e.error());
    }
    nft::Engine& eng = (*e)->engine();
    if (auto r = done(
            eng.apply(nft::build_ruleset(smtpfence_spec("smtpfence", users, exceptions, queue))));
        !r) {
        return r;
    }
    auto held = eng.read_dest_counters("smtpfence");
    if (!held) {
        return std::unexpected(held.error());
    }
    if (held->size() != exceptions) {
        return fail(0, "load exceptions",
                    "the kernel holds " + std::to_string(held->size()) + " exceptions, not " +
                        std::to_string(exceptions));
    }
    return {};
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
    std::size_t users;       // allowlisted users; 0 for the floor
    std::size_t exceptions;  // relay exceptions (smtpfence only)
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
// path is there and refusals come from the firewall alone. Where there are exceptions,
// the one exception to the remote lets its uid through and another uid's exception,
// to elsewhere, does not.
Result<void> verify(const RefusalVariant& v) {
    std::vector<std::pair<std::uint32_t, bool>> expected{{kBlockedUid, false}};
    if (v.users > 0) {
        expected.emplace_back(kFirstAllowedUid, true);
        expected.emplace_back(kFirstAllowedUid + static_cast<std::uint32_t>(v.users) - 1, true);
    }
    if (v.exceptions > 1) {
        expected.emplace_back(kFirstExceptionUid, true);
        expected.emplace_back(kFirstExceptionUid + 1, false);
    }
    for (const auto& [uid, through] : expected) {
        auto c = connect_once(v.ns, uid);
        if (!c) {
            return std::unexpected(c.error());
        }
        if (through && c->connected != 1) {
            return fail(c->first_other_errno, "verify " + v.label,
                        "uid " + std::to_string(uid) + " did not reach " + kRemoteAddr + ":25");
        }
        if (!through && c->refused != 1) {
            return fail(0, "verify " + v.label,
                        "uid " + std::to_string(uid) + " was not refused (connected " +
                            std::to_string(c->connected) + ", errno " +
                            std::to_string(c->first_other_errno) + ")");
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

// One run: the variants, set up once and measured round after round, then the report.
class Bench {
  public:
    explicit Bench(const Options& opt) : opt_(opt) {}
    int run();

  private:
    [[nodiscard]] Result<void> probe_environment();
    [[nodiscard]] Result<void> add_variant(Firewall fw, std::size_t users, std::size_t exceptions,
                                           std::string label);
    [[nodiscard]] Result<void> setup_refusals();
    [[nodiscard]] Result<void> setup_applies();
    [[nodiscard]] Result<ProbeCounts> measure_refusal(RefusalVariant& v, double seconds);
    [[nodiscard]] Result<void> warm_up();
    [[nodiscard]] Result<void> refusal_round(int round);
    [[nodiscard]] Result<void> apply_round(int round, int reps, bool record);
    void print_refusals() const;
    void print_applies() const;
    void print_refusal_goal(const RefusalVariant& v, const std::string& what) const;
    void print_summary() const;
    [[nodiscard]] const RefusalVariant* find(Firewall fw, std::size_t users,
                                             std::size_t exceptions = 0) const;

    Options opt_;
    Clock::time_point start_ = Clock::now();
    std::optional<Remote> remote_;
    nft::QueueMode queue_ = nft::QueueMode::None;
    std::string queue_name_;
    std::string nft_restore_;
    std::string legacy_restore_;
    std::optional<Netns> apply_ns_;
    std::unique_ptr<NsEngine> apply_engine_;
    std::vector<RefusalVariant> variants_;  // the floor first
    nft::RulesetSpec apply_spec_;
    nft::Ruleset prebuilt_;
    UniqueFd apply_text_;
    std::vector<ApplyVariant> applies_;  // nft -f last
    std::optional<ChangeBench> changes_;
    bool broken_ = false;
};

// The remote, the namespace of the apply measurement and the queue mode, then the
// report's header.
Result<void> Bench::probe_environment() {
    auto remote = Remote::create();
    if (!remote) {
        return std::unexpected(remote.error());
    }
    remote_.emplace(std::move(*remote));
    utsname uts{};
    if (::uname(&uts) != 0) {
        return fail(errno, "uname");
    }
    std::string nft_version = "?";
    std::string iptables_version = "?";
    if (const auto r = testing::run(remote_->ns(), {"nft", "--version"}); r.exit_code == 0) {
        nft_version = first_line(r.output());
    }
    if (const auto r = testing::run(remote_->ns(), {"iptables", "-V"}); r.exit_code == 0) {
        iptables_version = first_line(r.output());
    }
    nft_restore_ = testing::find_program("iptables-nft-restore");
    legacy_restore_ = testing::find_program("iptables-legacy-restore");
    if (nft_restore_.empty()) {
        return fail(ENOENT, "find iptables-nft-restore");
    }
    auto apply_ns = Netns::create_anonymous();
    if (!apply_ns) {
        return std::unexpected(apply_ns.error());
    }
    apply_ns_.emplace(std::move(*apply_ns));
    auto apply_engine = NsEngine::open(*apply_ns_);
    if (!apply_engine) {
        return std::unexpected(apply_engine.error());
    }
    apply_engine_ = std::move(*apply_engine);
    auto queue = apply_engine_->engine().probe_queue_mode("bench_probe");
    if (!queue) {
        return std::unexpected(queue.error().wrap("probe the queue mode"));
    }
    queue_ = *queue;
    queue_name_ = nft::to_string(queue_);

    std::printf(
        "smtpfence-bench: %d rounds, %.2f s per refusal measurement in %d interleaved slices, %d "
        "apply runs and %d "
        "allowlist and exception changes per variant and round\n",
        opt_.rounds, opt_.seconds, opt_.slices, opt_.apply_reps, opt_.change_reps);
    std::printf("kernel %s %s, %ld CPUs; %s; %s; iptables-legacy %s\n", uts.sysname, uts.release,
                ::sysconf(_SC_NPROCESSORS_ONLN), nft_version.c_str(), iptables_version.c_str(),
                legacy_restore_.empty() ? "absent" : "present");
    std::printf("queue mode probed on this kernel: %s (smtpfence's refusal variants use it)\n\n",
                queue_name_.c_str());
    (void)std::fflush(stdout);
    return {};
}

Result<void> Bench::add_variant(Firewall fw, std::size_t users, std::size_t exceptions,
                                std::string label) {
    auto ns = remote_->add_client();
    if (!ns) {
        return std::unexpected(ns.error());
    }
    Result<void> loaded;
    switch (fw) {
        case Firewall::Floor:
            loaded = load_floor(*ns);
            break;
        case Firewall::Smtpfence:
            loaded = load_smtpfence(*ns, users, exceptions, queue_);
            break;
        case Firewall::SmtpfenceNoObserve:
            loaded = load_smtpfence(*ns, users, exceptions, nft::QueueMode::None);
            break;
        case Firewall::CsfNft:
            loaded = load_csf(*ns, nft_restore_, users);
            break;
        case Firewall::CsfLegacy:
            loaded = load_csf(*ns, legacy_restore_, users);
            break;
    }
    if (!loaded) {
        return std::unexpected(loaded.error().wrap("load " + label));
    }
    variants_.push_back(RefusalVariant{
        fw, users, exceptions, std::move(label), std::move(*ns), {}, {}, {}, {}, {}});
    return verify(variants_.back());
}

Result<void> Bench::setup_refusals() {
    struct Setup {
        Firewall firewall;
        std::size_t users;
        std::size_t exceptions;
        std::string label;
    };
    std::vector<Setup> setups{{Firewall::Floor, 0, 0, "floor: one nft reject rule"}};
    for (const std::size_t n : kUserCounts) {
        setups.push_back({Firewall::Smtpfence, n, 0, "smtpfence (set, queue " + queue_name_ + ")"});
    }
    setups.push_back({Firewall::Smtpfence, kUserCounts.back(), kExceptions,
                      "smtpfence + " + grouped(static_cast<double>(kExceptions)) + " exceptions"});
    if (queue_ != nft::QueueMode::None) {
        setups.push_back(
            {Firewall::SmtpfenceNoObserve, kUserCounts.back(), 0, "smtpfence, no observe chain"});
    }
    for (const std::size_t n : kUserCounts) {
        setups.push_back({Firewall::CsfNft, n, 0, "CSF-style iptables-nft"});
    }
    if (!legacy_restore_.empty()) {
        for (const std::size_t n : kUserCounts) {
            setups.push_back({Firewall::CsfLegacy, n, 0, "CSF-style iptables-legacy"});
        }
    }
    for (Setup& s : setups) {
        if (auto r = add_variant(s.firewall, s.users, s.exceptions, std::move(s.label)); !r) {
            return r;
        }
    }
    return {};
}

Result<void> Bench::setup_applies() {
    // nft's text `queue num N bypass` is the native queue expression, which some
    // kernels refuse; both sides apply the ruleset without the observe chain so that
    // they apply the very same thing.
    apply_spec_ = smtpfence_spec("bench_apply", kApplyUsers, 0, nft::QueueMode::None);
    prebuilt_ = nft::build_ruleset(apply_spec_);
    // "table ...; delete table ..." first: like Engine::apply, nft -f then replaces an
    // existing table in one transaction.
    auto apply_text = text_fd("table inet bench_apply {}\ndelete table inet bench_apply\n" +
                              nft::render_nft(prebuilt_));
    if (!apply_text) {
        return std::unexpected(apply_text.error());
    }
    apply_text_ = std::move(*apply_text);
    nft::Engine& eng = apply_engine_->engine();
    applies_.push_back({"smtpfence: build_ruleset + Engine::apply",
                        [this, &eng] { return done(eng.apply(nft::build_ruleset(apply_spec_))); },
                        {}});
    applies_.push_back({"smtpfence: Engine::apply (prebuilt)",
                        [this, &eng] { return done(eng.apply(prebuilt_)); },
                        {}});
    applies_.push_back(
        {"nft -f (render_nft text, same ruleset)",
         [this] {
             return run_ok(*apply_ns_, {"nft", "-f", "/dev/stdin"}, apply_text_.get());
         },
         {}});
    for (ApplyVariant& a : applies_) {
        if (auto r = a.run(); !r) {
            return std::unexpected(r.error().wrap(a.label));
        }
        auto uids = eng.read_u32_set("bench_apply", nft::kSetAllowUid);
        if (!uids) {
            return std::unexpected(uids.error());
        }
        if (uids->size() != kApplyUsers) {
            return fail(0, a.label,
                        "the kernel holds " + std::to_string(uids->size()) +
                            " allowlisted uids, not " + std::to_string(kApplyUsers));
        }
    }
    return {};
}

Result<ProbeCounts> Bench::measure_refusal(RefusalVariant& v, double seconds) {
    auto c = probe_connects(v.ns, blocked_probe(seconds));
    if (!c) {
        return std::unexpected(c.error().wrap(v.label + ", " + std::to_string(v.users) + " users"));
    }
    v.total.attempts += c->attempts;
    v.total.refused += c->refused;
    v.total.connected += c->connected;
    v.total.other += c->other;
    if (v.total.first_other_errno == 0) {
        v.total.first_other_errno = c->first_other_errno;
    }
    if (c->connected > 0) {
        broken_ = true;
        loud(std::to_string(c->connected) + " connection(s) of blocked uid " +
             std::to_string(kBlockedUid) + " got through " + v.label + " with " +
             std::to_string(v.users) + " users");
    }
    return *c;
}

Result<void> Bench::warm_up() {
    for (RefusalVariant& v : variants_) {
        if (auto r = measure_refusal(v, std::min(0.2, opt_.seconds)); !r) {
            return std::unexpected(r.error());
        }
        v.total = {};
    }
    if (auto r = apply_round(0, 1, false); !r) {
        return r;
    }
    return changes_->round(0, 10, false);
}

Result<void> Bench::refusal_round(int round) {
    // Each variant's time in the round comes in slices, interleaved with the other
    // variants' slices: a slow spell of the machine then hits every variant alike.
    const std::size_t nv = variants_.size();
    std::vector<std::uint64_t> refused(nv);
    std::vector<std::int64_t> elapsed_ns(nv);
    std::vector<std::int64_t> cpu_ns(nv);
    for (int slice = 0; slice < opt_.slices; ++slice) {
        for (std::size_t k = 0; k < nv; ++k) {
            const std::size_t i = (k + static_cast<std::size_t>(round + slice)) % nv;
            auto c = measure_refusal(variants_[i], opt_.seconds / opt_.slices);
            if (!c) {
                return std::unexpected(c.error());
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
        RefusalVariant& v = variants_[i];
        v.rates.push_back(per_second(refused[i], elapsed_ns[i]));
        v.ratios.push_back(floor_rate > 0 ? v.rates.back() / floor_rate : 0);
        v.cpu_rates.push_back(per_second(refused[i], cpu_ns[i]));
        v.cpu_ratios.push_back(floor_cpu_rate > 0 ? v.cpu_rates.back() / floor_cpu_rate : 0);
    }
    return {};
}

Result<void> Bench::apply_round(int round, int reps, bool record) {
    std::vector<std::vector<double>> samples(applies_.size());
    for (int k = 0; k < reps; ++k) {
        for (std::size_t j = 0; j < applies_.size(); ++j) {
            const std::size_t i = (static_cast<std::size_t>(k + round) + j) % applies_.size();
            auto t = timed(applies_[i].run);
            if (!t) {
                return std::unexpected(t.error().wrap(applies_[i].label));
            }
            samples[i].push_back(*t);
        }
    }
    if (record) {
        for (std::size_t i = 0; i < applies_.size(); ++i) {
            applies_[i].round_medians.push_back(spread(samples[i]).median);
        }
    }
    return {};
}

void Bench::print_refusals() const {
    std::printf(
        "Connect refusal rate: blocked uid %u, socket()+connect()+close() to %s:%u as fast as "
        "it goes\n",
        kBlockedUid, kRemoteAddr, kSmtpPort);
    std::printf(
        "(median [min..max] over %d rounds; ratio: this variant / the floor, taken per round, "
        "median [min..max])\n",
        opt_.rounds);
    using Series = std::vector<double> RefusalVariant::*;
    auto refusal_table = [&](const char* title, const char* unit, Series rates, Series ratios) {
        std::printf("\n%s\n", title);
        std::printf("%-34s %7s %10s %10s %10s %9s  %s\n", "variant", "users", unit, "min", "max",
                    "us/conn", "ratio to floor");
        for (const RefusalVariant& v : variants_) {
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
    for (const RefusalVariant& v : variants_) {
        if (v.total.other > 0) {
            std::printf(
                "warning: %s, %zu users: %s of %s connect()s failed otherwise than ECONNREFUSED "
                "(first: %s)\n",
                v.label.c_str(), v.users, grouped(static_cast<double>(v.total.other)).c_str(),
                grouped(static_cast<double>(v.total.attempts)).c_str(),
                errno_text(v.total.first_other_errno).c_str());
        }
    }
}

void Bench::print_applies() const {
    std::printf("\nApply the full policy, %s allowlisted uids, replacing the existing table\n",
                grouped(static_cast<double>(kApplyUsers)).c_str());
    std::printf(
        "(queue mode none on both sides: nft's text form of the queue verdict is the native "
        "expression, which this kernel may refuse; per round the median of %d runs; then median "
        "[min..max] over rounds)\n\n",
        opt_.apply_reps);
    const Spread nft_apply = spread(applies_.back().round_medians);
    for (const ApplyVariant& a : applies_) {
        const Spread s = spread(a.round_medians);
        std::printf("%-42s %10s  [%s..%s]", a.label.c_str(), duration_text(s.median).c_str(),
                    duration_text(s.min).c_str(), duration_text(s.max).c_str());
        if (&a != &applies_.back()) {
            std::printf("   ratio to nft -f %.3f", s.median / nft_apply.median);
        }
        std::printf("\n");
    }
}

const RefusalVariant* Bench::find(Firewall fw, std::size_t users, std::size_t exceptions) const {
    for (const RefusalVariant& v : variants_) {
        if (v.firewall == fw && v.users == users && v.exceptions == exceptions) {
            return &v;
        }
    }
    return nullptr;
}

const char* verdict(bool met) {
    return met ? "goal met" : "goal NOT met";
}

void Bench::print_refusal_goal(const RefusalVariant& v, const std::string& what) const {
    const RefusalVariant& floor = variants_[0];
    const double ratio = spread(v.ratios).median;
    const double cpu_ratio = spread(v.cpu_ratios).median;
    std::printf("  goal: %s >= %.2f of the floor\n", what.c_str(), kRefusalGoal);
    std::printf("        wall clock: smtpfence %s/s vs floor %s/s, ratio %.3f  -> %s\n",
                grouped(spread(v.rates).median).c_str(),
                grouped(spread(floor.rates).median).c_str(), ratio, verdict(ratio >= kRefusalGoal));
    std::printf("        CPU time:   smtpfence %s/cpu-s vs floor %s/cpu-s, ratio %.3f  -> %s\n",
                grouped(spread(v.cpu_rates).median).c_str(),
                grouped(spread(floor.cpu_rates).median).c_str(), cpu_ratio,
                verdict(cpu_ratio >= kRefusalGoal));
}

// Per round: a's rate / b's rate (b the same firewall without what a adds).
std::string per_round_ratio(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
        ratios.push_back(b[i] > 0 ? a[i] / b[i] : 0);
    }
    return ratio_text(spread(ratios));
}

void Bench::print_summary() const {
    const std::size_t most = kUserCounts.back();
    const std::string users = grouped(static_cast<double>(most));
    const RefusalVariant* sf = find(Firewall::Smtpfence, most);
    std::printf("\nSummary\n");
    print_refusal_goal(*sf, "blocked-SYN refusal rate with " + users + " allowlisted users");
    std::string csf_line;
    for (const Firewall fw : {Firewall::CsfNft, Firewall::CsfLegacy}) {
        if (const RefusalVariant* v = find(fw, most)) {
            csf_line += strf("%s%s %s/s (ratio %.3f wall, %.3f CPU)", csf_line.empty() ? "" : ", ",
                             fw == Firewall::CsfNft ? "iptables-nft" : "iptables-legacy",
                             grouped(spread(v->rates).median).c_str(), spread(v->ratios).median,
                             spread(v->cpu_ratios).median);
        }
    }
    std::printf("        for comparison, CSF-style with %s rules: %s\n", users.c_str(),
                csf_line.c_str());
    const RefusalVariant* ex = find(Firewall::Smtpfence, most, kExceptions);
    print_refusal_goal(*ex, "refusal rate with " + users + " allowlisted users and " +
                                grouped(static_cast<double>(kExceptions)) + " exceptions");
    std::printf(
        "        the exceptions' own share: rate with them / without them, per round: wall %s, "
        "CPU %s\n",
        per_round_ratio(ex->rates, sf->rates).c_str(),
        per_round_ratio(ex->cpu_rates, sf->cpu_rates).c_str());
    changes_->print_summary();
    const double nft_apply = spread(applies_.back().round_medians).median;
    std::printf("  apply with %s users: smtpfence %s (build + apply) vs nft -f %s: ratio %.3f\n",
                grouped(static_cast<double>(kApplyUsers)).c_str(),
                duration_text(spread(applies_[0].round_medians).median).c_str(),
                duration_text(nft_apply).c_str(),
                spread(applies_[0].round_medians).median / nft_apply);
    std::uint64_t attempts = 0;
    std::uint64_t connected = 0;
    for (const RefusalVariant& v : variants_) {
        attempts += v.total.attempts;
        connected += v.total.connected;
    }
    std::printf("  connections of the blocked uid that got through: %s of %s connect()s%s\n",
                grouped(static_cast<double>(connected)).c_str(),
                grouped(static_cast<double>(attempts)).c_str(),
                connected > 0 ? "  !!! BUG !!!" : "");
    std::printf("  total run time %.1f s\n",
                std::chrono::duration<double>(Clock::now() - start_).count());
}

int Bench::run() {
    if (::geteuid() != 0) {
        note("smtpfence-bench: must run as root (network namespaces, nftables)\n");
        return 1;
    }
    if (auto r = probe_environment(); !r) {
        return fail_setup(r.error());
    }
    note("setting up namespaces and firewalls...\n");
    if (auto r = setup_refusals(); !r) {
        return fail_setup(r.error());
    }
    if (auto r = setup_applies(); !r) {
        return fail_setup(r.error());
    }
    auto changes = ChangeBench::create(queue_);
    if (!changes) {
        return fail_setup(changes.error());
    }
    changes_.emplace(std::move(*changes));
    note("warming up...\n");
    if (auto r = warm_up(); !r) {
        return fail_setup(r.error());
    }
    for (int round = 0; round < opt_.rounds; ++round) {
        const auto round_start = Clock::now();
        Result<void> r = refusal_round(round);
        if (r) {
            r = apply_round(round, opt_.apply_reps, true);
        }
        if (r) {
            r = changes_->round(round, opt_.change_reps, true);
        }
        if (!r) {
            note("smtpfence-bench: %s\n", r.error().message().c_str());
            return 1;
        }
        note("round %d/%d done in %.1f s\n", round + 1, opt_.rounds,
             std::chrono::duration<double>(Clock::now() - round_start).count());
    }
    print_refusals();
    print_applies();
    changes_->print_table(opt_.change_reps);
    print_summary();
    return broken_ ? 1 : 0;
}

int bench_main(int argc, char** argv) {
    Options opt;
    CLI::App app{
        "smtpfence-bench: blocked-SYN refusal rates, apply times, allowlist and exception "
        "change times, "
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
    app.add_option(
           "--change-reps", opt.change_reps,
           "allowlist and exception changes (each) per table and round (default 200, --quick "
           "30)")
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
    exit_on_interrupt("smtpfence-bench");
    return Bench(opt).run();
}

}  // namespace
}  // namespace smtpfence::bench

int main(int argc, char** argv) {
    return smtpfence::bench::guarded_main("smtpfence-bench",
                                          [&] { return smtpfence::bench::bench_main(argc, argv); });
}
