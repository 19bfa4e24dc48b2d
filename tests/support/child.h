// Processes a test or benchmark forks: owned by a Child that kills and reaps them, so
// nothing outlives the run, and the steps a child takes before its work (enter a
// network namespace, become another uid, die with its parent), shared by tests/ and
// bench/. netns.h makes the namespaces, run.h runs commands to completion.
//
// The test and benchmark processes are single-threaded, so a forked child may use the
// heap; the helpers marked "in a forked child" avoid it all the same (some run right
// before exec).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fd.h"

namespace smtpfence::testing {

using Millis = std::chrono::milliseconds;
using Deadline = std::chrono::steady_clock::time_point;

class Netns;

// Polls pred every step until it holds or timeout passes; returns its last value.
bool wait_until(const std::function<bool()>& pred, Millis timeout, Millis step = Millis{20});

// A forked child owned by its parent: on destruction it is killed (SIGKILL) and
// reaped, so no run leaves a process behind.
class Child {
  public:
    Child() = default;
    explicit Child(pid_t pid) : pid_(pid) {}
    Child(Child&& other) noexcept;
    Child& operator=(Child&& other) noexcept;
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child() { kill_and_reap(); }

    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] bool valid() const { return pid_ > 0; }
    // False once the child has exited (it is reaped then).
    [[nodiscard]] bool running();
    // The wait status once the child exited within timeout.
    [[nodiscard]] std::optional<int> wait_for(Millis timeout);
    // Waits as long as it takes; the wait status.
    [[nodiscard]] Result<int> wait();
    void signal(int sig) const;
    // SIGKILL to the child's process group and to the child, then reap.
    void kill_and_reap();
    // The wait status of an exited child (-1: reaped by someone else).
    [[nodiscard]] std::optional<int> status() const { return status_; }

  private:
    pid_t pid_ = -1;
    std::optional<int> status_;
};

// Human-readable wait status: "exited with 1", "killed by signal 9".
[[nodiscard]] std::string describe_status(int wait_status);

// Alive, as opposed to gone or a zombie nobody reaped (a killed run whose parent does
// not wait for it).
[[nodiscard]] bool process_alive(pid_t pid);

// PPid of a process (from /proc/PID/status), 0 when it is gone.
[[nodiscard]] pid_t parent_of(pid_t pid);

// The entries of dir named "<prefix>-<pid>-..." whose process is gone: what a run
// killed before its destructors ran left behind, for the next run to remove.
[[nodiscard]] std::vector<std::string> left_by_dead_runs(const std::string& dir,
                                                         const std::string& prefix);

struct Credentials {
    std::string name;  // for messages only
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups (setgroups)
};

// ---- in a forked child ---------------------------------------------------------------

// Enters the network namespace ns_fd (CLONE_NEWNET only: mounts and pids stay); true
// at once when ns_fd is negative.
bool enter_netns(int ns_fd);
// Becomes creds, as the kernel then sees the process's sockets: groups first (needs
// CAP_SETGID), then gid, then uid (after which nothing else may be changed).
bool become(const Credentials& creds);
// Dies with sig when parent (the test or benchmark process, its pid taken before fork)
// dies, so a killed run leaves no process behind. False when prctl failed or parent
// died before it took effect. A change of credentials clears the setting: call it after.
bool die_with_parent(pid_t parent, int sig);
// Closes every descriptor but those in keep (at most 8), so that no child holds another
// one's pipe open (a pipe's reader sees EOF only when every writer is gone).
void close_other_fds(std::initializer_list<int> keep);
// The char* view of a vector<string> for execv, built before fork.
struct Argv {
    explicit Argv(const std::vector<std::string>& args);
    std::vector<char*> ptrs;  // null-terminated
};
// Writes all of buf, retrying on EINTR and short writes.
bool write_all(int fd, const void* buf, std::size_t len);
void write_text(int fd, const char* text);

// ---- the parent's end ----------------------------------------------------------------

struct Pipe {
    UniqueFd read;
    UniqueFd write;
};
// pipe2(O_CLOEXEC).
[[nodiscard]] Result<Pipe> make_pipe();

// Whether fd became readable (or its writers are gone) before deadline.
[[nodiscard]] bool wait_readable(int fd, Deadline deadline);
// Reads exactly len bytes before deadline; false on timeout or end of file.
[[nodiscard]] bool read_exact(int fd, void* buf, std::size_t len, Deadline deadline);
// Reads everything until EOF or deadline from fd, appending to out. True on EOF.
bool read_until_eof(int fd, std::string& out, Deadline deadline);

// Forks a child that runs body and exits with what it returns (125 when it throws: an
// exception must not unwind into the parent's code in this copy of it). body runs in
// the forked copy of this single-threaded process: it may use the heap but must end by
// returning or by _exit.
template <class Body>
[[nodiscard]] Result<Child> spawn(Body&& body);

// spawn, with the child set to die with this process (SIGKILL) and inside ns before
// body runs; it exits with 127 when either failed.
template <class Body>
[[nodiscard]] Result<Child> spawn_in(const Netns& ns, Body&& body);

// ---------------------------------------------------------------------------------
// Implementation of the templates.

namespace detail {
// die_with_parent(parent, SIGKILL) and enter_netns(ns) in a just-forked child.
bool enter_child(const Netns& ns, pid_t parent);
}  // namespace detail

template <class Body>
Result<Child> spawn(Body&& body) {
    const pid_t pid = ::fork();
    if (pid < 0) {
        return fail(errno, "fork");
    }
    if (pid == 0) {
        int code = 125;
        try {
            code = body();
        } catch (...) {
            code = 125;
        }
        ::_exit(code);
    }
    return Child(pid);
}

template <class Body>
Result<Child> spawn_in(const Netns& ns, Body&& body) {
    const pid_t parent = ::getpid();
    return spawn([&]() -> int { return detail::enter_child(ns, parent) ? body() : 127; });
}

}  // namespace smtpfence::testing
