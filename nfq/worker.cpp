#include "nfq/worker.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <limits>
#include <optional>

#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/privileges.h"
#include "nfq/attempt_log.h"
#include "nfq/da_sink.h"
#include "nfq/history_store.h"
#include "nfq/packet.h"
#include "nfq/proc_queue.h"
#include "nfq/process.h"
#include "nfq/reconciler.h"
#include "nfq/sinks.h"
#include "nft/engine.h"
#include "nft/netlink.h"
#include "policy/policy.h"

namespace smtpfence::nfq {
namespace {

// The reconciler's readings from the kernel: the blocked set of our table (nftables) and
// the queue's id sequence (nfq/proc_queue.h).
class NftReadings final : public KernelReadings {
  public:
    NftReadings(nft::Engine& engine, const WorkerOptions& options)
        : engine_(engine), table_(options.table), queue_num_(options.queue_num) {}

    Result<std::optional<std::uint64_t>> blocked_set() override {
        const Result<nft::TableInventory> inv = engine_.inventory(table_);
        if (!inv)
            return std::unexpected(inv.error());
        const nft::TableInventory::SetInfo* blocked = inv->set(nft::kSetBlocked);
        if (blocked == nullptr)
            return std::optional<std::uint64_t>{};
        return blocked->handle;
    }
    Result<std::map<std::uint32_t, std::uint64_t>> counters() override {
        auto counts = engine_.read_blocked(table_);
        if (!counts)
            return std::unexpected(counts.error());
        std::map<std::uint32_t, std::uint64_t> packets;
        for (const auto& [uid, count] : *counts)
            packets.emplace_hint(packets.end(), uid, count.packets);
        return packets;
    }
    std::optional<std::uint32_t> queue_id_sequence() override {
        const auto stats = read_queue_proc_stats(queue_num_);
        if (!stats)
            return std::nullopt;
        return stats->id_sequence;
    }

  private:
    nft::Engine& engine_;
    std::string table_;
    std::uint16_t queue_num_;
};

std::int64_t mtime_of(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec : 0;
}

class Worker {
  public:
    // Everything slow (the history's recovery, the accounts) happens here, before the
    // caller binds the queue: once bound, SYNs wait for us, and one that waits a second
    // is retransmitted by its client (and counted again). So the worker does not own
    // the queue; the caller binds it afterwards and hands it to drain and reconcile.
    Worker(WorkerOptions options, nft::NetlinkSocket nl, HistoryStore history, AttemptLog stream,
           const LogRecovery& recovered)
        : options_(std::move(options)),
          nl_(std::move(nl)),
          engine_(nl_),
          readings_(engine_, options_),
          history_(std::move(history)),
          log_(std::move(stream)),
          reconciler_(
              readings_, sinks_, [this](CountedOnly& c) { describe(c); }, recovered) {
        sinks_.add(history_);
        sinks_.add(log_);
        sinks_.add(journal_);
        reload_accounts();
        if (options_.da_enabled)
            open_da_sink();
    }
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    // Handles the packets waiting in our socket: all of them, or what max_reads reads
    // return (so that a caller can yield to its timer and signals now and then).
    [[nodiscard]] Result<void> drain(Queue& queue,
                                     int max_reads = std::numeric_limits<int>::max()) {
        for (int i = 0; i < max_reads; ++i) {
            auto n = queue.receive([&](const QueuedPacket& p, PendingVerdict&) { on_packet(p); });
            if (!n)
                return std::unexpected(n.error());
            if (*n == 0)
                return {};
        }
        return {};
    }

    void on_packet(const QueuedPacket& p) {
        if (reconciler_.accounted_for(p.id))
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
        ++stats_.explained;
        if (!a.identified)
            ++stats_.unidentified;
        reconciler_.explained(p.id, std::move(a));
    }

