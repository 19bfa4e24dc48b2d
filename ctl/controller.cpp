// smtpfenced's main loop: keeps the policy in the kernel, the worker running and the
// allowlist in step with the accounts, and answers the control socket.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/conf_reader.h"
#include "common/fd.h"
#include "common/file_watch.h"
#include "common/files.h"
#include "common/log.h"
#include "common/privileges.h"
#include "common/text.h"
#include "csf-compat/csf_rules.h"
#include "ctl/control_server.h"
#include "ctl/daemon.h"
#include "ctl/protocol.h"
#include "ctl/service_notify.h"
#include "ctl/supervisor.h"
#include "nfq/attempt_log.h"
#include "nfq/da_sink.h"
#include "nfq/proc_queue.h"
#include "nfq/queue.h"
#include "nfq/worker.h"
#include "nft/engine.h"
#include "nft/monitor.h"
#include "nft/netlink.h"

#ifndef SMTPFENCE_VERSION
#define SMTPFENCE_VERSION "unknown"
#endif

namespace smtpfence {
namespace {

using ctl::Command;
using ctl::ErrorCode;
using ctl::ProtocolError;
using nlohmann::json;

using Answer = std::expected<json, ProtocolError>;

std::unexpected<ProtocolError> refuse(ErrorCode code, std::string message) {
    return std::unexpected(ProtocolError{code, std::move(message)});
}

Result<UniqueFd> block_signals() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    if (const int err = pthread_sigmask(SIG_BLOCK, &mask, nullptr); err != 0)
        return fail(err, "block signals");
    UniqueFd fd(signalfd(-1, &mask, SFD_CLOEXEC));
    if (!fd.valid())
        return fail(errno, "signalfd");
    return fd;
}

// Classic daemon(3) detachment, after the first apply so that errors up to then
// reach the admin's terminal and exit status.
Result<void> detach() {
    const pid_t pid = fork();
    if (pid < 0)
        return fail(errno, "fork");
    if (pid > 0)
        _exit(kExitOk);
    if (setsid() < 0)
        return fail(errno, "setsid");
    UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!null.valid())
        return fail(errno, "open /dev/null");
    for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
        if (dup2(null.get(), fd) < 0)
            return fail(errno, "dup2");
    }
    log::use_syslog();
    return {};
}

template <class T>
std::set<T> minus(const std::set<T>& a, const std::set<T>& b) {
    std::set<T> out;
    std::ranges::set_difference(a, b, std::inserter(out, out.end()));
    return out;
}

// A name or a number, as the protocol and the config accept them.
const Account* find_user(const AccountDb& db, const std::string& name) {
    if (const Account* a = db.user(name))
        return a;
    if (const auto uid = text::parse_unsigned(name, 4294967294U))
        return db.user_by_uid(static_cast<std::uint32_t>(*uid));
    return nullptr;
}

const GroupEntry* find_group(const AccountDb& db, const std::string& name) {
    if (const GroupEntry* g = db.group(name))
        return g;
    if (const auto gid = text::parse_unsigned(name, 4294967294U))
        return db.group_by_gid(static_cast<std::uint32_t>(*gid));
    return nullptr;
}

std::time_t local_midnight(std::time_t now) {
    std::tm tm{};
    if (localtime_r(&now, &tm) == nullptr)
        return now - (now % 86400);  // UTC midnight: better than nothing
    tm.tm_hour = 0;
    tm.tm_min = 0;
    tm.tm_sec = 0;
    tm.tm_isdst = -1;
    return std::mktime(&tm);
}

// The outcome of a real connection attempt, made in a child as another user.
[[noreturn]] void run_test_child(int client_fd, const Account& account, std::vector<gid_t> groups,
                                 const std::string& address, std::uint16_t port) {
    const auto reply = [&](const std::string& line) {
        const int flags = fcntl(client_fd, F_GETFL);
        if (flags >= 0)
            (void)fcntl(client_fd, F_SETFL, flags & ~O_NONBLOCK);
        std::size_t off = 0;
        while (off < line.size()) {
            const ssize_t n = ::send(client_fd, line.data() + off, line.size() - off, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            off += static_cast<std::size_t>(n);
        }
        _exit(0);
    };
    // Become the user entirely: groups, then gid, then uid (after setuid, setgid
    // would no longer be permitted). The kernel judges the socket by these.
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(account.gid) != 0 ||
        setuid(account.uid) != 0) {
        reply(ctl::encode_error(
            {ErrorCode::Failed, "cannot switch to " + account.name + ": " + errno_text(errno)}));
    }
    sockaddr_storage ss{};
    socklen_t len = 0;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
    }
    const auto started = std::chrono::steady_clock::now();
    UniqueFd s(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    int err = 0;
    if (!s.valid()) {
        err = errno;
    } else if (::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            pollfd p{s.get(), POLLOUT, 0};
            const int ready = ::poll(&p, 1, 5000);
            if (ready == 0) {
                err = ETIMEDOUT;
            } else {
                socklen_t el = sizeof err;
                if (getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &el) != 0)
                    err = errno;
            }
        }
    }
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
    std::string outcome = "error";
    if (err == 0)
        outcome = "connected";
    else if (err == ECONNREFUSED)
        outcome = "refused";
    else if (err == ETIMEDOUT)
        outcome = "timed_out";
    reply(ctl::encode_ok({{"user", account.name},
                          {"uid", account.uid},
                          {"address", address},
                          {"port", port},
                          {"outcome", outcome},
                          {"error", err == 0 ? std::string() : errno_text(err)},
                          {"elapsed_ms", ms}}));
    _exit(0);  // not reached: reply() exits
}

