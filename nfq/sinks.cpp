#include "nfq/sinks.h"

#include <algorithm>

#include "common/log.h"

namespace smtpfence::nfq {

std::string printable(const std::string& s) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f && c != '\\') {
            out.push_back(c);
        } else {
            out += "\\x";
            out.push_back(kHex[u >> 4U]);
            out.push_back(kHex[u & 0xfU]);
        }
    }
    return out;
}

void SyslogSink::explained(const Attempt& a) {
    std::string line = "direct SMTP attempt refused: uid " + std::to_string(a.uid) + " (" +
                       printable(a.user.empty() ? "no account" : a.user) + ", account " +
                       printable(a.account) + ") to " + printable(a.dst) + " port " +
                       std::to_string(a.dport);
    if (a.identified) {
        line += " by pid " + std::to_string(a.pid) + " " + printable(a.exe) + " in " +
                printable(a.cwd) + ": " + printable(a.cmdline.substr(0, 200));
    } else {
        line += " (process already gone)";
    }
    emit(line);
}

void SyslogSink::counted_only(const CountedOnly& c) {
    emit(std::to_string(c.count) + " more direct SMTP attempt(s) refused for uid " +
         std::to_string(c.uid) + " (" + printable(c.user) + "), counted, not explained");
}

void SyslogSink::emit(const std::string& line) {
    const auto now = std::chrono::steady_clock::now();
    tokens_ =
        std::min(kBurst, tokens_ + kRate * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    if (tokens_ < 1.0) {
        ++suppressed_;
        return;
    }
    tokens_ -= 1.0;
    if (suppressed_ > 0) {
        log::notice(std::to_string(suppressed_) + " attempt log line(s) suppressed (rate limit)");
        suppressed_ = 0;
    }
    log::notice(line);
}

}  // namespace smtpfence::nfq
