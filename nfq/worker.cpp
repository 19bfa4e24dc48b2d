#include "nfq/worker.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <deque>
#include <optional>

#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/privileges.h"
#include "nfq/attempt_log.h"
#include "nfq/da_sink.h"
#include "nfq/packet.h"
#include "nfq/proc_queue.h"
#include "nfq/process.h"
#include "nft/engine.h"
#include "nft/netlink.h"
#include "policy/policy.h"

namespace smtpfence::nfq {
namespace {

// A log line must not carry a user's control characters into the journal or a
// terminal: every byte outside printable ASCII is shown as \xNN.
std::string printable(const std::string& s) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f && c != '\\') {
            out.push_back(c);
        } else {
            out += "\\x";
            out.push_back(kHex[u >> 4U]);
            out.push_back(kHex[u & 0xfU]);
        }
    }
    return out;
}

// One log line per attempt for the journal, at most kRate lines a second with a
// burst of kBurst; what is held back is said in one line afterwards.
class SyslogSink final : public AttemptSink {
  public:
    void explained(const Attempt& a) override {
        std::string line = "direct SMTP attempt refused: uid " + std::to_string(a.uid) + " (" +
                           printable(a.user.empty() ? "no account" : a.user) + ", account " +
                           printable(a.account) + ") to " + printable(a.dst) + " port " +
                           std::to_string(a.dport);
        if (a.identified) {
            line += " by pid " + std::to_string(a.pid) + " " + printable(a.exe) + " in " +
                    printable(a.cwd) + ": " + printable(a.cmdline.substr(0, 200));
        } else {
            line += " (process already gone)";
        }
        emit(line);
    }
    void counted_only(const CountedOnly& c) override {
        emit(std::to_string(c.count) + " more direct SMTP attempt(s) refused for uid " +
             std::to_string(c.uid) + " (" + printable(c.user) + "), counted, not explained");
    }
    void checkpoint(const Checkpoint&) override {}

  private:
    static constexpr double kRate = 10.0;
    static constexpr double kBurst = 20.0;
    void emit(const std::string& line) {
        const auto now = std::chrono::steady_clock::now();
        tokens_ =
            std::min(kBurst, tokens_ + kRate * std::chrono::duration<double>(now - last_).count());
        last_ = now;
        if (tokens_ < 1.0) {
            ++suppressed_;
            return;
        }
        tokens_ -= 1.0;
        if (suppressed_ > 0) {
            log::notice(std::to_string(suppressed_) +
                        " attempt log line(s) suppressed (rate limit)");
            suppressed_ = 0;
        }
        log::notice(line);
    }
    double tokens_ = kBurst;
    std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
    std::uint64_t suppressed_ = 0;
};

// The last packet id the kernel gave out on queue_num (nfq/proc_queue.h).
std::optional<std::uint32_t> queue_id_sequence(std::uint16_t queue_num) {
    const auto stats = read_queue_proc_stats(queue_num);
    if (!stats)
        return std::nullopt;
    return stats->id_sequence;
}

std::int64_t mtime_of(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec : 0;
}

class Worker {
  public:
    // Everything slow (reading the log back, the accounts) happens here, before the
    // caller binds the queue: once bound, SYNs wait for us, and one that waits a second
    // is retransmitted by its client (and counted again). So the worker does not own
    // the queue; the caller binds it afterwards and hands it to drain and reconcile.
    Worker(WorkerOptions options, nft::NetlinkSocket nl, AttemptLog log)
        : options_(std::move(options)), nl_(std::move(nl)), engine_(nl_), log_(std::move(log)) {
        sinks_ = {&log_, &syslog_};
        const LogRecovery recovered = AttemptLog::recover(options_.state_dir);
        if (recovered.checkpoint) {
            set_handle_ = recovered.checkpoint->set_handle;
            baseline_ = recovered.checkpoint->kernel;
        }
        explained_since_ = recovered.explained_since;
        reload_accounts();
        if (options_.da_enabled)
            open_da_sink();
    }

    // Handles every packet waiting in our socket.
    [[nodiscard]] Result<void> drain(Queue& queue) {
        while (true) {
            auto n = queue.receive([&](const QueuedPacket& p, PendingVerdict&) { on_packet(p); });
            if (!n)
                return std::unexpected(n.error());
            if (*n == 0)
                return {};
        }
    }

