// The worker's sinks besides the history, the stream and DirectAdmin's files: the
// journal's rate-limited entries, and the fan-out that hands every record to each sink.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "nfq/attempt.h"

namespace smtpfence::nfq {

// A log line must not carry a user's control characters into the journal or a
// terminal: every byte outside printable ASCII is shown as \xNN. Not text::printable,
// which writes a backslash as \\ and a tab as \t and cuts at 80 characters: the
// journal's lines keep their form (a command line is shown up to 200 bytes).
[[nodiscard]] std::string printable(const std::string& s);

// One journal entry per attempt and per counted batch (common/journal.h: kinds
// attempt and counted, their fields in docs/journal.md; a log line without a journal),
// at most kRate a second with a burst of kBurst; what is held back is said in one
// line afterwards. journald drops a flood itself, unsaid, and the history keeps every
// record anyway.
class JournalSink final : public AttemptSink {
  public:
    void explained(const Attempt& a) override;
    void counted_only(const CountedOnly& c) override;
    void checkpoint(const Checkpoint&) override {}

  private:
    static constexpr double kRate = 10.0;
    static constexpr double kBurst = 20.0;
    // Whether the rate allows one more entry now (and says what was held back).
    [[nodiscard]] bool admit();

    double tokens_ = kBurst;
    std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
    std::uint64_t suppressed_ = 0;
};

// Every record goes to each sink in turn: the history (the record, and the worker's
// memory), the JSON-lines stream, the journal, and DirectAdmin's files when that
// pipeline is on.
class Sinks final : public AttemptSink {
  public:
    void add(AttemptSink& sink) { sinks_.push_back(&sink); }
    void explained(const Attempt& a) override {
        for (AttemptSink* sink : sinks_)
            sink->explained(a);
    }
    void counted_only(const CountedOnly& c) override {
        for (AttemptSink* sink : sinks_)
            sink->counted_only(c);
    }
    void checkpoint(const Checkpoint& cp) override {
        for (AttemptSink* sink : sinks_)
            sink->checkpoint(cp);
    }

  private:
    std::vector<AttemptSink*> sinks_;
};

}  // namespace smtpfence::nfq