class Controller {
  public:
    Controller(const DaemonOptions& options, nft::Engine& engine, const KernelFeatures& kernel,
               ctl::ControlServer& server)
        : options_(options),
          engine_(engine),
          kernel_(kernel),
          queue_(kernel.queue),
          server_(server),
          accounts_watch_({options.passwd_path, options.group_path, managed_allow_path(options)}),
          config_watch_(policy_files(options)),
          worker_({}) {
        worker_.set_on_exit([this] { release_waiting(); });
    }

    // The daemon's inputs (config, accounts, managed list), read after the file watches
    // are armed so that no change after the read goes unseen. An error here is a
    // configuration error.
    Result<Desired> read_inputs() {
        accounts_watch_.rearm();
        config_watch_.rearm();
        return compute_desired(options_, kernel_);
    }

    // When read_inputs() failed at start: the built-in defaults instead (fail closed:
    // compute_fallback), and the error kept in status until a reload succeeds.
    Result<Desired> fallback_inputs(const Error& why) {
        input_error_ = InputError{why.message(), std::time(nullptr), true};
        return compute_fallback(options_, kernel_);
    }

    // The first apply of what read_inputs() returned; an error here ends the daemon
    // before it detaches.
    Result<void> start(Desired desired) {
        // Events first, so that nothing done to the table after our apply goes unseen.
        if (auto m = nft::TableMonitor::open(options_.table, engine_.portid())) {
            monitor_ = std::move(*m);
        } else {
            log::warning(m.error().message() +
                         "; a deleted or changed table is found by the check each second only");
        }
        hold_queue_before_apply(desired);
        if (auto r = apply_desired(engine_, options_, desired); !r)
            return r;
        adopt(std::move(desired));
        look_for_csf_rules();
        return {};
    }

    int run(int signal_fd) {
        sync_worker();
        service::ready(status_line());
        const auto watchdog = service::watchdog_interval();
        auto next_ping = std::chrono::steady_clock::now();
        auto next_watch = std::chrono::steady_clock::now();
        while (true) {
            if (watchdog && std::chrono::steady_clock::now() >= next_ping) {
                service::watchdog();
                next_ping = std::chrono::steady_clock::now() + *watchdog;
            }
            std::vector<pollfd> fds{{signal_fd, POLLIN, 0}};
            if (monitor_)
                fds.push_back({monitor_->fd(), POLLIN, 0});
            server_.add_pollfds(fds);
            int timeout = 1000;  // the file watches
            if (watchdog) {
                const auto until_ping = std::chrono::duration_cast<std::chrono::milliseconds>(
                    next_ping - std::chrono::steady_clock::now());
                timeout =
                    std::min<int>(timeout, std::max<int>(0, static_cast<int>(until_ping.count())));
            }
            for (const int t : {worker_.tick(), server_.next_deadline_ms()}) {
                if (t >= 0)
                    timeout = std::min(timeout, t);
            }
            const int ready = ::poll(fds.data(), fds.size(), timeout);
            if (ready < 0 && errno != EINTR) {
                log::error("poll: " + errno_text(errno));
                return kExitFailure;
            }
            if (ready > 0 && fds[0].revents != 0) {
                if (auto code = on_signal(signal_fd))
                    return *code;
            }
            if (ready > 0 && monitor_ && fds[1].revents != 0)
                on_table_events(*monitor_);
            if (ready > 0) {
                server_.process(fds, [this](const ctl::Request& r, const ctl::Peer& p, int fd) {
                    return dispatch(r, p, fd);
                });
            }
            if (std::chrono::steady_clock::now() >= next_watch) {
                next_watch = std::chrono::steady_clock::now() + std::chrono::seconds(1);
                check_table();
                watch_files();
            }
        }
    }

  private:
    [[nodiscard]] bool enforcing() const {
        return current_ && current_->loaded.policy.enabled && !removed_;
    }

    void adopt(Desired desired) {
        current_ = std::move(desired);
        applied_at_ = std::time(nullptr);
        ctl::AccessPolicy access;
        access.read_all = current_->loaded.policy.control_read_all;
        const std::string& admin = current_->loaded.policy.control_admin_group;
        if (!admin.empty()) {
            if (const GroupEntry* g = find_group(current_->accounts, admin)) {
                access.admin_gid = g->gid;
            } else {
                log::warning("CONTROL_ADMIN_GROUP: unknown group \"" + text::printable(admin) +
                             "\"; only root may change the allowlist");
            }
        }
        server_.set_access(access);
    }

