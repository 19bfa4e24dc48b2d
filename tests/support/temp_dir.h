// A temporary directory of a test or benchmark, removed with its content when dropped.
// Its name holds the pid of the process that made it, PARENT/PREFIX-PID-XXXXXX, so that
// the next run with that prefix removes what a run killed before its destructors ran
// left behind.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>

#include "common/error.h"

namespace smtpfence::testing {

struct TempDirSpec {
    std::string prefix = "sft";
    // /tmp, not TMPDIR: the directory of a root test is read by the unprivileged uids
    // the test runs as, who may not be able to enter TMPDIR.
    std::string parent = "/tmp";
    // 0755 for those uids; 0700 for a directory only its owner reads.
    mode_t mode = 0755;
};

// Once per parent and prefix in a process: removes the directories of runs that are
// gone (killed before their destructors ran). TempDir::create does it first.
void remove_stale_dirs(const TempDirSpec& spec);

// The directories of the unit tests: private, under TMPDIR (or /tmp).
[[nodiscard]] TempDirSpec unit_test_dir();

class TempDir {
  public:
    [[nodiscard]] static Result<TempDir> create(const TempDirSpec& spec = {});
    // A unit test's directory (unit_test_dir()), for fixtures and tests that cannot
    // handle an error: the process aborts when it cannot be made (a test without its
    // directory would write elsewhere).
    TempDir();
    TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
    TempDir& operator=(TempDir&&) = delete;
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir();

    [[nodiscard]] const std::string& path() const { return path_; }
    // Writes (replaces) path()/name, bytes as given, and returns its full path.
    std::string write(const std::string& name, const std::string& content) const;

  private:
    explicit TempDir(std::string path) : path_(std::move(path)) {}
    std::string path_;
};

// The whole content of a file; empty when it cannot be read.
[[nodiscard]] std::string read_file(const std::string& path);

}  // namespace smtpfence::testing
