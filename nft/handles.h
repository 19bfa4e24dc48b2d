// One owning type per libnftnl / libmnl handle. Ownership is handed to the C library
// only where it takes it (nftnl_rule_add_expr, nftnl_set_elem_add), with release()
// at the call site and a comment saying so.
#pragma once

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>

#include <cstdio>  // libnftnl headers use FILE without including it
#include <memory>

namespace smtpfence::nft {

template <auto Free>
struct Deleter {
    template <class T>
    void operator()(T* p) const noexcept {
        if (p != nullptr)
            Free(p);
    }
};

using TablePtr = std::unique_ptr<nftnl_table, Deleter<nftnl_table_free>>;
using ChainPtr = std::unique_ptr<nftnl_chain, Deleter<nftnl_chain_free>>;
using RulePtr = std::unique_ptr<nftnl_rule, Deleter<nftnl_rule_free>>;
using ExprPtr = std::unique_ptr<nftnl_expr, Deleter<nftnl_expr_free>>;
using SetPtr = std::unique_ptr<nftnl_set, Deleter<nftnl_set_free>>;
using SetElemPtr = std::unique_ptr<nftnl_set_elem, Deleter<nftnl_set_elem_free>>;
using SetListPtr = std::unique_ptr<nftnl_set_list, Deleter<nftnl_set_list_free>>;
using MnlSocketPtr = std::unique_ptr<mnl_socket, Deleter<mnl_socket_close>>;

// Allocators that never return a half-built object: allocation failure is fatal
// (std::bad_alloc), as it is for every other allocation in the program.
[[nodiscard]] TablePtr make_table();
[[nodiscard]] ChainPtr make_chain();
[[nodiscard]] RulePtr make_rule();
[[nodiscard]] ExprPtr make_expr(const char* name);
[[nodiscard]] SetPtr make_set();
[[nodiscard]] SetElemPtr make_set_elem();

}  // namespace smtpfence::nft
