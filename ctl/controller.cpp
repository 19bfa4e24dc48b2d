// smtpfenced's main loop: keeps the policy in the kernel, the worker running and the
// allowlist in step with the accounts, and answers the control socket.
#include "ctl/controller.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <vector>

#include "common/fd.h"
#include "common/log.h"
#include "common/privileges.h"
#include "csf-compat/csf_rules.h"
#include "ctl/children.h"
#include "ctl/connect_test.h"
#include "ctl/service_notify.h"
#include "nft/netlink.h"

namespace smtpfence {
namespace {

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

}  // namespace

Controller::Controller(const DaemonOptions& options, nft::Engine& engine,
                       const KernelFeatures& kernel, ctl::ControlServer& server)
    : options_(options),
      engine_(engine),
      kernel_(kernel),
      server_(server),
      accounts_watch_({options.passwd_path, options.group_path, managed_allow_path(options)}),
      config_watch_(policy_files(options)),
      worker_(options, kernel.queue),
      guard_(options.table, engine, state_),
      first_apply_(options, engine, state_, worker_),
      allowlist_(options, engine, kernel, state_, server),
      dest_(options, engine, state_),
      handlers_(options, engine, state_, worker_, guard_, allowlist_, dest_, server,
                [this] { return reload(); }),
      history_(options.state_dir),
      metrics_(options, engine, state_, worker_),
      alerts_(options.state_dir, options.passwd_path, options.group_path) {}

Result<Desired> Controller::read_inputs() {
    accounts_watch_.rearm();
    config_watch_.rearm();
    return compute_desired(options_, kernel_);
}

Result<Desired> Controller::fallback_inputs(const Error& why) {
    state_.input_error = InputError{why.message(), std::time(nullptr), true};
    journal_config_error(state_, why.message(), "start", why.message());
    return compute_fallback(options_, kernel_);
}

Result<void> Controller::start(Desired desired) {
    // Events first, so that nothing done to the table after our apply goes unseen.
    guard_.watch_events();
    worker_.hold_queue_before_apply(desired);
    dest_.prepare(desired);
    if (auto r = first_apply_.apply(desired); !r)
        return r;
    dest_.apply_succeeded();
    adopt(state_, std::move(desired), server_);
    look_for_csf_rules();
    return {};
}

int Controller::run(int signal_fd) {
    worker_.sync(state_);
    service::ready(state_.status_line());
    const auto watchdog = service::watchdog_interval();
    auto next_ping = std::chrono::steady_clock::now();
    auto next_watch = std::chrono::steady_clock::now();
    while (true) {
        if (watchdog && std::chrono::steady_clock::now() >= next_ping) {
            service::watchdog();
            next_ping = std::chrono::steady_clock::now() + *watchdog;
        }
        std::vector<pollfd> fds{{signal_fd, POLLIN, 0}};
        const bool events = guard_.has_events();
        if (events)
            fds.push_back({guard_.events_fd(), POLLIN, 0});
        server_.add_pollfds(fds);
        dest_.add_pollfds(fds);
        const int ready = ::poll(fds.data(), fds.size(), poll_timeout(watchdog, next_ping));
        if (ready < 0 && errno != EINTR) {
            log::error("poll: " + errno_text(errno));
            return kExitFailure;
        }
        if (ready > 0 && fds[0].revents != 0) {
            if (auto code = on_signal(signal_fd))
                return *code;
        }
        if (ready > 0 && events && fds[1].revents != 0)
            guard_.on_events();
        // Whatever poll() returned: a lookup whose wait ran out is c-ares' to handle.
        dest_.process(fds);
        if (ready > 0) {
            server_.process(fds, [this](const ctl::Request& r, const ctl::Peer& p, int fd) {
                return dispatch(r, p, fd);
            });
        }
        dest_.tick();
        if (std::chrono::steady_clock::now() >= next_watch) {
            next_watch = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            first_apply_.retry_if_due();
            guard_.check();
            watch_files();
            dest_.watch();
            if (state_.current)  // the settings in force (unchanged ones are a no-op)
                alerts_.configure(state_.current->loaded.policy.alert);
            alerts_.tick(engine_, options_.table, std::chrono::steady_clock::now(),
                         state_.current ? &state_.current->accounts : nullptr);
        }
        metrics_.tick();
    }
}

// The file watches each second, the watchdog, the worker's restart, the control
// clients' deadlines and the DNS lookups and deadlines, whichever comes first.
int Controller::poll_timeout(std::optional<std::chrono::milliseconds> watchdog,
                             std::chrono::steady_clock::time_point next_ping) {
    int timeout = 1000;
    if (watchdog) {
        const auto until_ping = std::chrono::duration_cast<std::chrono::milliseconds>(
            next_ping - std::chrono::steady_clock::now());
        timeout = std::min<int>(timeout, std::max<int>(0, static_cast<int>(until_ping.count())));
    }
    for (const int t : {worker_.tick(), server_.next_deadline_ms(), dest_.timeout_ms()}) {
        if (t >= 0)
            timeout = std::min(timeout, t);
    }
    return timeout;
}

// CSF's own SMTP_BLOCK rules (iptables chain SMTPOUTPUT) enforcing the same thing
// beside us: looked for at start and on each reload (it runs iptables-save), and
// explained in status and the log.
void Controller::look_for_csf_rules() {
    state_.csf_rules = csf::explain(csf::detect_csf_rules(), !options_.csf_conf_path.empty());
    if (!state_.csf_rules.empty())
        log::warning(state_.csf_rules);
}

std::optional<int> Controller::on_signal(int signal_fd) {
    signalfd_siginfo info{};
    if (::read(signal_fd, &info, sizeof info) != sizeof info)
        return std::nullopt;
    if (info.ssi_signo == SIGCHLD) {
        (void)reap_children(
            {[this](pid_t pid, int status) { return worker_.ended(pid, status); },
             [this](pid_t pid, int) { return history_.ended(pid); },
             [this](pid_t pid, int) { return alerts_.ended(pid); },
             [this](pid_t pid, int) { return std::erase(test_children_, pid) > 0; }});
        return std::nullopt;
    }
    if (info.ssi_signo == SIGHUP) {
        log::notice("SIGHUP: reloading " + policy_files(options_).front());
        (void)reload();  // a failure is journalled (config_error) by reload
        return std::nullopt;
    }
    // SIGTERM / SIGINT: the table stays; stopping the daemon never opens SMTP.
    service::stopping();
    worker_.stop();
    log::notice("exiting on signal " + std::to_string(info.ssi_signo) + "; table inet " +
                options_.table + " stays in force");
    return kExitOk;
}

Result<void> Controller::reload() {
    service::reloading();
    accounts_watch_.rearm();
    config_watch_.rearm();
    auto desired = compute_desired(options_, kernel_);
    if (desired) {
        worker_.hold_queue_before_apply(*desired);
        dest_.prepare(*desired);
        if (auto r = apply_timed(engine_, options_, *desired, state_); !r)
            desired = std::unexpected(r.error());
        else
            dest_.apply_succeeded();
    }
    if (!desired) {
        // Still the defaults when a start fell back on them; else the last good load.
        const bool fallback = state_.input_error && state_.input_error->fallback;
        state_.input_error = InputError{desired.error().message(), std::time(nullptr), fallback};
        journal_config_error(
            state_, desired.error().message(), "reload",
            "reload failed: " + desired.error().message() + "; the rules in force are unchanged");
        service::ready(state_.status_line());
        return std::unexpected(desired.error());
    }
    state_.input_error.reset();
    state_.retry.reset();
    state_.removed = false;
    adopt(state_, std::move(*desired), server_);
    look_for_csf_rules();
    worker_.sync(state_);
    service::ready(state_.status_line());
    return {};
}

void Controller::watch_files() {
    if (config_watch_.changed()) {
        log::notice(policy_files(options_).front() + " changed: reloading");
        (void)reload();  // a failure is journalled (config_error) by reload
        return;
    }
    if (accounts_watch_.changed())
        refresh_accounts();
}

void Controller::refresh_accounts() {
    if (auto r = allowlist_.refresh(); !r) {
        log::error("re-resolving the allowlist failed: " + r.error().message() +
                   "; the rules in force are unchanged");
        return;
    }
    if (auto r = dest_.replan(); !r) {
        log::error("re-planning the destination exceptions failed: " + r.error().message() +
                   "; the elements in force are unchanged");
    }
}

std::optional<std::string> Controller::dispatch(const ctl::Request& r, const ctl::Peer& peer,
                                                int client_fd) {
    log::info("control: " + std::string(ctl::to_string(r.command)) + " from uid " +
              std::to_string(peer.uid));
    if (r.command == ctl::Command::Test) {
        auto started = start_connect_test(state_, options_.passwd_path, r, client_fd);
        if (started) {
            test_children_.push_back(*started);
            return std::nullopt;  // the child answers
        }
        return ctl::encode_error(started.error());
    }
    if (r.command == ctl::Command::Attempts || r.command == ctl::Command::Top) {
        // The scope and the limits follow who asks (HistoryQueries::start).
        const HistoryPeer who{.uid = peer.uid, .admin = ctl::is_admin(server_.access(), peer)};
        auto started = history_.start(r, who, client_fd);
        if (started)
            return std::nullopt;  // the child answers
        return ctl::encode_error(started.error());
    }
    Answer a = handlers_.answer(r);
    return a ? ctl::encode_ok(*a) : ctl::encode_error(a.error());
}

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
    // The control socket is ours, so no other daemon runs: a worker an earlier one left
    // running holds our queue. Ended while we may still read its /proc entries.
    end_stale_workers(options.table, options.state_dir);
    // Least privilege (common/privileges.h): the control and netlink sockets are open.
    if (auto dropped = drop_to(kDaemonCapabilities, kDaemonBoundingSet); !dropped) {
        log::error(dropped.error().message());
        return kExitFailure;
    }
    nft::Engine engine(session->socket);
    log::info(describe_kernel(session->features));

    // The inputs first. A config, csf.conf or managed list that cannot be used puts the
    // built-in defaults in force instead; only accounts that cannot be read (the MTA's
    // uid unknown) end the daemon, with exit 2, which the unit does not restart on.
    Controller controller(options, engine, session->features, *server);
    auto inputs = controller.read_inputs();
    if (!inputs) {
        // Fail closed: a broken file at boot must not leave SMTP open until it is fixed.
        const Error why = inputs.error();
        inputs = controller.fallback_inputs(why);  // journals the error (config_error)
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
        log::error("nothing was changed in the kernel");
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
