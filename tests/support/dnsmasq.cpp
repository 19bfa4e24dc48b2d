#include "tests/support/dnsmasq.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>

#include "tests/support/run.h"
#include "tests/support/temp_dir.h"

namespace smtpfence::testing {

Result<Dnsmasq> Dnsmasq::start(const Netns& ns, const std::string& address,
                               const std::string& log_path,
                               const std::vector<std::string>& records) {
    const std::string path = find_program("dnsmasq");
    if (path.empty())
        return fail(ENOENT, "dnsmasq", "not installed (scripts/install-deps: dnsmasq-base)");
    std::vector<std::string> args = {path,
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--port=53",
                                     "--listen-address=" + address,
                                     "--bind-interfaces",
                                     "--no-resolv",
                                     "--no-hosts",
                                     "--user=root",
                                     "--pid-file=",
                                     "--log-queries",
                                     "--log-facility=" + log_path};
    args.insert(args.end(), records.begin(), records.end());
    Argv argv(args);
    auto child = spawn_in(ns, [&]() -> int {
        ::execv(argv.ptrs[0], argv.ptrs.data());
        return 126;
    });
    if (!child)
        return std::unexpected(child.error());
    using namespace std::chrono_literals;
    const bool listening = wait_until(
        [&] {
            return child->running() &&
                   !run(ns, {"ss", "-Hlun", "src " + address + ":53"}).out.empty();
        },
        5000ms);
    if (!listening)
        return fail(0, "dnsmasq on " + address + " did not start", read_file(log_path));
    return Dnsmasq(std::move(*child), log_path);
}

void Dnsmasq::reload() const {
    child_.signal(SIGHUP);
}

}  // namespace smtpfence::testing
