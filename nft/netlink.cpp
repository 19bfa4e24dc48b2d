#include "nft/netlink.h"

#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <ctime>

namespace smtpfence::nft {

Result<NetlinkSocket> NetlinkSocket::open() {
    MnlSocketPtr sock(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
    if (!sock)
        return fail(errno, "open netlink socket (NETLINK_NETFILTER)");
    if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
        return fail(errno, "bind netlink socket");
    }
    int on = 1;
    // Both are best effort: kernels without them still work, with poorer messages.
    (void)mnl_socket_setsockopt(sock.get(), NETLINK_EXT_ACK, &on, sizeof on);
    (void)mnl_socket_setsockopt(sock.get(), NETLINK_CAP_ACK, &on, sizeof on);
    // A batch of N messages earns N ACKs; 1 MiB holds ~20,000 of them, far more
    // than our largest transaction, so ACKs are never dropped (ENOBUFS).
    const int rcvbuf = 1 << 20;
    if (setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf,
                   sizeof rcvbuf) != 0) {
        (void)setsockopt(mnl_socket_get_fd(sock.get()), SOL_SOCKET, SO_RCVBUF, &rcvbuf,
                         sizeof rcvbuf);
    }
    return NetlinkSocket(std::move(sock), static_cast<std::uint32_t>(std::time(nullptr)));
}

Result<void> NetlinkSocket::send(std::span<const std::byte> bytes) {
    if (auto r = reserve_send(bytes.size()); !r)
        return r;
    const ssize_t n = mnl_socket_sendto(sock_.get(), bytes.data(), bytes.size());
    if (n < 0)
        return fail(errno, "send netlink batch of " + std::to_string(bytes.size()) + " bytes");
    return {};
}

Result<void> NetlinkSocket::reserve_send(std::size_t bytes) {
    // netlink_sendmsg refuses a datagram larger than sk_sndbuf - 32 with EMSGSIZE.
    const std::size_t want = bytes + 4096;
    if (want <= sndbuf_)
        return {};
    const int size = static_cast<int>(std::max<std::size_t>(want, std::size_t{256} * 1024));
    const int fd = mnl_socket_get_fd(sock_.get());
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0 &&
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size) != 0) {
        return fail(errno, "grow netlink send buffer to " + std::to_string(size) + " bytes");
    }
    sndbuf_ = static_cast<std::size_t>(size);
    return {};
}

Result<std::size_t> NetlinkSocket::receive(std::span<std::byte> buf, int timeout_ms) {
    pollfd pfd{mnl_socket_get_fd(sock_.get()), POLLIN, 0};
    while (true) {
        const int ready = ::poll(&pfd, 1, timeout_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return fail(errno, "poll netlink socket");
        }
        if (ready == 0)
            return fail(ETIMEDOUT, "wait for the kernel's netlink reply");
        const ssize_t n = mnl_socket_recvfrom(sock_.get(), buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(errno, "receive netlink reply");
        }
        return static_cast<std::size_t>(n);
    }
}

std::uint32_t NetlinkSocket::portid() const {
    return mnl_socket_get_portid(sock_.get());
}

int NetlinkSocket::fd() const {
    return mnl_socket_get_fd(sock_.get());
}

}  // namespace smtpfence::nft
