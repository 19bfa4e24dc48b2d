// Closing every file descriptor of a range in a child about to run something else:
// close_range(2) where the kernel has it (Linux 5.9), else each open one /proc/self/fd
// lists (EL8's 4.18 kernel; its glibc 2.28 does not even declare close_range, so the
// system call is made by number: common/syscalls.h).
#pragma once

namespace smtpfence {

// Closes the open descriptors first..last (inclusive). For a forked child: it does not
// report errors (there is nothing to roll back), and it allocates only when it falls
// back to reading /proc/self/fd.
void close_fds(unsigned first, unsigned last);

// The fallback alone, for the tests: /proc/self/fd, or every number up to the soft
// RLIMIT_NOFILE when /proc is not mounted.
void close_fds_one_by_one(unsigned first, unsigned last);

}  // namespace smtpfence
