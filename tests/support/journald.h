// A private systemd-journald for tests: Debian's own /lib/systemd/systemd-journald,
// started in a mount namespace of its own in which a test directory is /run, so that
// its sockets (/run/systemd/journal/{socket,stdout}) and its volatile files
// (/run/log/journal) are the test's, never the host's journal. A program under test
// enters that mount namespace (enter_mountns in its forked child) and gets a stderr
// connected to this journald as systemd gives a service one (open_stream), so it sees
// a journal exactly as under systemd; the test reads the entries back with
// `journalctl -D`. PID 1 need not be systemd. docs/tests.md, "journald".
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "tests/support/child.h"

namespace smtpfence::testing {

class PrivateJournald {
  public:
    // Starts journald with dir (an empty test directory) as its /run and a journald.conf
    // of dir's keeping everything in memory-backed files, forwarding nothing, reading
    // neither the kernel's log nor audit. Returns once its sockets are there.
    [[nodiscard]] static Result<PrivateJournald> start(const std::string& dir,
                                                       Millis timeout = Millis{10000});
    PrivateJournald(PrivateJournald&&) noexcept = default;
    PrivateJournald& operator=(PrivateJournald&&) = delete;
    PrivateJournald(const PrivateJournald&) = delete;
    PrivateJournald& operator=(const PrivateJournald&) = delete;
    ~PrivateJournald();

    // journald's mount namespace (/proc/PID/ns/mnt, open), for enter_mountns.
    [[nodiscard]] int mount_ns() const { return mount_ns_.get(); }

    // A stream to journald's stdout socket with systemd's stream header (identifier,
    // priority 6, "<N>" prefixes understood), to be a program's stderr; journal_stream is
    // the JOURNAL_STREAM value ("DEVICE:INODE") that names it, as systemd sets it.
    struct Stream {
        UniqueFd fd;
        std::string journal_stream;
    };
    [[nodiscard]] Result<Stream> open_stream(const std::string& identifier) const;

    // The entries that match every "FIELD=value" of matches (journalctl's own
    // matching), in order, as `journalctl -D <files> -o json` prints them.
    [[nodiscard]] Result<std::vector<nlohmann::json>> entries(
        const std::vector<std::string>& matches = {}) const;
    // The folder of journald's files, for journalctl -D.
    [[nodiscard]] std::string files_dir() const { return dir_ + "/run/log/journal"; }
    [[nodiscard]] std::string journald_log() const;  // journald's own stderr

  private:
    PrivateJournald(std::string dir, Child child, UniqueFd mount_ns)
        : dir_(std::move(dir)), child_(std::move(child)), mount_ns_(std::move(mount_ns)) {}
    std::string dir_;
    Child child_;
    UniqueFd mount_ns_;
};

// In a forked child: enters the mount namespace ns_fd (setns CLONE_NEWNS; the child
// must be single-threaded, as a forked one is); true at once when ns_fd is negative.
bool enter_mountns(int ns_fd);

}  // namespace smtpfence::testing