    // CSF's own SMTP_BLOCK rules (iptables chain SMTPOUTPUT) enforcing the same thing
    // beside us: looked for at start and on each reload (it runs iptables-save), and
    // explained in status and the log.
    void look_for_csf_rules() {
        csf_rules_ = csf::explain(csf::detect_csf_rules(), !options_.csf_conf_path.empty());
        if (!csf_rules_.empty())
            log::warning(csf_rules_);
    }

    // Whether this policy, when enforced, has a worker (and so a queue).
    [[nodiscard]] bool wants_worker(const Policy& p) const {
        return !options_.no_worker && queue_ != nft::QueueMode::None && p.enabled;
    }

    // When no queue is held yet (start, or enforcing again after `remove` or
    // SMTP_BLOCK = "0"), the queue is bound before the rule that feeds it is applied:
    // a SYN reaching the rule before then passes it (no queue: bypass), while one sent
    // to a queue whose binding is under way could be dropped (see nfq::Queue::open).
    // A changed QUEUE_NUM is bound after the apply (sync_worker), as the rules in force
    // still feed the old queue if the apply fails.
    void hold_queue_before_apply(const Desired& desired) {
        if (!held_queue_ && wants_worker(desired.loaded.policy))
            hold_queue(desired.loaded.policy.queue_num);
    }

    void sync_worker() {
        if (current_ && enforcing() && wants_worker(current_->loaded.policy)) {
            const Policy& p = current_->loaded.policy;
            hold_queue(p.queue_num);
            std::vector<std::string> argv = worker_argv(options_, p);
            if (held_queue_)
                argv.insert(argv.end(), {"--queue-fd", std::to_string(held_queue_->fd())});
            worker_.set_argv(std::move(argv));
            worker_.ensure_running();
        } else {
            worker_.stop();
            held_queue_.reset();
            worker_.set_inherited_fd(-1);
        }
    }

    // The daemon binds the NFQUEUE and hands the socket to each worker it starts: the
    // queue then stays bound when a worker dies, and the daemon answers the SYNs that
    // waited for it at once (release_waiting) instead of the kernel dropping them,
    // which would have each client retransmit a second later and be counted twice.
    void hold_queue(std::uint16_t num) {
        if (held_queue_ && held_queue_->number() == num)
            return;
        held_queue_.reset();
        worker_.set_inherited_fd(-1);
        auto q = nfq::Queue::open(num, 0);  // length 0: fail-open until a worker is ready
        if (!q) {
            log::warning(q.error().message() +
                         "; the worker binds the queue itself (if it dies, the SYNs waiting "
                         "for it may be counted twice)");
            return;
        }
        held_queue_ = std::move(*q);
        worker_.set_inherited_fd(held_queue_->fd());
    }

    void release_waiting() {
        if (!held_queue_)
            return;
        if (auto r = held_queue_->release_waiting(); !r)
            log::warning("release the SYNs that waited for the worker: " + r.error().message());
    }

    // Returns an exit code when the daemon must end.
    std::optional<int> on_signal(int signal_fd) {
        signalfd_siginfo info{};
        if (::read(signal_fd, &info, sizeof info) != sizeof info)
            return std::nullopt;
        if (info.ssi_signo == SIGCHLD) {
            worker_.reap();  // also reaps the children of `test`
            return std::nullopt;
        }
        if (info.ssi_signo == SIGHUP) {
            log::notice("SIGHUP: reloading " + policy_files(options_).front());
            if (auto r = reload(); !r)
                log::error("reload failed: " + r.error().message() +
                           "; the rules in force are unchanged");
            return std::nullopt;
        }
        // SIGTERM / SIGINT: the table stays; stopping the daemon never opens SMTP.
        service::stopping();
        worker_.stop();
        log::notice("exiting on signal " + std::to_string(info.ssi_signo) + "; table inet " +
                    options_.table + " stays in force");
        return kExitOk;
    }

    Result<void> reload() {
        service::reloading();
        accounts_watch_.rearm();
        config_watch_.rearm();
        auto desired = compute_desired(options_, kernel_);
        if (desired) {
            hold_queue_before_apply(*desired);
            if (auto r = apply_desired(engine_, options_, *desired); !r)
                desired = std::unexpected(r.error());
        }
        if (!desired) {
            // Still the defaults when a start fell back on them; else the last good load.
            const bool fallback = input_error_ && input_error_->fallback;
            input_error_ = InputError{desired.error().message(), std::time(nullptr), fallback};
            service::ready(status_line());
            return std::unexpected(desired.error());
        }
        input_error_.reset();
        removed_ = false;
        adopt(std::move(*desired));
        look_for_csf_rules();
        sync_worker();
        service::ready(status_line());
        return {};
    }

