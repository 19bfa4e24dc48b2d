// The netlink seam: the engine talks to the kernel through Transport, so batch
// building, ACK handling and error mapping are unit tested with a fake transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/error.h"
#include "nft/handles.h"

namespace smtpfence::nft {

class Transport {
  public:
    virtual ~Transport() = default;
    // Sends one datagram (a whole batch, in one sendmsg: the kernel treats it as
    // one transaction only when it arrives in one piece).
    [[nodiscard]] virtual Result<void> send(std::span<const std::byte> bytes) = 0;
    // Receives one datagram into buf; ETIMEDOUT when nothing came in timeout_ms.
    [[nodiscard]] virtual Result<std::size_t> receive(std::span<std::byte> buf, int timeout_ms) = 0;
    [[nodiscard]] virtual std::uint32_t portid() const = 0;
    // Next sequence number; each message of a batch gets its own so ACKs map back.
    [[nodiscard]] virtual std::uint32_t next_seq() = 0;
    // Grows the socket's send buffer so that a batch of `bytes` fits in one datagram.
    [[nodiscard]] virtual Result<void> reserve_send(std::size_t bytes) = 0;
};

class NetlinkSocket final : public Transport {
  public:
    // Opens NETLINK_NETFILTER with extended ACKs (NETLINK_EXT_ACK: the kernel says
    // which attribute it refused) and capped ACKs (NETLINK_CAP_ACK: an error does not
    // echo our whole request back, which for a 10,000-element set would overflow the
    // receive buffer).
    [[nodiscard]] static Result<NetlinkSocket> open();

    Result<void> send(std::span<const std::byte> bytes) override;
    Result<std::size_t> receive(std::span<std::byte> buf, int timeout_ms) override;
    [[nodiscard]] std::uint32_t portid() const override;
    std::uint32_t next_seq() override { return seq_++; }
    Result<void> reserve_send(std::size_t bytes) override;

    [[nodiscard]] int fd() const;

  private:
    explicit NetlinkSocket(MnlSocketPtr sock, std::uint32_t first_seq)
        : sock_(std::move(sock)), seq_(first_seq) {}
    MnlSocketPtr sock_;
    std::uint32_t seq_;
    std::size_t sndbuf_ = 0;
};

// Receive buffer for one datagram: the kernel sends dump replies of up to 32 KiB
// (NLMSG_GOODSIZE is a page, but nf_tables dumps fill up to 16 KiB skbs); 64 KiB
// holds any single datagram it sends us.
inline constexpr std::size_t kReceiveBufferBytes = 65536;

}  // namespace smtpfence::nft
