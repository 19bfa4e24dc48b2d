// systemd's service notification protocol (sd_notify(3), through libsystemd): the unit
// is Type=notify, so systemd considers smtpfenced started only once ready() says the
// rules are in the kernel. Every call is a no-op when not started by systemd
// (NOTIFY_SOCKET unset), e.g. in the tests or a shell.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace smtpfence::service {

void ready(const std::string& status);
void reloading();  // then ready() again once the reload is done (or failed)
void stopping();
void status(const std::string& status);

// Half the WatchdogSec systemd asked for (WATCHDOG_USEC), or nullopt without one.
[[nodiscard]] std::optional<std::chrono::milliseconds> watchdog_interval();
void watchdog();

}  // namespace smtpfence::service