    // One line for systemd's STATUS= (`systemctl status smtpfenced`).
    [[nodiscard]] std::string status_line() const {
        std::string line;
        if (!current_)
            line = "no policy loaded";
        else if (removed_)
            line = "NOT enforcing: the table was removed with smtpfencectl remove";
        else if (!current_->loaded.policy.enabled)
            line = "NOT enforcing: SMTP_BLOCK is \"0\"";
        else
            line = "enforcing: " + describe(*current_);
        if (input_error_) {
            line = "CONFIGURATION ERROR: " + input_error_->message + "; " +
                   (input_error_->fallback ? "the built-in defaults are in force"
                                           : "the rules in force are unchanged") +
                   "; " + line;
        }
        if (heal_.count > 0)
            line += "; restored after foreign changes " + std::to_string(heal_.count) + " time(s)";
        return line;
    }

    void watch_files() {
        if (config_watch_.changed()) {
            log::notice(policy_files(options_).front() + " changed: reloading");
            if (auto r = reload(); !r) {
                log::error("reload failed: " + r.error().message() +
                           "; the rules in force are unchanged");
            }
            return;
        }
        if (accounts_watch_.changed()) {
            if (auto r = refresh_allowlist(); !r) {
                log::error("re-resolving the allowlist failed: " + r.error().message() +
                           "; the rules in force are unchanged");
            }
        }
    }

    // Someone else changed our table (only possible when it is not owned, or while it
    // was orphaned): put the desired state back at once.
    void on_table_events(nft::TableMonitor& monitor) {
        auto read = monitor.read();
        if (!read) {
            log::error(read.error().message() + "; relying on the check each second");
            monitor_.reset();
            return;
        }
        const std::optional<nft::ForeignChange>& change = *read;
        if (!change)
            return;
        std::string what = text::join(change->what, ", ");
        if (change->events_lost)
            what += std::string(what.empty() ? "" : ", ") + "events lost (socket overflow)";
        restore(change->who.empty() ? "unknown" : change->who, what);
    }

    // The safety net under the events: is the table there, and ours?
    void check_table() {
        if (!enforcing() || !current_)
            return;
        auto header = engine_.table_header(options_.table);
        if (!header) {
            log::warning("check table inet " + options_.table + ": " + header.error().message());
            return;
        }
        const std::optional<nft::Engine::TableHeader>& found = *header;
        if (!found) {
            restore("unknown (found by the check each second)", "table missing");
        } else if (current_->spec.owned && found->owner != engine_.portid()) {
            restore("unknown (found by the check each second)", "table not owned by us");
        }
    }

