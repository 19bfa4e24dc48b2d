// The daemon's children (the worker, `test` children, history query children) are
// reaped in one place. An owner that reaped with waitpid(-1) would take the others'
// children and their status, and an owner that kept such a pid could later take the
// status of an unrelated child given the same pid.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <initializer_list>

namespace smtpfence {

// Told that pid ended with wait status; true when the child was its own.
using ChildOwner = std::function<bool(pid_t pid, int status)>;

// Reaps every child that has ended (waitpid(-1, WNOHANG) until none is left), each
// handed to the first owner that claims it; returns how many none claimed.
std::size_t reap_children(std::initializer_list<ChildOwner> owners);

}  // namespace smtpfence
