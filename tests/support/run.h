// Commands run to completion inside a namespace (or the caller's own), optionally as
// another uid, with their output: `ip`, `nft`, the CLI under test.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tests/support/child.h"

namespace smtpfence::testing {

// The first executable called name in PATH or the sbin directories (root's tools live
// there, and ctest, sudo or cron may run us with a short PATH); name as given when it
// holds a slash; empty when there is none.
[[nodiscard]] std::string find_program(const std::string& name);

struct RunResult {
    int exit_code = -1;  // 128+signal when killed by a signal
    bool timed_out = false;
    std::string out;
    std::string err;
    [[nodiscard]] std::string output() const { return out + err; }
    [[nodiscard]] std::string describe() const;  // "exit 1: <output>"
};

struct RunOptions {
    std::optional<Credentials> as;  // run as this account; the caller's own otherwise
    Millis timeout{10000};
    int input = -1;  // stdin, rewound to its start; /dev/null when negative
};

// Runs argv (argv[0] looked up with find_program) inside ns (or in the caller's
// namespace when ns is null), in a process group of its own. The process and its group
// are killed when the timeout passes.
[[nodiscard]] RunResult run(const Netns* ns, const std::vector<std::string>& argv,
                            const RunOptions& options);
[[nodiscard]] inline RunResult run(const Netns* ns, const std::vector<std::string>& argv,
                                   const std::optional<Credentials>& creds = std::nullopt,
                                   Millis timeout = Millis{10000}) {
    return run(ns, argv, RunOptions{creds, timeout});
}
[[nodiscard]] inline RunResult run(const Netns& ns, const std::vector<std::string>& argv,
                                   const std::optional<Credentials>& creds = std::nullopt,
                                   Millis timeout = Millis{10000}) {
    return run(&ns, argv, RunOptions{creds, timeout});
}

}  // namespace smtpfence::testing