    void restore(const std::string& who, const std::string& what) {
        if (!enforcing() || !current_) {
            log::info("table inet " + options_.table + " changed by " + who + " (" + what +
                      "); nothing is enforced, left alone");
            return;
        }
        const auto t0 = std::chrono::steady_clock::now();
        auto applied = engine_.apply(nft::build_ruleset(current_->spec));
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - t0)
                            .count();
        heal_.last_at = std::time(nullptr);
        heal_.last_who = who;
        heal_.last_what = what;
        heal_.last_restore_us = us;
        heal_.last_ok = applied.has_value();
        if (!applied) {
            ++heal_.failures;
            heal_.last_error = applied.error().message();
            log::error("table inet " + options_.table + " changed by " + who + ": " + what +
                       "; restoring it failed: " + applied.error().message() +
                       " (tried again each second)");
            return;
        }
        ++heal_.count;
        heal_.last_error.clear();
        service::status(status_line());
        log::warning("table inet " + options_.table + " changed by " + who + ": " + what +
                     "; restored in " + std::to_string(us / 1000) + "." +
                     std::to_string((us % 1000) / 100) + " ms" +
                     (applied->table_existed && !applied->counters_kept ? " (" + applied->note + ")"
                                                                        : std::string()));
    }

    // Accounts or the managed list changed: re-resolve the names with the policy in
    // force and apply the difference as set-element changes (O(changes)).
    Result<void> refresh_allowlist() {
        if (!current_)
            return {};
        auto accounts = AccountDb::load(options_.passwd_path, options_.group_path);
        if (!accounts)
            return std::unexpected(accounts.error());
        auto managed = load_managed_allow(managed_allow_path(options_));
        if (!managed)
            return std::unexpected(managed.error());
        Allowlist next = resolve_allowlist(current_->loaded.policy, *accounts, *managed);
        const Allowlist& now = current_->allow;
        const auto add_u = minus(next.uids, now.uids);
        const auto del_u = minus(now.uids, next.uids);
        const auto add_g = minus(next.gids, now.gids);
        const auto del_g = minus(now.gids, next.gids);
        if (enforcing() && !(add_u.empty() && del_u.empty() && add_g.empty() && del_g.empty())) {
            auto r = engine_.change_elements(options_.table, "allow_uid", add_u, del_u);
            if (r)
                r = engine_.change_elements(options_.table, "allow_gid", add_g, del_g);
            if (!r) {
                // The table is not as we left it (edited by hand, flushed): rebuild it whole.
                log::warning("allowlist change as set elements failed (" + r.error().message() +
                             "); re-applying the whole table");
                nft::RulesetSpec spec =
                    make_spec(current_->loaded.policy, next, options_.table, kernel_);
                auto applied = engine_.apply(nft::build_ruleset(spec));
                if (!applied)
                    return std::unexpected(applied.error());
            }
            log::notice("allowlist re-resolved: uids +[" + text::join_numbers(add_u) + "] -[" +
                        text::join_numbers(del_u) + "], gids +[" + text::join_numbers(add_g) +
                        "] -[" + text::join_numbers(del_g) + "]");
        }
        for (const std::string& w : next.warnings)
            log::warning(w);
        current_->accounts = std::move(*accounts);
        current_->managed = std::move(*managed);
        current_->allow = std::move(next);
        current_->spec.allow_uids = current_->allow.uids;
        current_->spec.allow_gids = current_->allow.gids;
        adopt(std::move(*current_));
        return {};
    }

    std::optional<std::string> dispatch(const ctl::Request& r, const ctl::Peer& peer,
                                        int client_fd) {
        log::info("control: " + std::string(ctl::to_string(r.command)) + " from uid " +
                  std::to_string(peer.uid));
        if (r.command == Command::Test) {
            auto started = start_test(r, client_fd);
            if (started)
                return std::nullopt;  // the child answers
            return ctl::encode_error(started.error());
        }
        Answer a = answer(r);
        return a ? ctl::encode_ok(*a) : ctl::encode_error(a.error());
    }

    Answer answer(const ctl::Request& r) {
        switch (r.command) {
            case Command::Version:
                return json{{"protocol", ctl::kProtocolVersion}, {"version", SMTPFENCE_VERSION}};
            case Command::Status:
                return status();
            case Command::List:
                return list();
            case Command::Check:
                return check(r.user.value_or(""));
            case Command::Attempts:
                return attempts(r);
            case Command::Top:
                return top(r);
            case Command::Allow:
            case Command::Deny:
                return change(r);
            case Command::Reload: {
                if (auto ok = reload(); !ok)
                    return refuse(ErrorCode::Failed,
                                  ok.error().message() + "; the rules in force are unchanged");
                return json{{"enforcing", enforcing()},
                            {"description", current_ ? describe(*current_) : std::string()}};
            }
            case Command::Remove: {
                if (auto ok = engine_.remove(options_.table); !ok)
                    return refuse(ErrorCode::Failed, ok.error().message());
                removed_ = true;
                sync_worker();
                log::notice("control: table inet " + options_.table +
                            " removed on request: outbound SMTP is no longer guarded (reload "
                            "restores it)");
                return json{{"removed", true}, {"table", options_.table}};
            }
            case Command::Test:
                break;
        }
        return refuse(ErrorCode::UnknownCommand, "not handled");
    }

    Answer status() {
        json j;
        j["version"] = SMTPFENCE_VERSION;
        j["enforcing"] = enforcing();
        std::string why;
        if (!current_)
            why = "no policy loaded";
        else if (removed_)
            why =
                "the table was removed with `smtpfencectl remove`; `smtpfencectl reload` "
                "restores it";
        else if (!current_->loaded.policy.enabled)
            why = "SMTP_BLOCK is \"0\" in " + current_->loaded.policy.source;
        else
            why = describe(*current_);
        j["summary"] = why;
        if (input_error_) {
            j["config_error"] = {
                {"message", input_error_->message},
                {"since", input_error_->since},
                {"in_force", input_error_->fallback ? "built-in defaults"
                                                    : "the last configuration that loaded"}};
        }
        auto present = engine_.table_exists(options_.table);
        j["table"] = {{"family", "inet"},
                      {"name", options_.table},
                      {"present", present ? json(*present) : json(nullptr)}};
        if (enforcing() && present && !*present)
            j["problem"] =
                "the table is missing from the kernel (flushed by hand?); "
                "`smtpfencectl reload` puts it back";
        j["table"]["owned"] = current_ && current_->spec.owned;
        j["self_heal"] = {{"events", monitor_.has_value()},
                          {"restored", heal_.count},
                          {"failed", heal_.failures}};
        if (heal_.count + heal_.failures > 0) {
            j["self_heal"]["last"] = {
                {"at", heal_.last_at},     {"by", heal_.last_who},
                {"what", heal_.last_what}, {"restore_us", heal_.last_restore_us},
                {"ok", heal_.last_ok},     {"error", heal_.last_error}};
        }
        j["queue"] = {{"mode", nft::to_string(queue_)}};
        if (current_) {
            const Policy& p = current_->loaded.policy;
            j["config"] = p.source;
            j["allow_list"] = managed_allow_path(options_);
            j["ports"] = p.ports;
            j["action"] = p.action == BlockAction::Drop ? "drop" : "reject";
            j["allowed"] = {{"uids", current_->allow.uids.size()},
                            {"gids", current_->allow.gids.size()}};
            j["queue"]["num"] = p.queue_num;
            if (const auto q = nfq::read_queue_proc_stats(p.queue_num)) {
                j["queue"]["bound"] = true;
                j["queue"]["waiting"] = q->waiting;
                j["queue"]["queue_dropped"] = q->queue_dropped;
                j["queue"]["user_dropped"] = q->user_dropped;
                j["queue"]["id_sequence"] = q->id_sequence;
            } else {
                j["queue"]["bound"] = false;
            }
            j["warnings"] = current_->warnings;
            const auto da = nfq::resolve_da_pipeline(p.da_pipeline, options_.virtual_dir);
            j["directadmin"] = {
                {"enabled", da.enabled && !options_.no_worker},
                {"reason",
                 options_.no_worker ? "off: --no-worker (nothing is recorded)" : da.reason},
                {"virtual_dir", options_.virtual_dir},
                {"attempt_weight", p.da_attempt_weight}};
        }
        j["applied_at"] = applied_at_;
        j["csf"] = {{"mode", !options_.csf_conf_path.empty()},
                    {"csf_conf", options_.csf_conf_path},
                    {"rules_loaded", !csf_rules_.empty()},
                    {"explanation", csf_rules_}};
        bool ready = false;
        if (worker_.pid() > 0) {
            auto text = read_text_file(nfq::ready_file_path(options_.state_dir), 64);
            if (text) {
                const std::string_view t(*text);
                ready = text::parse_unsigned(t.substr(0, t.find('\n')), 4194304) ==
                        static_cast<std::uint64_t>(worker_.pid());
            }
        }
        j["worker"] = {
            {"running", worker_.pid() > 0},
            {"ready", ready},
            {"pid", worker_.pid() > 0 ? worker_.pid() : 0},
            {"restarts", worker_.restarts()},
            {"wanted", current_ && enforcing() && wants_worker(current_->loaded.policy)}};
        if (present && *present) {
            if (auto blocked = engine_.read_blocked(options_.table)) {
                std::uint64_t total = 0;
                for (const auto& [uid, c] : *blocked)
                    total += c.packets;
                j["counters"] = {{"uids_blocked", blocked->size()}, {"attempts", total}};
            }
        }
        j["control"] = {{"socket", server_.path()},
                        {"requests", server_.requests()},
                        {"rejected", server_.rejected()}};
        return j;
    }

    Answer list() {
        if (!current_)
            return refuse(ErrorCode::Failed, "no policy loaded");
        json uids = json::array();
        for (const std::uint32_t uid : current_->allow.uids) {
            const Account* a = current_->accounts.user_by_uid(uid);
            uids.push_back({{"uid", uid},
                            {"name", a != nullptr ? a->name : ""},
                            {"reason", current_->allow.uid_reasons.at(uid)}});
        }
        json gids = json::array();
        for (const std::uint32_t gid : current_->allow.gids) {
            const GroupEntry* g = current_->accounts.group_by_gid(gid);
            gids.push_back({{"gid", gid},
                            {"name", g != nullptr ? g->name : ""},
                            {"reason", current_->allow.gid_reasons.at(gid)}});
        }
        return json{{"uids", uids},
                    {"gids", gids},
                    {"managed",
                     {{"file", managed_allow_path(options_)},
                      {"users", current_->managed.users},
                      {"groups", current_->managed.groups}}},
                    {"warnings", current_->allow.warnings},
                    {"enforcing", enforcing()}};
    }

    Answer check(const std::string& name) {
        if (!current_)
            return refuse(ErrorCode::Failed, "no policy loaded");
        const Account* a = find_user(current_->accounts, name);
        if (a == nullptr)
            return refuse(ErrorCode::NotFound,
                          "no user \"" + text::printable(name) + "\" in " + options_.passwd_path);
        const Policy& p = current_->loaded.policy;
        json j = {{"user", a->name}, {"uid", a->uid}, {"gid", a->gid}, {"ports", p.ports}};
        bool blocked = false;
        std::string reason;
        if (!enforcing()) {
            reason = removed_ ? "nothing is enforced: the table was removed"
                              : "nothing is enforced: SMTP_BLOCK is \"0\" in " + p.source;
        } else if (const auto it = current_->allow.uid_reasons.find(a->uid);
                   it != current_->allow.uid_reasons.end()) {
            reason = "allowed: " + it->second;
        } else if (const auto g = current_->allow.gid_reasons.find(a->gid);
                   g != current_->allow.gid_reasons.end()) {
            reason =
                "allowed: primary group gid " + std::to_string(a->gid) + " (" + g->second + ")";
        } else {
            blocked = true;
            reason = "blocked: not root, not an MTA user, not in SMTP_ALLOWUSER or " +
                     managed_allow_path(options_) +
                     ", no allowed group; connections to remote ports " +
                     text::join_numbers(p.ports) + " are " +
                     (p.action == BlockAction::Drop ? "dropped" : "refused") +
                     (p.allow_local ? " (this server's own addresses are allowed)" : "");
        }
        j["blocked"] = blocked;
        j["reason"] = reason;
        return j;
    }

    Answer attempts(const ctl::Request& r) {
        std::vector<json> records =
            nfq::AttemptLog::read_records(options_.state_dir, r.since.value_or(0));
        if (r.user) {
            std::erase_if(records, [&](const json& j) {
                return j.value("user", "") != *r.user && j.value("account", "") != *r.user &&
                       std::to_string(j.value("uid", 0U)) != *r.user;
            });
        }
        const std::size_t total = records.size();
        if (records.size() > r.limit)
            records.erase(records.begin(), records.end() - static_cast<std::ptrdiff_t>(r.limit));
        return json{{"records", records},
                    {"matched", total},
                    {"shown", records.size()},
                    {"log", options_.state_dir + "/attempts.jsonl"}};
    }

    Answer top(const ctl::Request& r) {
        const std::int64_t since = r.since.value_or(local_midnight(std::time(nullptr)));
        struct Row {
            std::uint64_t explained = 0, counted = 0;
            std::set<std::string> users;
            std::int64_t last = 0;
            std::string last_cwd, last_exe;
        };
        std::map<std::string, Row> rows;
        for (const json& j : nfq::AttemptLog::read_records(options_.state_dir, since)) {
            Row& row = rows[j.value("account", "unknown")];
            if (j["type"] == "attempt") {
                ++row.explained;
                if (j.value("identified", false)) {
                    row.last_cwd = j.value("cwd", "");
                    row.last_exe = j.value("exe", "");
                }
            } else {
                row.counted += j.value("count", std::uint64_t{0});
            }
            row.users.insert(j.value("user", ""));
            row.last = std::max(row.last, j.value("epoch", std::int64_t{0}));
        }
        std::vector<std::pair<std::string, Row>> sorted(rows.begin(), rows.end());
        std::ranges::stable_sort(sorted, [](const auto& a, const auto& b) {
            return a.second.explained + a.second.counted > b.second.explained + b.second.counted;
        });
        json out = json::array();
        for (const auto& [account, row] : sorted) {
            out.push_back({{"account", account},
                           {"attempts", row.explained + row.counted},
                           {"explained", row.explained},
                           {"counted_only", row.counted},
                           {"users", row.users},
                           {"last_epoch", row.last},
                           {"last_cwd", row.last_cwd},
                           {"last_exe", row.last_exe}});
        }
        return json{{"since", since}, {"accounts", out}};
    }

    Answer change(const ctl::Request& r) {
        if (!current_)
            return refuse(ErrorCode::Failed, "no policy loaded");
        const bool add = r.command == Command::Allow;
        const AllowKind kind = r.user ? AllowKind::User : AllowKind::Group;
        const std::string name = r.user.value_or(r.group.value_or(""));
        const std::string what = r.user ? "user" : "group";
        // Only names that exist now are accepted: a typo must not be stored silently.
        // (A name that disappears later is re-resolved, and then simply not allowed.)
        const bool exists = r.user ? find_user(current_->accounts, name) != nullptr
                                   : find_group(current_->accounts, name) != nullptr;
        if (add && !exists) {
            return refuse(ErrorCode::NotFound,
                          "no " + what + " \"" + name + "\" in " +
                              (r.user ? options_.passwd_path : options_.group_path));
        }
        const std::string path = managed_allow_path(options_);
        auto changed = change_managed_allow(path, kind, name, add);
        if (!changed)
            return refuse(ErrorCode::Failed, changed.error().message());
        if (auto applied = refresh_allowlist(); !applied) {
            return refuse(ErrorCode::Failed, path + " was updated, but applying it failed: " +
                                                 applied.error().message() +
                                                 " (the daemon retries when the file "
                                                 "changes or on reload)");
        }
        json j = {{"kind", what},
                  {"name", name},
                  {"changed", changed->changed},
                  {"file", path},
                  {"enforcing", enforcing()}};
        if (!add && r.user) {
            // Still allowed through the config or a group? Say so: the admin meant to block.
            if (const Account* a = find_user(current_->accounts, name)) {
                if (const auto it = current_->allow.uid_reasons.find(a->uid);
                    it != current_->allow.uid_reasons.end()) {
                    j["still_allowed"] = it->second;
                } else if (const auto g = current_->allow.gid_reasons.find(a->gid);
                           g != current_->allow.gid_reasons.end()) {
                    j["still_allowed"] = g->second;
                }
            }
        }
        if (!add && r.group) {
            if (const GroupEntry* g = find_group(current_->accounts, name)) {
                if (const auto it = current_->allow.gid_reasons.find(g->gid);
                    it != current_->allow.gid_reasons.end())
                    j["still_allowed"] = it->second;
            }
        }
        log::notice("control: " + std::string(add ? "allow " : "deny ") + what + " " + name +
                    (changed->changed ? "" : " (no change)"));
        return j;
    }

    std::expected<void, ProtocolError> start_test(const ctl::Request& r, int client_fd) {
        if (!current_)
            return refuse(ErrorCode::Failed, "no policy loaded");
        const std::string user = r.user.value_or("");
        const std::string address = r.address.value_or("");
        const Account* found = find_user(current_->accounts, user);
        if (found == nullptr) {
            return refuse(ErrorCode::NotFound,
                          "no user \"" + text::printable(user) + "\" in " + options_.passwd_path);
        }
        const Account account = *found;
        std::vector<gid_t> groups;
        for (const std::uint32_t gid : current_->accounts.supplementary_gids(account.name))
            groups.push_back(gid);
        const pid_t pid = fork();
        if (pid < 0)
            return refuse(ErrorCode::Failed, "fork: " + errno_text(errno));
        if (pid == 0)
            run_test_child(client_fd, account, std::move(groups), address, r.port);
        log::notice("control: test connection as " + account.name + " to " + address + " port " +
                    std::to_string(r.port) + " (child pid " + std::to_string(pid) + ")");
        return {};
    }

    const DaemonOptions& options_;
    nft::Engine& engine_;
    KernelFeatures kernel_;
    nft::QueueMode queue_;
    ctl::ControlServer& server_;
    FileWatch accounts_watch_;
    FileWatch config_watch_;
    std::optional<nfq::Queue> held_queue_;  // declared before worker_: outlives it
    WorkerSupervisor worker_;
    std::optional<Desired> current_;
    bool removed_ = false;
    std::time_t applied_at_ = 0;
    std::string csf_rules_;  // "" when CSF's SMTP rules are not loaded
    std::optional<nft::TableMonitor> monitor_;
    struct HealStats {
        std::uint64_t count = 0;
        std::uint64_t failures = 0;
        std::time_t last_at = 0;
        std::string last_who;
        std::string last_what;
        std::int64_t last_restore_us = 0;
        bool last_ok = false;
        std::string last_error;
    } heal_;
    // The config, csf.conf or managed list could not be used (at start, or on the last
    // reload): shown in status and systemd's STATUS= until a reload succeeds.
    struct InputError {
        std::string message;
        std::time_t since = 0;
        bool fallback = false;  // the built-in defaults are in force (since the start)
    };
    std::optional<InputError> input_error_;
};

}  // namespace

