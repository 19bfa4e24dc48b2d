// The attempt stream: JSON lines at STATE_DIR/attempts.jsonl, one object per explained
// attempt and per counted-only summary, for log shippers (docs/history.md). Never read
// back: the history (nfq/history_store.h) is the record and the worker's memory.
// Written defensively: whole lines, escaped strings, nothing planted in the state
// directory followed (the reasons are in attempt_log.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/fd.h"
#include "nfq/attempt.h"

namespace smtpfence::nfq {

class AttemptLog final : public AttemptSink {
  public:
    // max_bytes: when the file grows past it, it is renamed to attempts.jsonl.1 (the
    // previous .1 is dropped), so the stream never holds more than about 2 * max_bytes.
    [[nodiscard]] static Result<AttemptLog> open(const std::string& state_dir,
                                                 std::uint64_t max_bytes = kDefaultMaxBytes);

    void explained(const Attempt& attempt) override;
    void counted_only(const CountedOnly& record) override;
    void checkpoint(const Checkpoint&) override {}  // the history's alone
    [[nodiscard]] std::uint64_t write_errors() const { return write_errors_; }
    [[nodiscard]] const std::string& path() const { return path_; }

    static constexpr std::uint64_t kDefaultMaxBytes = 16ULL << 20U;
    // The file names in the state directory.
    static constexpr const char* kFileName = "attempts.jsonl";
    static constexpr const char* kRotatedFileName = "attempts.jsonl.1";

  private:
    AttemptLog(std::string dir, std::string path, UniqueFd dir_fd, UniqueFd fd,
               std::uint64_t max_bytes, std::uint64_t size)
        : dir_(std::move(dir)),
          path_(std::move(path)),
          dir_fd_(std::move(dir_fd)),
          fd_(std::move(fd)),
          max_bytes_(max_bytes),
          size_(size),
          rotate_at_(max_bytes) {}
    void write_line(const std::string& line);
    void rotation_failed(const std::string& what);
    void rotate();

    std::string dir_;
    std::string path_;
    UniqueFd dir_fd_;  // the state directory, opened once without following a symlink
    UniqueFd fd_;
    std::uint64_t max_bytes_;
    std::uint64_t size_;
    std::uint64_t rotate_at_;  // max_bytes_, or later while rotation fails
    std::uint64_t write_errors_ = 0;
    bool write_failing_ = false;     // the last write failed (warned once)
    bool rotation_failing_ = false;  // the last rotation failed (warned once)
};

// JSON text of records, shared by the log and by tests.
[[nodiscard]] std::string to_json_line(const Attempt& a);
[[nodiscard]] std::string to_json_line(const CountedOnly& c);
[[nodiscard]] std::string to_json_line(const Checkpoint& c);

// ISO 8601 UTC ("2026-12-01T14:30:00Z").
[[nodiscard]] std::string iso_time(std::time_t t);

}  // namespace smtpfence::nfq
