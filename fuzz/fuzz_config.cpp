// smtpfence.conf as smtpfenced loads it: conf::parse_conf, then policy_from_conf.
// Invariants: a failure names the file; entries hold no record separator, keys no
// whitespace or '='; the entries written back as KEY = "value" lines (same line numbers)
// parse to the same entries and load to the same policy or the same error, and the same
// warnings but one per skipped line (no "="), which names its line; a loaded policy
// holds values in range (fuzz_check.h check_policy).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/conf_reader.h"
#include "common/text.h"
#include "fuzz/fuzz_check.h"
#include "policy/policy.h"

namespace smtpfence::fuzz {
namespace {

constexpr std::string_view kPath = "/etc/smtpfence/smtpfence.conf";

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

bool is_separator(char c) {
    return c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

void check_entries(const conf::ConfFile& conf) {
    int line = 1;
    for (const conf::Entry& e : conf.entries) {
        check(e.line >= line, "line numbers go backwards");
        line = e.line;
        check(e.key.find('=') == std::string::npos, "'=' in a key");
        check(std::none_of(e.key.begin(), e.key.end(), is_space), "whitespace in a key");
        check(e.key.empty() || e.key.front() != '#', "a comment read as a setting");
        check(std::none_of(e.value.begin(), e.value.end(), is_separator),
              "a record separator in a value");
        check(conf.find(e.key) == &e, "a key set twice");
    }
}

// The entries as a file again: each on its own line number; VT (which ends a record
// but not an editor's line) between entries that shared a line.
std::string render(const conf::ConfFile& conf) {
    std::string out;
    int line = 1;
    bool line_used = false;
    for (const conf::Entry& e : conf.entries) {
        for (; line < e.line; ++line) {
            out += '\n';
            line_used = false;
        }
        if (line_used)
            out += '\v';
        out += e.key + " = \"" + e.value + "\"";
        line_used = true;
    }
    return out;
}

bool same_entries(const conf::ConfFile& a, const conf::ConfFile& b) {
    return std::equal(a.entries.begin(), a.entries.end(), b.entries.begin(), b.entries.end(),
                      [](const conf::Entry& x, const conf::Entry& y) {
                          return x.key == y.key && x.value == y.value && x.line == y.line;
                      });
}

void fuzz_one(std::string_view text) {
    const std::string path(kPath);
    auto conf = conf::parse_conf(text, path);
    if (!conf) {
        check(conf.error().what.starts_with(path + ":"), "a syntax error without FILE:LINE");
        return;
    }
    check(conf->path == path, "path");
    check_entries(*conf);

    auto again = conf::parse_conf(render(*conf), path);
    check(again.has_value(), "the entries written back do not parse");
    check(same_entries(*conf, *again), "the entries written back parse to other entries");

    auto loaded = policy_from_conf(*conf);
    auto reloaded = policy_from_conf(*again);
    check(loaded.has_value() == reloaded.has_value(), "the same entries load differently");
    if (!loaded) {
        check(loaded.error().what.starts_with(path + ":"), "a config error without FILE:LINE");
        check(loaded.error().message() == reloaded.error().message(),
              "the same entries fail differently");
        return;
    }
    check(loaded->policy.source == path, "source");
    check_policy(loaded->policy);
    check(same_policy(loaded->policy, reloaded->policy), "the same entries load another policy");
    // The written-back file has no skipped lines: their warnings come last, one each.
    check(loaded->warnings.size() == reloaded->warnings.size() + conf->skipped.size(),
          "not one warning per skipped line");
    check(
        std::equal(reloaded->warnings.begin(), reloaded->warnings.end(), loaded->warnings.begin()),
        "the same entries warn differently");
    for (std::size_t i = 0; i < conf->skipped.size(); ++i) {
        const std::string& w = loaded->warnings[reloaded->warnings.size() + i];
        check(w.starts_with(path + ":" + std::to_string(conf->skipped[i].line) + ": "),
              "a skipped line's warning without FILE:LINE");
    }
}

}  // namespace
}  // namespace smtpfence::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    smtpfence::fuzz::fuzz_one(smtpfence::fuzz::as_text(std::span(data, size)));
    return 0;
}