    void on_packet(const QueuedPacket& p) {
        // A SYN queued before the last reconciled id is in that round's counted-only
        // records already; explaining it now would count it twice.
        if (reconciled_through_ != 0 && p.id <= reconciled_through_)
            return;
        if (!p.has_uid)
            return;  // no owning socket: nothing to explain
        const auto flow = parse_tcp_packet(p.payload);
        if (!flow || !flow->syn)
            return;
        Attempt a;
        a.time = std::time(nullptr);
        a.uid = p.uid;
        a.gid = p.gid;
        if (const Account* acc = accounts_.user_by_uid(p.uid))
            a.user = acc->name;
        a.family = flow->family == AF_INET6 ? "ipv6" : "ipv4";
        a.src = flow->src_text();
        a.dst = flow->dst_text();
        a.sport = flow->sport;
        a.dport = flow->dport;
        // The SYN waits in the queue, so connect() has not returned and the socket
        // and its process are still there to be found. A failed lookup leaves the
        // attempt unidentified, as when the process is already gone.
        if (const auto sock = find_socket(*flow).value_or(std::nullopt)) {
            if (auto proc = find_process(sock->inode, p.uid)) {
                unsigned& told = told_per_pid_[proc->pid];
                if (told >= options_.explain_per_process)
                    return;  // counted-only later
                ++told;
                a.identified = true;
                a.pid = proc->pid;
                a.exe = proc->exe;
                a.cwd = proc->cwd;
                a.cmdline = proc->cmdline;
            }
        }
        a.account = attribute_account(a.uid, a.cwd, accounts_, options_.web_users);
        explained_pending_.emplace_back(p.id, a.uid);
        ++stats_.explained;
        if (!a.identified)
            ++stats_.unidentified;
        // Queued after the counters being reconciled were read: its record must come
        // after that round's checkpoint, which does not hold it (see reconcile()).
        if (holding_after_.has_value() && p.id > *holding_after_) {
            held_.push_back(std::move(a));
            return;
        }
        write_explained(a);
    }

    void write_explained(const Attempt& a) {
        for (AttemptSink* sink : sinks_)
            sink->explained(a);
    }

    // Turns the kernel's per-uid counters into records: what the kernel counted beyond
    // what we explained since the last checkpoint is recorded as counted-only.
    //
    // The kernel counts a SYN (observe rule) just before it queues it, and gives it the
    // queue's next packet id. So the counters read between two identical readings S
    // of the queue's id sequence hold exactly the SYNs queued with ids <= S (all of
    // them already in our socket, or lost to an overflow), plus those never queued.
    // Attempts we explain with an id > S belong to the next round.
    void reconcile(Queue& queue) {
        ++stats_.reconciles;
        if (da_sink_)
            da_sink_->settle();  // crossings waiting for a concurrent Exim's own notice
        if (told_per_pid_.size() > 65536)
            told_per_pid_.clear();  // bounded memory
        if (mtime_of(options_.passwd_path) != passwd_mtime_ ||
            mtime_of(options_.group_path) != group_mtime_) {
            reload_accounts();
        }
        std::optional<std::uint32_t> seq_before;
        std::optional<std::uint32_t> seq_after;
        // Only the counter dump sits between the two readings, to keep the window in
        // which a queued SYN makes us retry short.
        const Result<nft::TableInventory> inv = engine_.inventory(options_.table);
        Result<std::map<std::uint32_t, nft::PacketCount>> counts;
        for (int attempt = 0; attempt < 20; ++attempt) {
            seq_before = queue_id_sequence(options_.queue_num);
            counts = engine_.read_blocked(options_.table);
            seq_after = queue_id_sequence(options_.queue_num);
            if (seq_before && seq_before == seq_after)
                break;
        }
        if (!seq_before || seq_before != seq_after) {
            ++stats_.reconcile_retries;
            return;  // a flood is queueing right now: try again next round
        }
        if (!inv) {
            log::warning("reconcile: " + inv.error().message());
            return;
        }
        const nft::TableInventory::SetInfo* blocked = inv->set(nft::kSetBlocked);
        if (blocked == nullptr)
            return;  // table not there (being restored): try again later
        if (!counts) {
            log::warning("reconcile: " + counts.error().message());
            return;
        }
        if (blocked->handle != set_handle_) {
            // A new blocked set (the table was deleted and re-created): its counters
            // start from zero; what the old set counted since our last checkpoint is
            // gone with it.
            if (set_handle_ != 0) {
                ++stats_.counter_resets;
                log::warning("the blocked set was re-created (handle " +
                             std::to_string(set_handle_) + " -> " +
                             std::to_string(blocked->handle) +
                             "): counting restarts from its counters");
            }
            set_handle_ = blocked->handle;
            baseline_.clear();
        }
        // Every packet with an id <= the sequence is in our socket (or was lost to an
        // overflow, and is counted-only): explain what is waiting, then take the
        // explained attempts up to that id. A SYN queued since (id > S) may be drained
        // too: its record is held back until this round's checkpoint is written, as a
        // worker starting after a kill takes the attempts after the last checkpoint as
        // not in its kernel totals; written before it, it would be counted twice.
        holding_after_ = seq_before;
        auto drained = drain(queue);
        holding_after_.reset();
        if (!drained)
            log::warning("reconcile: " + drained.error().message());
        while (!explained_pending_.empty() && explained_pending_.front().first <= *seq_before) {
            ++explained_since_[explained_pending_.front().second];
            explained_pending_.pop_front();
        }
        reconciled_through_ = *seq_before;
        bool changed = false;
        const std::time_t now = std::time(nullptr);
        for (const auto& [uid, count] : *counts) {
            std::uint64_t& base = baseline_[uid];
            if (count.packets == base)
                continue;
            // A counter never goes down within one set; if it does, trust the kernel.
            const std::uint64_t delta = count.packets > base ? count.packets - base : count.packets;
            const std::uint64_t seen = explained_since_[uid];
            if (delta > seen) {
                CountedOnly c;
                c.time = now;
                c.uid = uid;
                c.count = delta - seen;
                if (const Account* acc = accounts_.user_by_uid(uid))
                    c.user = acc->name;
                c.account = attribute_account(uid, "", accounts_, options_.web_users);
                for (AttemptSink* sink : sinks_)
                    sink->counted_only(c);
                stats_.counted_only += c.count;
            }
            base = count.packets;
            changed = true;
        }
        explained_since_.clear();
        if (changed) {
            Checkpoint cp;
            cp.time = now;
            cp.set_handle = set_handle_;
            cp.kernel = baseline_;
            for (AttemptSink* sink : sinks_)
                sink->checkpoint(cp);
        }
        for (const Attempt& a : held_)
            write_explained(a);
        held_.clear();
    }

