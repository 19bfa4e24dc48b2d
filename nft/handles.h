// One owning type per libnftnl handle (the libmnl socket's is in common/handles.h).
// Ownership is handed to the C library only where it takes it (nftnl_rule_add_expr,
// nftnl_set_elem_add), with release() at the call site and a comment saying so.
#pragma once

#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>

#include <cstdio>  // libnftnl headers use FILE without including it
#include <memory>

#include "common/handles.h"

namespace smtpfence::nft {

using TablePtr = std::unique_ptr<nftnl_table, CDeleter<nftnl_table_free>>;
using ChainPtr = std::unique_ptr<nftnl_chain, CDeleter<nftnl_chain_free>>;
using RulePtr = std::unique_ptr<nftnl_rule, CDeleter<nftnl_rule_free>>;
using ExprPtr = std::unique_ptr<nftnl_expr, CDeleter<nftnl_expr_free>>;
using SetPtr = std::unique_ptr<nftnl_set, CDeleter<nftnl_set_free>>;
using SetElemPtr = std::unique_ptr<nftnl_set_elem, CDeleter<nftnl_set_elem_free>>;
using SetListPtr = std::unique_ptr<nftnl_set_list, CDeleter<nftnl_set_list_free>>;
using UdataBufPtr = std::unique_ptr<nftnl_udata_buf, CDeleter<nftnl_udata_buf_free>>;

// Allocators that never return a half-built object: allocation failure is fatal
// (std::bad_alloc), as it is for every other allocation in the program.
[[nodiscard]] TablePtr make_table();
[[nodiscard]] ChainPtr make_chain();
[[nodiscard]] RulePtr make_rule();
[[nodiscard]] ExprPtr make_expr(const char* name);
[[nodiscard]] SetPtr make_set();
[[nodiscard]] SetElemPtr make_set_elem();

}  // namespace smtpfence::nft