    // One reconciler round (nfq/reconciler.h), after the upkeep that goes with it, and
    // its commit; an error when the history lost the batch (then the worker must go,
    // see HistoryStore::commit).
    [[nodiscard]] Result<void> reconcile(Queue& queue) {
        if (da_sink_)
            da_sink_->settle();  // crossings waiting for a concurrent Exim's own notice
        if (told_per_pid_.size() > 65536)
            told_per_pid_.clear();  // bounded memory
        if (mtime_of(options_.passwd_path) != passwd_mtime_ ||
            mtime_of(options_.group_path) != group_mtime_) {
            reload_accounts();
        }
        reconciler_.reconcile([&] { return drain(queue); });
        return history_.commit();
    }

    // Ends the history's open transaction: after every turn of the loop, so that a batch
    // of records is one commit (docs/history.md, "Writes").
    [[nodiscard]] Result<void> commit() { return history_.commit(); }

    // Retention in short steps (HistoryStore::prune_step) for at most kPruneBudget of
    // the loop's time at a tick: when due (hourly, or at once while more is left), or
    // whenever the history is over HISTORY_MAX_MB.
    void prune(std::time_t now) {
        if (now < next_prune_ && !history_.over_size())
            return;
        const auto start = std::chrono::steady_clock::now();
        while (std::chrono::steady_clock::now() - start < kPruneBudget) {
            auto more = history_.prune_step(now);
            if (!more) {
                // Said once an hour: over HISTORY_MAX_MB it is tried again at every tick.
                if (now >= next_prune_warning_) {
                    log::warning("attempt history retention: " + more.error().message() +
                                 " (tried again in an hour, or at every tick while the history "
                                 "is over HISTORY_MAX_MB)");
                    next_prune_warning_ = now + 3600;
                }
                next_prune_ = now + 3600;
                return;
            }
            if (!*more) {
                next_prune_ = now + 3600;
                return;
            }
        }
        next_prune_ = now;  // more to do at the next tick
    }

    [[nodiscard]] const WorkerStats& stats() const { return stats_; }
    [[nodiscard]] const ReconcilerStats& reconciler_stats() const { return reconciler_.stats(); }

  private:
    // A counted-only record names its uid's account as an explained one does, without a
    // working directory.
    void describe(CountedOnly& c) const {
        if (const Account* acc = accounts_.user_by_uid(c.uid))
            c.user = acc->name;
        c.account = attribute_account(c.uid, "", accounts_, options_.web_users);
    }

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
        sinks_.add(*da_sink_);
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

    static constexpr std::chrono::milliseconds kPruneBudget{10};

    WorkerOptions options_;
    nft::NetlinkSocket nl_;
    nft::Engine engine_;
    NftReadings readings_;
    HistoryStore history_;
    AttemptLog log_;
    JournalSink journal_;
    std::unique_ptr<DaSink> da_sink_;
    Sinks sinks_;
    AccountDb accounts_;
    std::int64_t passwd_mtime_ = 0;
    std::int64_t group_mtime_ = 0;
    std::map<pid_t, unsigned> told_per_pid_;
    std::time_t next_prune_ = 0;
    std::time_t next_prune_warning_ = 0;
    WorkerStats stats_;
    Reconciler reconciler_;
};

// What wakes the loop besides a packet: SIGTERM/SIGINT/SIGHUP (blocked, read from a
// signalfd) and a timer ticking every reconcile_ms.
struct Wakeups {
    UniqueFd signals;
    UniqueFd timer;
};

std::optional<Wakeups> open_wakeups(int reconcile_ms) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (const int err = pthread_sigmask(SIG_BLOCK, &mask, nullptr); err != 0) {
        log::error("block signals: " + errno_text(err));
        return std::nullopt;
    }
    Wakeups w{UniqueFd(signalfd(-1, &mask, SFD_CLOEXEC)),
              UniqueFd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK))};
    if (!w.signals.valid() || !w.timer.valid()) {
        log::error("signalfd/timerfd: " + errno_text(errno));
        return std::nullopt;
    }
    itimerspec period{};
    period.it_interval.tv_sec = reconcile_ms / 1000;
    period.it_interval.tv_nsec = static_cast<long>(reconcile_ms % 1000) * 1000000L;
    period.it_value = period.it_interval;
    if (timerfd_settime(w.timer.get(), 0, &period, nullptr) != 0) {
        log::error("timerfd_settime: " + errno_text(errno));
        return std::nullopt;
    }
    return w;
}

