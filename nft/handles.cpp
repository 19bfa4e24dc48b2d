#include "nft/handles.h"

#include <new>

namespace smtpfence::nft {
namespace {

template <class Ptr, class Raw>
Ptr checked(Raw* raw) {
    if (raw == nullptr)
        throw std::bad_alloc();
    return Ptr(raw);
}

}  // namespace

TablePtr make_table() {
    return checked<TablePtr>(nftnl_table_alloc());
}
ChainPtr make_chain() {
    return checked<ChainPtr>(nftnl_chain_alloc());
}
RulePtr make_rule() {
    return checked<RulePtr>(nftnl_rule_alloc());
}
ExprPtr make_expr(const char* name) {
    return checked<ExprPtr>(nftnl_expr_alloc(name));
}
SetPtr make_set() {
    return checked<SetPtr>(nftnl_set_alloc());
}
SetElemPtr make_set_elem() {
    return checked<SetElemPtr>(nftnl_set_elem_alloc());
}

}  // namespace smtpfence::nft
