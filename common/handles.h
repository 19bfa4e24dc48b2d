// One owning type per C handle: the deleter they all use, and the owners of handles
// that more than one folder opens (nft/ and nfq/ both talk netlink through libmnl).
// The owners of libnftnl's objects are in nft/handles.h, built on the same deleter.
#pragma once

#include <dirent.h>
#include <libmnl/libmnl.h>

#include <memory>

namespace smtpfence {

// std::unique_ptr's deleter for a C library's free function: CDeleter<nftnl_rule_free>.
template <auto Free>
struct CDeleter {
    template <class T>
    void operator()(T* p) const noexcept {
        if (p != nullptr)
            Free(p);
    }
};

using MnlSocketPtr = std::unique_ptr<mnl_socket, CDeleter<mnl_socket_close>>;
using DirPtr = std::unique_ptr<DIR, CDeleter<closedir>>;

}  // namespace smtpfence