int run_daemon(const DaemonOptions& options) {
    auto signals = block_signals();
    if (!signals) {
        log::error(signals.error().message());
        return kExitFailure;
    }
    // The control socket first: a second daemon started by mistake stops here,
    // before it touches the table the first one keeps.
    auto server = ctl::ControlServer::listen(options.control_socket);
    if (!server) {
        log::error(server.error().message());
        return kExitFailure;
    }
    auto session = open_kernel_session(options.table);
    if (!session) {
        log::error(session.error().message());
        return kExitFailure;
    }
    // Least privilege (common/privileges.h): the control and netlink sockets are open.
    if (auto dropped = drop_to(kDaemonCapabilities, kDaemonBoundingSet); !dropped) {
        log::error(dropped.error().message());
        return kExitFailure;
    }
    nft::Engine engine(session->socket);
    log::info(std::string("queue support: ") + nft::to_string(session->features.queue) +
              "; owned tables: " + (session->features.ownership ? "yes" : "no"));

    // The inputs first. A config, csf.conf or managed list that cannot be used puts the
    // built-in defaults in force instead; only accounts that cannot be read (the MTA's
    // uid unknown) end the daemon, with exit 2, which the unit does not restart on.
    Controller controller(options, engine, session->features, *server);
    auto inputs = controller.read_inputs();
    if (!inputs) {
        // Fail closed: a broken file at boot must not leave SMTP open until it is fixed.
        const Error why = inputs.error();
        log::error(why.message());
        inputs = controller.fallback_inputs(why);
        if (!inputs) {
            log::error(inputs.error().message());
            log::error(
                "nothing was changed in the kernel; a table left by a previous run stays in force");
            return kExitUsage;
        }
        log::warning(
            "enforcing the built-in defaults (every uid but root and the MTA's refused on 25, "
            "465, 587) until the configuration is fixed; it is read again when it changes");
    }
    if (auto started = controller.start(std::move(*inputs)); !started) {
        log::error(started.error().message());
        log::error(
            "nothing was changed in the kernel; a table left by a previous run stays in force");
        return kExitFailure;
    }
    if (!options.foreground) {
        if (auto r = detach(); !r) {
            log::error(r.error().message());
            return kExitFailure;
        }
    }
    return controller.run(signals->get());
}

}  // namespace smtpfence
