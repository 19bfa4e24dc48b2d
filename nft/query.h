// Reading nf_tables objects: one request, its replies parsed, as the Engine's reads
// need them. Internal to nft/ (engine.cpp and engine_dest.cpp).
#pragma once

#include <libnftnl/set.h>
#include <linux/netlink.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "common/error.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace smtpfence::nft {

// Sends one request and feeds every reply message to on_message until the kernel
// says DONE (dumps) or ACKs (single gets). Errors carry the kernel's errno.
[[nodiscard]] Result<void> query(Transport& transport, std::uint16_t type, std::uint16_t flags,
                                 const std::function<void(nlmsghdr*)>& build_payload,
                                 const std::function<void(const nlmsghdr*)>& on_message,
                                 const std::string& what);

// Family inet, table and name of a set object.
void set_identity(nftnl_set* s, const std::string& table, const std::string& set);

// Reads every element of table/set, handing each to on_elem.
[[nodiscard]] Result<void> dump_elements(Transport& transport, const std::string& table,
                                         const std::string& set,
                                         const std::function<void(nftnl_set_elem*)>& on_elem);

// A 4-byte key (uid, gid) in host order; nullopt for a key of another length.
[[nodiscard]] std::optional<std::uint32_t> elem_u32(nftnl_set_elem* e);

// The element's counter (cloned by the kernel from its set's); zero without one.
[[nodiscard]] PacketCount elem_counter(nftnl_set_elem* e);

}  // namespace smtpfence::nft
