#include "nfq/queue.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>

#include "nfq/proc_queue.h"

namespace smtpfence::nfq {
PendingVerdict::~PendingVerdict() {
    if (queue_ != nullptr)
        queue_->add_verdict(id_);
}

Result<Queue> Queue::open(std::uint16_t queue_num, std::uint32_t initial_length) {
    MnlSocketPtr sock(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!sock)
        return fail(errno, "open NFQUEUE netlink socket");
    if (mnl_socket_bind(sock.get(), 0, MNL_SOCKET_AUTOPID) < 0)
        return fail(errno, "bind NFQUEUE socket");
    const int fd = mnl_socket_get_fd(sock.get());
    const int rcvbuf = kReceiveBufferBytes;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) {
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    }
    // Our netlink messages are small; NETLINK_NO_ENOBUFS stays off on purpose: an
    // overflow must be reported to us (and counted), not hidden.
    Queue queue(std::move(sock), queue_num);

    // The bind and the configuration in one message, which the kernel applies in one
    // call: the copy mode, then the flags. A queue instance starts in copy mode NONE,
    // and the kernel drops (not bypasses) a SYN sent to such a queue: bound by one
    // message and configured by the next, every SYN in between was lost, counted, and
    // retransmitted a second later. The length is left at the kernel's default (1024)
    // here and set after the ACK: set in the same call, a length of 0 would be in force
    // a moment before FAIL_OPEN, and a SYN meeting that full queue would be dropped too.
    const std::string what = "bind NFQUEUE " + std::to_string(queue_num);
    std::array<char, 512> buf{};
    nlmsghdr* nlh = nfq_nlmsg_put(buf.data(), NFQNL_MSG_CONFIG, queue_num);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, static_cast<int>(kCopyBytes));
    const std::uint32_t flags = NFQA_CFG_F_UID_GID | NFQA_CFG_F_FAIL_OPEN;
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(flags));
    if (auto r = queue.configure(nlh); !r) {
        Error e = r.error().wrap(what);
        if (e.code == EPERM) {
            e.detail =
                "another process holds it (a second smtpfenced or worker?), or "
                "CAP_NET_ADMIN is missing";
        }
        return std::unexpected(std::move(e));
    }
    // Length 0 (the daemon, until a worker is ready): what was queued since the ACK is
    // accepted at once, as nobody reads this socket yet.
    auto sized = initial_length == 0 ? queue.release_waiting() : queue.set_length(initial_length);
    if (!sized)
        return std::unexpected(sized.error().wrap(what));
    return queue;
}

Result<void> Queue::configure(nlmsghdr* nlh) {
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = kConfigSeq;
    if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0)
        return fail(errno, "send the configuration");
    // The kernel handles a config message inside our sendto and queues its ACK before
    // returning, so it is in the (non-blocking) socket now. A SYN queued between the
    // configuration taking effect and the ACK is in front of it: it is accepted here,
    // as nothing else will read it (the kernel counted it; the reconciler records it).
    const std::uint32_t portid = mnl_socket_get_portid(sock_.get());
    bool overflowed = false;
    while (true) {
        const ssize_t n = ::recv(fd(), buf_.data(), buf_.size(), MSG_DONTWAIT);
        const int error = errno;
        if (n < 0 && error == EINTR)
            continue;
        if (n < 0 && error == ENOBUFS) {
            ++counters_.enobufs;
            overflowed = true;
            continue;
        }
        if (n < 0) {
            flush_verdicts();  // what was seen before the failure waits for nobody
            if (error != EAGAIN)
                return fail(error, "read the acknowledgement");
            return fail(
                EPROTO, "read the acknowledgement",
                overflowed ? "lost: the socket's buffer overflowed" : "the kernel sent none");
        }
        const nlmsghdr* ack = nullptr;
        auto remaining = static_cast<int>(n);
        for (const auto* m = reinterpret_cast<const nlmsghdr*>(buf_.data());
             mnl_nlmsg_ok(m, remaining); m = mnl_nlmsg_next(m, &remaining)) {
            if (m->nlmsg_type == NLMSG_ERROR && m->nlmsg_seq == kConfigSeq &&
                m->nlmsg_pid == portid) {
                ack = m;
            }
        }
        // Packet messages get their verdict like any received ones (nothing to explain).
        (void)dispatch(
            static_cast<std::size_t>(n), [](void*, const QueuedPacket&, PendingVerdict&) {},
            nullptr);
        if (ack == nullptr)
            continue;
        flush_verdicts();  // the SYNs in front of the ACK
        if (ack->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr)))
            return fail(EPROTO, "read the acknowledgement", "truncated");
        const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(ack));
        if (err->error != 0)
            return fail(-err->error, "the kernel refused the configuration");
        return {};
    }
}

Result<Queue> Queue::adopt(int fd, std::uint16_t queue_num) {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return fail(EBADF, "NFQUEUE socket descriptor " + std::to_string(fd), "not an open socket");
    MnlSocketPtr sock(mnl_socket_fdopen(fd));
    if (!sock)
        return fail(errno, "NFQUEUE socket descriptor " + std::to_string(fd));
    // Inherited across exec: keep it from our own children, and never block on it.
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    const int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        (void)fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    return Queue(std::move(sock), queue_num);
}

