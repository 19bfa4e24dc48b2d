// smtpfence-bench's change measurements: one allowlisted uid (Engine::change_elements)
// and one relay exception (Engine::change_dest) added and removed again, each timed
// alone, at a table of 10 users and 10 exceptions and one of 10,000 of each, in a
// namespace of their own. The goal (issue 17 and DESIGN.md): a change takes the same
// time at either size.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "bench/sandbox.h"
#include "nft/ruleset.h"

namespace smtpfence::bench {

// Closer than this a shared 2-core machine cannot resolve "the same time": a ratio
// 10,000/10 within 1/1.25 .. 1.25.
constexpr double kChangeTolerance = 1.25;

class ChangeBench {
  public:
    // Loads both tables and proves each change reaches the kernel once.
    [[nodiscard]] static Result<ChangeBench> create(nft::QueueMode queue);

    // reps times each change per table, the tables alternating (order rotated by
    // round); with record, the round's medians are kept for the report.
    [[nodiscard]] Result<void> round(int round, int reps, bool record);

    // The table of rows (per round the median; median [min..max] over rounds).
    void print_table(int reps) const;
    // The summary's two goal lines.
    void print_summary() const;

  private:
    // Per-round medians of one operation at one table.
    struct Samples {
        std::vector<double> add;
        std::vector<double> remove;
        std::vector<double> any;
    };
    struct Table {
        std::size_t size;  // users, and exceptions
        std::string name;
        Samples uid;
        Samples dest;
    };
    ChangeBench(Netns ns, std::unique_ptr<NsEngine> engine)
        : ns_(std::move(ns)), engine_(std::move(engine)) {}
    [[nodiscard]] Result<void> load(Table& t, nft::QueueMode queue);
    [[nodiscard]] Result<void> check_uid_change(const Table& t);
    [[nodiscard]] Result<void> check_dest_change(const Table& t);
    void print_row(const char* name, std::vector<double> Samples::*op, Samples Table::*kind) const;
    [[nodiscard]] double median_ratio(std::vector<double> Samples::*op, Samples Table::*kind) const;
    void print_goal(const char* what, const char* unit, Samples Table::*kind) const;

    Netns ns_;
    std::unique_ptr<NsEngine> engine_;
    std::array<Table, 2> tables_{Table{10, "bench_change_10", {}, {}},
                                 Table{10000, "bench_change_10000", {}, {}}};
};

}  // namespace smtpfence::bench
