// Linux system call numbers that older C libraries do not define (glibc 2.28 on EL8
// knows none of these). Since Linux 5.1 every architecture but alpha gives a new
// call the same number (asm-generic/unistd.h, 424 onward), so these are the numbers
// everywhere this builds; a kernel without the call answers ENOSYS.
#pragma once

#include <sys/syscall.h>

#if defined(__alpha__)
#error "alpha numbers its system calls differently: define them here first"
#endif

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