// The daemon's socket when it passed one (it stays bound while we restart), else our
// own.
Result<Queue> open_queue(const WorkerOptions& options) {
    return options.queue_fd >= 0 ? Queue::adopt(options.queue_fd, options.queue_num)
                                 : Queue::open(options.queue_num);
}

// Least privilege (common/privileges.h): every socket is open and the queue bound. From
// here on the worker sends verdicts and reads counters (nfnetlink), reads other users'
// /proc/PID and, with the DirectAdmin pipeline, writes mail's files; it executes
// nothing, so nothing may ever raise its privileges again. Before the queue takes SYNs:
// a worker that cannot drop leaves it fail-open.
bool drop_privileges(const WorkerOptions& options) {
    const CapabilitySet keep = worker_capabilities(options.da_enabled);
    if (auto r = forbid_new_privileges(); !r) {
        log::error(r.error().message());
        return false;
    }
    if (auto r = drop_to(keep, keep); !r) {
        log::error(r.error().message());
        return false;
    }
    log::info("capabilities: " + keep.to_string());
    return true;
}

// Ready: SYNs queue for us from now on, and ready_path says so. The daemon's status (and
// the tests) read it; the queue being bound says nothing, as the daemon holds it while
// we start.
bool announce_ready(const WorkerOptions& options, Queue& queue, const std::string& ready_path) {
    if (options.queue_fd >= 0) {
        // The daemon keeps the queue at length 0 (fail-open) while no worker is ready.
        if (auto r = queue.start_accepting(); !r) {
            log::error(r.error().message());
            return false;
        }
    }
    log::notice("worker " + std::string(options.queue_fd >= 0 ? "reading" : "bound to") +
                " NFQUEUE " + std::to_string(options.queue_num) + ", attempt history " +
                options.state_dir + "/history.db");
    if (auto r = write_file_atomic(ready_path, std::to_string(::getpid()) + "\n", 0644); !r)
        log::warning(r.error().message());
    return true;
}

// SIGTERM/SIGINT: no new SYN waits for us; what waits already is explained, the rest
// reconciled, and ready_path removed.
int stop(Worker& worker, Queue& queue, const std::string& ready_path) {
    if (auto r = queue.stop_accepting(); !r)
        log::warning(r.error().message());
    if (auto r = worker.reconcile(queue); !r)  // drains what waits, then reconciles
        log::error(r.error().message());
    const WorkerStats& s = worker.stats();
    const QueueCounters& q = queue.counters();
    log::notice("worker exiting: " + std::to_string(s.explained) + " explained (" +
                std::to_string(s.unidentified) + " unidentified), " +
                std::to_string(worker.reconciler_stats().counted_only) + " counted only, " +
                std::to_string(q.enobufs) + " ENOBUFS");
    (void)::unlink(ready_path.c_str());
    return 0;
}

// A batch the history could not keep: the reconciler believes it recorded, so this
// worker would never count those attempts again. It exits; the next one starts from the
// last committed checkpoint and counts them from the kernel's counters.
int history_lost(const Error& e) {
    log::error(e.message() +
               "; the worker exits so that the next one counts these attempts "
               "from the kernel's counters");
    return 1;
}