    const WorkerStats& stats() const { return stats_; }

  private:
    // The DirectAdmin sink, when enabled. A failure to open it (no /etc/virtual any
    // more, say) is logged and the worker runs on without it: the kernel and the attempt
    // log still count everything.
    void open_da_sink() {
        Policy p;
        p.da_attempt_weight = options_.da_attempt_weight;
        p.da_block_cracking = options_.da_block_cracking;
        DaSinkConfig config = da_sink_config(p, options_.virtual_dir, accounts_);
        config.blocked_script_paths = options_.blocked_script_paths;
        auto sink = DaSink::open(std::move(config));
        if (!sink) {
            log::error("DirectAdmin pipeline: " + sink.error().message() +
                       "; attempts are not recorded in " + options_.virtual_dir);
            return;
        }
        da_sink_ = std::move(*sink);
        sinks_.push_back(da_sink_.get());
        log::notice("DirectAdmin pipeline: attempts are counted in " + options_.virtual_dir +
                    "/usage (weight " + std::to_string(options_.da_attempt_weight) + ")");
    }

    void reload_accounts() {
        passwd_mtime_ = mtime_of(options_.passwd_path);
        group_mtime_ = mtime_of(options_.group_path);
        auto db = AccountDb::load(options_.passwd_path, options_.group_path);
        if (!db) {
            log::warning("accounts: " + db.error().message() + " (keeping the previous ones)");
            return;
        }
        accounts_ = std::move(*db);
    }

    WorkerOptions options_;
    nft::NetlinkSocket nl_;
    nft::Engine engine_;
    AttemptLog log_;
    SyslogSink syslog_;
    std::unique_ptr<DaSink> da_sink_;
    std::vector<AttemptSink*> sinks_;
    AccountDb accounts_;
    std::int64_t passwd_mtime_ = 0;
    std::int64_t group_mtime_ = 0;
    std::uint64_t set_handle_ = 0;
    std::map<std::uint32_t, std::uint64_t> baseline_;
    std::map<std::uint32_t, std::uint64_t> explained_since_;
    std::deque<std::pair<std::uint32_t, std::uint32_t>> explained_pending_;  // (packet id, uid)
    std::uint32_t reconciled_through_ = 0;        // queue packet ids up to this are accounted for
    std::optional<std::uint32_t> holding_after_;  // during reconcile(): its S
    std::vector<Attempt> held_;  // explained with an id > S, written after the checkpoint
    std::map<pid_t, unsigned> told_per_pid_;
    WorkerStats stats_;
};

}  // namespace

