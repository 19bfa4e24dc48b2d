// Watching nf_tables' netlink events (the NFNLGRP_NFTABLES group, what `nft monitor`
// reads) for changes that anyone but us makes to our table: the daemon's signal to
// put its table back.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "nft/handles.h"

namespace smtpfence::nft {

// What someone else did to our table in one or more of their transactions.
struct ForeignChange {
    std::vector<std::string> what;  // "delete table", "delete rule in chain judge", ...
    std::string who;                // "pid 1234 (nft)", from the transaction's NEWGEN
    bool events_lost = false;       // the socket overflowed (ENOBUFS): what is unknown
};

// Reads event datagrams and keeps what concerns one table. Pure parsing (no socket),
// so the unit tests feed it the kernel's messages as bytes.
class EventFilter {
  public:
    EventFilter(std::string table, std::uint32_t our_portid)
        : table_(std::move(table)), our_portid_(our_portid) {}

    // Feeds one datagram (one or more nlmsghdr). Malformed messages are skipped.
    void feed(std::span<const std::byte> datagram);
    // The socket lost events: someone may have changed the table unseen.
    void lost_events();
    // Foreign changes whose transaction has ended (its NEWGEN came), if any.
    [[nodiscard]] std::optional<ForeignChange> take();

  private:
    void on_message(const struct nlmsghdr* nlh);
    std::string table_;
    std::uint32_t our_portid_;
    std::vector<std::string> open_;  // foreign changes of a transaction not yet ended
    std::optional<ForeignChange> done_;
};

class TableMonitor {
  public:
    // Subscribes to nf_tables events on a socket of its own, with a receive buffer big
    // enough for a full apply's events (SO_RCVBUFFORCE, CAP_NET_ADMIN).
    [[nodiscard]] static Result<TableMonitor> open(const std::string& table,
                                                   std::uint32_t our_portid);

    [[nodiscard]] int fd() const;
    // Reads every datagram waiting (never blocks) and returns what others changed.
    [[nodiscard]] Result<std::optional<ForeignChange>> read();

  private:
    TableMonitor(MnlSocketPtr sock, EventFilter filter)
        : sock_(std::move(sock)), filter_(std::move(filter)) {}
    MnlSocketPtr sock_;
    EventFilter filter_;
};

}  // namespace smtpfence::nft
