#include "ctl/children.h"

#include <sys/wait.h>

#include <cerrno>
#include <string>

#include "common/log.h"

namespace smtpfence {

std::size_t reap_children(std::initializer_list<ChildOwner> owners) {
    std::size_t unclaimed = 0;
    while (true) {
        int status = 0;
        const pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)  // none ended (0) or none left (ECHILD)
            return unclaimed;
        bool claimed = false;
        for (const ChildOwner& owner : owners) {
            if ((claimed = owner(pid, status)))
                break;
        }
        if (!claimed) {
            ++unclaimed;
            log::debug("reaped child pid " + std::to_string(pid) + ", not the daemon's own");
        }
    }
}

}  // namespace smtpfence
