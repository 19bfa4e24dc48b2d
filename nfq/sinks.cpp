#include "nfq/sinks.h"

#include <algorithm>

#include "common/journal.h"
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

void JournalSink::explained(const Attempt& a) {
    if (!admit())
        return;
    journal::Entry e{journal::Kind::Attempt, log::Level::Notice, {}, {}};
    e.message = "direct SMTP attempt refused: uid " + std::to_string(a.uid) + " (" +
                printable(a.user.empty() ? "no account" : a.user) + ", account " +
                printable(a.account) + ") to " + printable(a.dst) + " port " +
                std::to_string(a.dport);
    e.add("ACCOUNT", a.account).add("USER", a.user).add("UID", a.uid);
    e.add("DESTINATION", a.dst).add("PORT", a.dport);
    if (a.identified) {
        e.message += " by pid " + std::to_string(a.pid) + " " + printable(a.exe) + " in " +
                     printable(a.cwd) + ": " + printable(a.cmdline.substr(0, 200));
        e.add("PID", static_cast<std::uint64_t>(a.pid));
        e.add("EXE", a.exe).add("CWD", a.cwd).add("CMDLINE", a.cmdline);
    } else {
        e.message += " (process already gone)";
    }
    journal::write(e);
}

void JournalSink::counted_only(const CountedOnly& c) {
    if (!admit())
        return;
    journal::Entry e{journal::Kind::Counted, log::Level::Notice, {}, {}};
    e.message = std::to_string(c.count) + " more direct SMTP attempt(s) refused for uid " +
                std::to_string(c.uid) + " (" + printable(c.user) + "), counted, not explained";
    e.add("ACCOUNT", c.account).add("USER", c.user).add("UID", c.uid).add("COUNT", c.count);
    journal::write(e);
}

bool JournalSink::admit() {
    const auto now = std::chrono::steady_clock::now();
    tokens_ =
        std::min(kBurst, tokens_ + kRate * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    if (tokens_ < 1.0) {
        ++suppressed_;
        return false;
    }
    tokens_ -= 1.0;
    if (suppressed_ > 0) {
        log::notice(std::to_string(suppressed_) +
                    " attempt journal entries suppressed (rate limit; the history has them all)");
        suppressed_ = 0;
    }
    return true;
}

}  // namespace smtpfence::nfq
