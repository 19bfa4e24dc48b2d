// A real DNS server for tests: Debian's dnsmasq (dnsmasq-base) in a namespace the test
// made, on one address, answering only what the test gives it (no resolv.conf, no
// /etc/hosts). Records come as dnsmasq options (--host-record, --cname, --local, ...)
// and from a hosts file the test may rewrite; reload() (SIGHUP) re-reads that file.
#pragma once

#include <string>
#include <vector>

#include "common/error.h"
#include "tests/support/child.h"
#include "tests/support/netns.h"

namespace smtpfence::testing {

class Dnsmasq {
  public:
    // Starts dnsmasq in ns on address:53 and returns once it listens there. Its query
    // log goes to log_path.
    [[nodiscard]] static Result<Dnsmasq> start(const Netns& ns, const std::string& address,
                                               const std::string& log_path,
                                               const std::vector<std::string>& records);
    // Re-reads --addn-hosts files (dnsmasq keeps everything else).
    void reload() const;
    // Stops answering at once (SIGKILL): lookups time out from now on.
    void kill() { child_ = Child(); }
    [[nodiscard]] const std::string& log_path() const { return log_path_; }

  private:
    Dnsmasq(Child child, std::string log_path)
        : log_path_(std::move(log_path)), child_(std::move(child)) {}
    std::string log_path_;
    Child child_;
};

}  // namespace smtpfence::testing
