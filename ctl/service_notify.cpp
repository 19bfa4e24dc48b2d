#include "ctl/service_notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <algorithm>
#include <cstdint>

#include "common/error.h"
#include "common/log.h"

namespace smtpfence::service {
namespace {

void notify(const std::string& state) {
    // < 0: the socket is there but refused us; there is nothing better to do than say so.
    if (const int r = sd_notify(0, state.c_str()); r < 0)
        log::warning("sd_notify: " + errno_text(-r));
}

// Status lines are single lines in `systemctl status`.
std::string one_line(std::string s) {
    for (char& c : s) {
        if (c == '\n' || c == '\r')
            c = ' ';
    }
    return s;
}

}  // namespace

void ready(const std::string& status) {
    notify("READY=1\nSTATUS=" + one_line(status));
}

void reloading() {
    timespec now{};
    (void)::clock_gettime(CLOCK_MONOTONIC, &now);
    const auto usec = static_cast<std::uint64_t>(now.tv_sec) * 1000000U +
                      static_cast<std::uint64_t>(now.tv_nsec) / 1000U;
    notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void stopping() {
    notify("STOPPING=1");
}

void status(const std::string& status) {
    notify("STATUS=" + one_line(status));
}

std::optional<std::chrono::milliseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return std::nullopt;
    return std::chrono::milliseconds(std::max<std::uint64_t>(usec / 2000, 1));
}

void watchdog() {
    notify("WATCHDOG=1");
}

}  // namespace smtpfence::service
