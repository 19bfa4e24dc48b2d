// Text forms of a built Ruleset: nft's own listing syntax (for `apply --dry-run` and
// for comparison with `nft list table`) and libnftnl's bytecode notation (for golden
// tests that need no kernel).
#include <array>
#include <string>

#include "nft/ruleset.h"

namespace smtpfence::nft {
namespace {

// nft prints a few elements of a named set per line (five numbers, one concatenation),
// continuing lines with three tabs and five spaces (calculate_delim in
// src/expression.c); matching it lets tests compare our text with `nft list` byte for
// byte.
std::string join_elements(const std::vector<std::string>& elements, std::size_t per_line) {
    std::string out;
    for (std::size_t i = 0; i < elements.size(); ++i) {
        if (i > 0)
            out += i % per_line == 0 ? ",\n\t\t\t     " : ", ";
        out += elements[i];
    }
    return out;
}

}  // namespace

std::string render_nft(const Ruleset& ruleset) {
    std::string out = "table inet " + ruleset.table + " {\n";
    bool first = true;
    if (ruleset.owned) {
        // nft 1.0.6 (Debian 12) names the owner's program and knows no "persist" flag.
        out = "table inet " + ruleset.table + " { # progname smtpfenced\n\tflags owner\n";
        first = false;
    }
    auto block_start = [&] {
        if (!first)
            out += "\n";
        first = false;
    };
    for (const BuiltSet& set : ruleset.sets) {
        block_start();
        out += "\tset " + set.name + " {\n";
        for (const std::string& line : set.header)
            out += "\t\t" + line + "\n";
        if (!set.elements.empty()) {
            out +=
                "\t\telements = { " + join_elements(set.elements, set.elements_per_line) + " }\n";
        }
        out += "\t}\n";
    }
    for (const BuiltChain& chain : ruleset.chains) {
        block_start();
        out += "\tchain " + chain.name + " {\n";
        if (!chain.header.empty())
            out += "\t\t" + chain.header + "\n";
        for (const BuiltRule& rule : ruleset.rules) {
            if (rule.chain == chain.name)
                out += "\t\t" + rule.text + "\n";
        }
        out += "\t}\n";
    }
    out += "}\n";
    return out;
}

std::string render_bytecode(const Ruleset& ruleset) {
    std::string out;
    for (const BuiltRule& rule : ruleset.rules) {
        out += rule.chain + "\n";
        nftnl_expr_iter* it = nftnl_expr_iter_create(rule.rule.get());
        if (it == nullptr)
            throw std::bad_alloc();
        for (nftnl_expr* e = nftnl_expr_iter_next(it); e != nullptr; e = nftnl_expr_iter_next(it)) {
            std::array<char, 4096> buf{};
            nftnl_expr_snprintf(buf.data(), buf.size(), e, NFTNL_OUTPUT_DEFAULT, 0);
            out += "  [ " + std::string(nftnl_expr_get_str(e, NFTNL_EXPR_NAME)) + " " + buf.data() +
                   "]\n";
        }
        nftnl_expr_iter_destroy(it);
        out += "\n";
    }
    return out;
}

}  // namespace smtpfence::nft