Result<void> Queue::set_length(std::uint32_t length) {
    std::array<char, 256> buf{};
    nlmsghdr* nlh = nfq_nlmsg_put(buf.data(), NFQNL_MSG_CONFIG, queue_num_);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, length);
    // Sent without waiting for the ACK: the socket is non-blocking and shared with
    // queued packets; the ACK is read (and ignored) with them.
    if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) {
        return fail(errno, "set NFQUEUE " + std::to_string(queue_num_) + " length to " +
                               std::to_string(length));
    }
    return {};
}

Result<void> Queue::stop_accepting() {
    return set_length(0);
}

Result<void> Queue::start_accepting() {
    return set_length(kMaxQueueLength);
}

Result<void> Queue::release_waiting() {
    if (auto r = stop_accepting(); !r)
        return r;
    // Read only now: the kernel handled the new length inside our sendto, so no SYN is
    // queued (or given an id) after this reading. Read before, a SYN queued in between
    // would wait for the next worker's first verdict, past its client's retransmission.
    const auto stats = read_queue_proc_stats(queue_num_);
    if (!stats)
        return fail(ENOENT, "NFQUEUE " + std::to_string(queue_num_), "not bound");
    // The messages the dead worker did not read describe packets we are about to
    // accept in one batch: drop them unread.
    while (true) {
        const ssize_t n = ::recv(fd(), buf_.data(), buf_.size(), MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EINTR || errno == ENOBUFS)))
            continue;
        break;
    }
    have_pending_ = true;
    max_pending_id_ = stats->id_sequence;
    flush_verdicts();
    return {};
}

int Queue::fd() const {
    return mnl_socket_get_fd(sock_.get());
}

Result<std::size_t> Queue::receive_raw() {
    while (true) {
        const ssize_t n = mnl_socket_recvfrom(sock_.get(), buf_.data(), buf_.size());
        if (n >= 0)
            return static_cast<std::size_t>(n);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return std::size_t{0};
        if (errno == ENOBUFS) {
            // The kernel could not queue a message to us and (FAIL_OPEN) let those
            // SYNs pass to the enforce chain, which refused and counted them. Count it
            // and go on: the reconciler turns them into counted-only records.
            ++counters_.enobufs;
            continue;
        }
        return fail(errno, "receive from NFQUEUE " + std::to_string(queue_num_));
    }
}

std::size_t Queue::dispatch(std::size_t len,
                            void (*fn)(void*, const QueuedPacket&, PendingVerdict&), void* ctx) {
    std::size_t count = 0;
    auto remaining = static_cast<int>(len);
    const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf_.data());
    for (; mnl_nlmsg_ok(nlh, remaining); nlh = mnl_nlmsg_next(nlh, &remaining)) {
        if (NFNL_MSG_TYPE(nlh->nlmsg_type) != NFQNL_MSG_PACKET)
            continue;
        std::array<nlattr*, NFQA_MAX + 1> attr{};
        if (nfq_nlmsg_parse(nlh, attr.data()) < 0 || attr[NFQA_PACKET_HDR] == nullptr) {
            // Without a packet id we cannot answer it; with FAIL_OPEN off that would
            // stall it, but the kernel never sends a packet message without one.
            ++counters_.malformed;
            continue;
        }
        const auto* ph =
            static_cast<const nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attr[NFQA_PACKET_HDR]));
        QueuedPacket p;
        p.id = ntohl(ph->packet_id);
        PendingVerdict verdict(*this, p.id);
        ++count;
        ++counters_.packets;
        if (attr[NFQA_UID] != nullptr && attr[NFQA_GID] != nullptr) {
            p.has_uid = true;
            p.uid = ntohl(mnl_attr_get_u32(attr[NFQA_UID]));
            p.gid = ntohl(mnl_attr_get_u32(attr[NFQA_GID]));
        }
        if (attr[NFQA_PAYLOAD] != nullptr) {
            p.payload = std::span(
                static_cast<const std::uint8_t*>(mnl_attr_get_payload(attr[NFQA_PAYLOAD])),
                mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]));
        }
        fn(ctx, p, verdict);
    }
    return count;
}

void Queue::add_verdict(std::uint32_t id) {
    if (!have_pending_ || id > max_pending_id_)
        max_pending_id_ = id;
    have_pending_ = true;
}

void Queue::flush_verdicts() {
    if (!have_pending_)
        return;
    std::array<char, 256> buf{};
    nlmsghdr* nlh = nfq_nlmsg_put(buf.data(), NFQNL_MSG_VERDICT_BATCH, queue_num_);
    nfq_nlmsg_verdict_put(nlh, static_cast<int>(max_pending_id_), NF_ACCEPT);
    if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) {
        // A queue has no timeout: unanswered packets wait. Retry once; a persistent
        // failure shows in the counters, and when our socket closes the kernel drops
        // what waits (the client retransmits the SYN, which is then refused).
        ++counters_.verdict_errors;
        if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0)
            return;
    }
    ++counters_.verdict_batches;
    have_pending_ = false;
}

}  // namespace smtpfence::nfq