int run_worker(const WorkerOptions& options) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (const int err = pthread_sigmask(SIG_BLOCK, &mask, nullptr); err != 0) {
        log::error("block signals: " + errno_text(err));
        return 1;
    }
    UniqueFd sigfd(signalfd(-1, &mask, SFD_CLOEXEC));
    UniqueFd timer(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!sigfd.valid() || !timer.valid()) {
        log::error("signalfd/timerfd: " + errno_text(errno));
        return 1;
    }
    itimerspec period{};
    period.it_interval.tv_sec = options.reconcile_ms / 1000;
    period.it_interval.tv_nsec = static_cast<long>(options.reconcile_ms % 1000) * 1000000L;
    period.it_value = period.it_interval;
    if (timerfd_settime(timer.get(), 0, &period, nullptr) != 0) {
        log::error("timerfd_settime: " + errno_text(errno));
        return 1;
    }
    auto nl = nft::NetlinkSocket::open();
    if (!nl) {
        log::error(nl.error().message());
        return 1;
    }
    auto attempt_log = AttemptLog::open(options.state_dir);
    if (!attempt_log) {
        log::error(attempt_log.error().message());
        return 1;
    }
    Worker worker(options, std::move(*nl), std::move(*attempt_log));
    // The daemon's socket when it passed one (it stays bound while we restart), else
    // our own.
    auto opened = options.queue_fd >= 0 ? Queue::adopt(options.queue_fd, options.queue_num)
                                        : Queue::open(options.queue_num);
    if (!opened) {
        log::error(opened.error().message());
        return 1;
    }
    Queue& queue = *opened;
    // Least privilege (common/privileges.h): every socket is open and the queue bound.
    // From here on the worker sends verdicts and reads counters (nfnetlink), reads other
    // users' /proc/PID and, with the DirectAdmin pipeline, writes mail's files; it
    // executes nothing, so nothing may ever raise its privileges again. Before the
    // queue takes SYNs: a worker that cannot drop leaves it fail-open.
    const CapabilitySet keep = worker_capabilities(options.da_enabled);
    if (auto r = forbid_new_privileges(); !r) {
        log::error(r.error().message());
        return 1;
    }
    if (auto r = drop_to(keep, keep); !r) {
        log::error(r.error().message());
        return 1;
    }
    log::info("capabilities: " + keep.to_string());
    if (options.queue_fd >= 0) {
        // The daemon keeps the queue at length 0 (fail-open) while no worker is ready.
        if (auto r = queue.start_accepting(); !r) {
            log::error(r.error().message());
            return 1;
        }
    }
    log::notice("worker " + std::string(options.queue_fd >= 0 ? "reading" : "bound to") +
                " NFQUEUE " + std::to_string(options.queue_num) + ", attempt log " +
                options.state_dir + "/attempts.jsonl");
    // Ready: SYNs queue for us from now on. The daemon's status (and the tests) read
    // this; the queue being bound says nothing, as the daemon holds it while we start.
    const std::string ready_path = ready_file_path(options.state_dir);
    if (auto r = write_file_atomic(ready_path, std::to_string(::getpid()) + "\n", 0644); !r)
        log::warning(r.error().message());
    worker.reconcile(queue);  // records what was counted while no worker ran

    std::array<pollfd, 3> fds{pollfd{queue.fd(), POLLIN, 0}, pollfd{timer.get(), POLLIN, 0},
                              pollfd{sigfd.get(), POLLIN, 0}};
    while (true) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            log::error("poll: " + errno_text(errno));
            return 1;
        }
        if ((fds[0].revents & POLLIN) != 0) {
            // Drain what is waiting, but yield to the timer and signals now and then.
            for (int i = 0; i < 64; ++i) {
                auto n = queue.receive(
                    [&](const QueuedPacket& p, PendingVerdict&) { worker.on_packet(p); });
                if (!n) {
                    log::error(n.error().message());
                    return 1;
                }
                if (*n == 0)
                    break;
            }
        }
        if ((fds[1].revents & POLLIN) != 0) {
            std::uint64_t expirations = 0;
            (void)!::read(timer.get(), &expirations, sizeof expirations);
            worker.reconcile(queue);
        }
        if ((fds[2].revents & POLLIN) != 0) {
            signalfd_siginfo info{};
            if (::read(sigfd.get(), &info, sizeof info) == sizeof info &&
                info.ssi_signo != SIGHUP) {
                if (auto r = queue.stop_accepting(); !r)
                    log::warning(r.error().message());
                worker.reconcile(queue);  // drains what waits, then reconciles
                const WorkerStats& s = worker.stats();
                const QueueCounters& q = queue.counters();
                log::notice("worker exiting: " + std::to_string(s.explained) + " explained (" +
                            std::to_string(s.unidentified) + " unidentified), " +
                            std::to_string(s.counted_only) + " counted only, " +
                            std::to_string(q.enobufs) + " ENOBUFS");
                (void)::unlink(ready_path.c_str());
                return 0;
            }
        }
    }
}

}  // namespace smtpfence::nfq
