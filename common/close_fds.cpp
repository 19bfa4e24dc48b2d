#include "common/close_fds.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "common/syscalls.h"

namespace smtpfence {

void close_fds(unsigned first, unsigned last) {
    if (first > last)
        return;
    if (::syscall(SYS_close_range, first, last, 0U) == 0)
        return;
    close_fds_one_by_one(first, last);
}

void close_fds_one_by_one(unsigned first, unsigned last) {
    if (first > last)
        return;
    if (DIR* dir = ::opendir("/proc/self/fd")) {
        // Listed first, closed after: closing while reading would change the listing.
        std::vector<int> open;
        const int own = ::dirfd(dir);
        while (const dirent* e = ::readdir(dir)) {
            char* end = nullptr;
            errno = 0;
            const unsigned long fd = std::strtoul(e->d_name, &end, 10);
            if (errno != 0 || end == e->d_name || *end != '\0')
                continue;  // "." and ".."
            if (fd >= first && fd <= last && static_cast<int>(fd) != own)
                open.push_back(static_cast<int>(fd));
        }
        ::closedir(dir);
        for (const int fd : open)
            ::close(fd);
        return;
    }
    // Without /proc: every number up to the soft limit, which a container may set to
    // 2^30; a million close() calls (a fraction of a second) is as far as this goes.
    constexpr rlim_t kMaxTried = rlim_t{1} << 20U;
    rlimit lim{};
    rlim_t top = 1024;
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0)
        top = lim.rlim_cur == RLIM_INFINITY ? kMaxTried : std::min(lim.rlim_cur, kMaxTried);
    for (rlim_t fd = first; fd <= last && fd < top; ++fd)
        ::close(static_cast<int>(fd));
}

}  // namespace smtpfence
