// `smtpfencectl test`: a real connection attempt made as another user, in a forked
// child that becomes that user and answers the client itself.
#pragma once

#include <sys/types.h>

#include <expected>
#include <string>

#include "ctl/daemon_state.h"
#include "ctl/protocol.h"

namespace smtpfence {

// Forks the child for request r (user, address, port) on client_fd and returns its pid
// (the daemon's reaper, ctl/children.h, reaps it); the child replies and exits. An
// unknown user or a failed fork is the error to send instead.
[[nodiscard]] std::expected<pid_t, ctl::ProtocolError> start_connect_test(
    const DaemonState& state, const std::string& passwd_path, const ctl::Request& r, int client_fd);

}  // namespace smtpfence
