#include "bench/change_bench.h"

#include <cstdio>
#include <functional>
#include <utility>

#include "bench/report.h"
#include "bench/workload.h"

namespace smtpfence::bench {
namespace {

std::string spread_text(const Spread& s) {
    return duration_text(s.median) + " [" + duration_text(s.min) + ".." + duration_text(s.max) +
           "]";
}

std::vector<double> per_round_ratios(const std::vector<double>& small,
                                     const std::vector<double>& large) {
    std::vector<double> ratios;
    ratios.reserve(small.size());
    for (std::size_t i = 0; i < small.size() && i < large.size(); ++i) {
        ratios.push_back(large[i] / small[i]);
    }
    return ratios;
}

bool same_time(double ratio) {
    return ratio <= kChangeTolerance && ratio >= 1 / kChangeTolerance;
}

}  // namespace

Result<ChangeBench> ChangeBench::create(nft::QueueMode queue) {
    auto ns = Netns::create_anonymous();
    if (!ns) {
        return std::unexpected(ns.error());
    }
    auto engine = NsEngine::open(*ns);
    if (!engine) {
        return std::unexpected(engine.error());
    }
    ChangeBench bench(std::move(*ns), std::move(*engine));
    for (Table& t : bench.tables_) {
        if (auto r = bench.load(t, queue); !r) {
            return std::unexpected(r.error().wrap("change table " + t.name));
        }
    }
    return bench;
}

Result<void> ChangeBench::load(Table& t, nft::QueueMode queue) {
    nft::Engine& eng = engine_->engine();
    if (auto r = eng.apply(nft::build_ruleset(smtpfence_spec(t.name, t.size, t.size, queue))); !r) {
        return std::unexpected(r.error());
    }
    if (auto r = check_uid_change(t); !r) {
        return r;
    }
    return check_dest_change(t);
}

Result<void> ChangeBench::check_uid_change(const Table& t) {
    nft::Engine& eng = engine_->engine();
    if (auto r = eng.change_elements(t.name, nft::kSetAllowUid, {kChangeUid}, {}); !r) {
        return r;
    }
    auto uids = eng.read_u32_set(t.name, nft::kSetAllowUid);
    if (!uids) {
        return std::unexpected(uids.error());
    }
    if (uids->size() != t.size + 1 || !uids->contains(kChangeUid)) {
        return fail(0, "add uid to " + t.name, "the kernel's set does not show it");
    }
    return eng.change_elements(t.name, nft::kSetAllowUid, {}, {kChangeUid});
}

// Also proves the table holds all its exceptions: read_dest_counters lists every
// element of the six sets.
Result<void> ChangeBench::check_dest_change(const Table& t) {
    nft::Engine& eng = engine_->engine();
    if (auto r = eng.change_dest(t.name, {change_exception()}, {}); !r) {
        return r;
    }
    auto held = eng.read_dest_counters(t.name);
    if (!held) {
        return std::unexpected(held.error());
    }
    if (held->size() != t.size + 1 || !held->contains(change_exception())) {
        return fail(0, "add an exception to " + t.name,
                    "the kernel holds " + std::to_string(held->size()) + " exceptions, not " +
                        std::to_string(t.size + 1));
    }
    return eng.change_dest(t.name, {}, {change_exception()});
}

Result<void> ChangeBench::round(int round, int reps, bool record) {
    nft::Engine& eng = engine_->engine();
    std::array<Samples, 2> uid{};
    std::array<Samples, 2> dest{};
    for (int k = 0; k < reps; ++k) {
        for (std::size_t j = 0; j < tables_.size(); ++j) {
            const std::size_t i = (static_cast<std::size_t>(k + round) + j) % tables_.size();
            const std::string& table = tables_[i].name;
            const std::array<std::function<Result<void>()>, 4> ops{
                [&] { return eng.change_elements(table, nft::kSetAllowUid, {kChangeUid}, {}); },
                [&] { return eng.change_elements(table, nft::kSetAllowUid, {}, {kChangeUid}); },
                [&] { return eng.change_dest(table, {change_exception()}, {}); },
                [&] { return eng.change_dest(table, {}, {change_exception()}); }};
            const std::array<std::vector<double>*, 4> into{&uid[i].add, &uid[i].remove,
                                                           &dest[i].add, &dest[i].remove};
            for (std::size_t op = 0; op < ops.size(); ++op) {
                auto t = timed(ops[op]);
                if (!t) {
                    return std::unexpected(t.error().wrap("change " + table));
                }
                into[op]->push_back(*t);
            }
        }
    }
    if (!record) {
        return {};
    }
    for (std::size_t i = 0; i < tables_.size(); ++i) {
        for (auto [from, to] :
             {std::pair{&uid[i], &tables_[i].uid}, {&dest[i], &tables_[i].dest}}) {
            std::vector<double> any = from->add;
            any.insert(any.end(), from->remove.begin(), from->remove.end());
            to->add.push_back(spread(from->add).median);
            to->remove.push_back(spread(from->remove).median);
            to->any.push_back(spread(any).median);
        }
    }
    return {};
}

void ChangeBench::print_row(const char* name, std::vector<double> Samples::*op,
                            Samples Table::*kind) const {
    const std::vector<double>& small = tables_[0].*kind.*op;
    const std::vector<double>& large = tables_[1].*kind.*op;
    std::printf("%-22s %28s %28s   %s\n", name, spread_text(spread(small)).c_str(),
                spread_text(spread(large)).c_str(),
                ratio_text(spread(per_round_ratios(small, large))).c_str());
}

double ChangeBench::median_ratio(std::vector<double> Samples::*op, Samples Table::*kind) const {
    return spread(per_round_ratios(tables_[0].*kind.*op, tables_[1].*kind.*op)).median;
}

void ChangeBench::print_table(int reps) const {
    std::printf(
        "\nOne change, timed alone: Engine::change_elements of one uid in set %s, "
        "Engine::change_dest of one exception (uid . IPv4 /32 . port) in set dest_uid4_host\n",
        nft::kSetAllowUid);
    std::printf(
        "(tables of 10 users + 10 exceptions and of 10,000 + 10,000; %d of each change per table "
        "and round, tables alternating; per round the median; then median [min..max] over "
        "rounds)\n\n",
        reps);
    std::printf("%-22s %28s %28s   %s\n", "operation", "at 10", "at 10,000",
                "ratio 10,000/10 (per round)");
    print_row("add one uid", &Samples::add, &Table::uid);
    print_row("remove one uid", &Samples::remove, &Table::uid);
    print_row("either (uid)", &Samples::any, &Table::uid);
    print_row("add one exception", &Samples::add, &Table::dest);
    print_row("remove one exception", &Samples::remove, &Table::dest);
    print_row("either (exception)", &Samples::any, &Table::dest);
}

// A change is an add or a remove: both must take the same time at either size.
void ChangeBench::print_goal(const char* what, const char* unit, Samples Table::*kind) const {
    const double add = median_ratio(&Samples::add, kind);
    const double remove = median_ratio(&Samples::remove, kind);
    std::printf(
        "  goal: one %s change takes the same time at 10 and 10,000 %s (ratio within "
        "%.2f..%.2f)\n",
        what, unit, 1 / kChangeTolerance, kChangeTolerance);
    std::printf(
        "        add: %s at 10, %s at 10,000: ratio %.3f; remove: %s at 10, %s at 10,000: "
        "ratio %.3f  -> %s\n",
        duration_text(spread((tables_[0].*kind).add).median).c_str(),
        duration_text(spread((tables_[1].*kind).add).median).c_str(), add,
        duration_text(spread((tables_[0].*kind).remove).median).c_str(),
        duration_text(spread((tables_[1].*kind).remove).median).c_str(), remove,
        same_time(add) && same_time(remove) ? "goal met" : "goal NOT met");
}

void ChangeBench::print_summary() const {
    print_goal("allowlist", "users", &Table::uid);
    print_goal("exception", "exceptions", &Table::dest);
}

}  // namespace smtpfence::bench