// Explains SYNs as they come and reconciles at every tick, until SIGTERM/SIGINT.
int serve(Worker& worker, Queue& queue, const Wakeups& wakeups, const std::string& ready_path) {
    std::array<pollfd, 3> fds{pollfd{queue.fd(), POLLIN, 0}, pollfd{wakeups.timer.get(), POLLIN, 0},
                              pollfd{wakeups.signals.get(), POLLIN, 0}};
    while (true) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            log::error("poll: " + errno_text(errno));
            return 1;
        }
        if ((fds[0].revents & POLLIN) != 0) {
            // Drain what is waiting, but yield to the timer and signals now and then.
            if (auto r = worker.drain(queue, 64); !r) {
                log::error(r.error().message());
                return 1;
            }
            if (auto r = worker.commit(); !r)
                return history_lost(r.error());
        }
        if ((fds[1].revents & POLLIN) != 0) {
            std::uint64_t expirations = 0;
            (void)!::read(wakeups.timer.get(), &expirations, sizeof expirations);
            if (auto r = worker.reconcile(queue); !r)
                return history_lost(r.error());
            worker.prune(std::time(nullptr));
        }
        if ((fds[2].revents & POLLIN) != 0) {
            signalfd_siginfo info{};
            if (::read(wakeups.signals.get(), &info, sizeof info) == sizeof info &&
                info.ssi_signo != SIGHUP) {
                return stop(worker, queue, ready_path);
            }
        }
    }
}

// Ends with the daemon that started us. Outside systemd (whose cgroup would end us) a
// worker that outlived a `kill -9` of its daemon kept the queue from the next daemon's
// workers and recorded with the old configuration. The parent-death signal is set here,
// not in the daemon's child before exec: exec clears it, as the worker gains the
// capabilities the daemon dropped. SIGTERM is blocked by now, so it arrives at serve(),
// whose stop() answers and records what waits for us. The daemon may have died before
// prctl took effect: then our parent is another process already, and we stop at once.
bool follow_daemon(pid_t daemon) {
    if (daemon <= 0)
        return true;  // started by hand
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
        log::error("prctl(PR_SET_PDEATHSIG): " + errno_text(errno));
        return false;
    }
    if (::getppid() != daemon) {
        log::notice("smtpfenced (pid " + std::to_string(daemon) + ") is gone: not starting");
        return false;
    }
    return true;
}

// The history, with the JSON-lines log of earlier versions imported into it once
// (before the stream starts a new attempts.jsonl).
Result<HistoryStore> open_history(const WorkerOptions& options) {
    auto history = HistoryStore::open(
        options.state_dir, HistoryLimits{options.history_days, options.history_max_mb << 20U});
    if (!history)
        return history;
    auto imported = history->import_jsonl();
    if (!imported)
        return std::unexpected(imported.error().wrap("import the old attempt log"));
    if (*imported > 0) {
        log::notice("attempt history: " + std::to_string(*imported) + " record(s) imported from " +
                    options.state_dir + "/attempts.jsonl (kept as attempts.jsonl*.imported)");
    }
    return history;
}

}  // namespace

int run_worker(const WorkerOptions& options) {
    const std::optional<Wakeups> wakeups = open_wakeups(options.reconcile_ms);
    if (!wakeups || !follow_daemon(options.daemon_pid))
        return 1;
    auto nl = nft::NetlinkSocket::open();
    if (!nl) {
        log::error(nl.error().message());
        return 1;
    }
    auto history = open_history(options);
    if (!history) {
        log::error(history.error().message());
        return 1;
    }
    auto recovered = history->recover();
    if (!recovered) {
        log::error(recovered.error().message());
        return 1;
    }
    auto stream = AttemptLog::open(options.state_dir);
    if (!stream) {
        log::error(stream.error().message());
        return 1;
    }
    Worker worker(options, std::move(*nl), std::move(*history), std::move(*stream), *recovered);
    auto queue = open_queue(options);
    if (!queue) {
        log::error(queue.error().message());
        return 1;
    }
    const std::string ready_path = ready_file_path(options.state_dir);
    if (!drop_privileges(options) || !announce_ready(options, *queue, ready_path))
        return 1;
    // Records what was counted while no worker ran.
    if (auto r = worker.reconcile(*queue); !r)
        return history_lost(r.error());
    return serve(worker, *queue, *wakeups, ready_path);
}

}  // namespace smtpfence::nfq
