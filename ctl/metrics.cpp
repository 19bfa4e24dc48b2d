#include "ctl/metrics.h"

#include <charconv>
#include <system_error>

namespace smtpfence {
namespace {

class Writer {
  public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += "# HELP smtpfence_";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE smtpfence_";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    void sample(std::string_view name, std::string_view labels, const std::string& value) {
        out_ += "smtpfence_";
        out_ += name;
        if (!labels.empty()) {
            out_ += '{';
            out_ += labels;
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }
    void one(std::string_view name, std::string_view type, std::string_view help,
             const std::string& value) {
        family(name, type, help);
        sample(name, {}, value);
    }
    [[nodiscard]] std::string take() { return std::move(out_); }

  private:
    std::string out_;
};

std::string number(std::uint64_t v) {
    return std::to_string(v);
}

std::string flag(bool v) {
    return v ? "1" : "0";
}

// Seconds with microseconds: the apply is timed with steady_clock in microseconds.
std::string seconds(double v) {
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, 6);
    return ec == std::errc{} ? std::string(buf, end) : std::string("NaN");
}

// The length of the valid UTF-8 sequence at value[i], 0 when there is none (overlong
// forms and surrogates are invalid too, as for Prometheus' parser, Go's utf8.Valid).
std::size_t utf8_length(std::string_view value, std::size_t i) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(value[k]); };
    const unsigned first = byte(i);
    if (first < 0x80)
        return 1;
    std::size_t n = 0;
    unsigned lo = 0x80;
    unsigned hi = 0xBF;
    if (first >= 0xC2 && first <= 0xDF) {
        n = 2;
    } else if (first >= 0xE0 && first <= 0xEF) {
        n = 3;
        lo = first == 0xE0 ? 0xA0 : lo;
        hi = first == 0xED ? 0x9F : hi;
    } else if (first >= 0xF0 && first <= 0xF4) {
        n = 4;
        lo = first == 0xF0 ? 0x90 : lo;
        hi = first == 0xF4 ? 0x8F : hi;
    } else {
        return 0;
    }
    if (i + n > value.size() || byte(i + 1) < lo || byte(i + 1) > hi)
        return 0;
    for (std::size_t k = 2; k < n; ++k) {
        if (byte(i + k) < 0x80 || byte(i + k) > 0xBF)
            return 0;
    }
    return n;
}

}  // namespace

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size();) {
        const std::size_t n = utf8_length(value, i);
        if (n == 0) {
            // One byte that is not UTF-8 would make the whole scrape fail.
            out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
            ++i;
            continue;
        }
        if (n > 1) {
            out.append(value.substr(i, n));
            i += n;
            continue;
        }
        const char c = value[i++];
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '"') {
            out += "\\\"";
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string render_metrics(const MetricsSnapshot& m) {
    Writer w;
    w.family("build_info", "gauge", "The smtpfenced version writing this file (always 1).");
    w.sample("build_info", "version=\"" + escape_label_value(m.version) + "\"", "1");
    w.one("enforcing", "gauge",
          "1 while a policy is enforced (SMTP_BLOCK on, the table not removed and in the kernel).",
          flag(m.enforcing));
    w.one("config_error", "gauge",
          "1 while the configuration could not be used or the last apply failed.",
          flag(m.config_error));
    w.one("table_present", "gauge", "1 while smtpfence's nftables table is in the kernel.",
          flag(m.table_present));
    w.one("table_owned", "gauge", "1 while the table is owned by the daemon (NFT_TABLE_F_OWNER).",
          flag(m.table_owned));
    w.one("self_heals_total", "counter", "Restores of the table after foreign changes.",
          number(m.self_heals));
    w.one("self_heal_failures_total", "counter", "Restores of the table that failed.",
          number(m.self_heal_failures));
    w.one("worker_up", "gauge", "1 while the NFQUEUE worker runs and has said it is ready.",
          flag(m.worker_up));
    w.one("worker_restarts_total", "counter", "Restarts of the NFQUEUE worker.",
          number(m.worker_restarts));
    if (m.queue) {
        w.one("queue_waiting", "gauge", "Packets waiting in the NFQUEUE for the worker.",
              number(m.queue->waiting));
        w.one("queue_dropped_total", "counter",
              "Packets the kernel dropped because the NFQUEUE was full.", number(m.queue->dropped));
        w.one("queue_user_dropped_total", "counter",
              "Packets the kernel could not hand to the worker (its socket buffer was full).",
              number(m.queue->user_dropped));
    }
    w.family("attempts_total", "counter",
             "Refused SMTP connection attempts per account, from the kernel's counters.");
    for (const MetricsSnapshot::Account& a : m.attempts) {
        w.sample("attempts_total",
                 "account=\"" + escape_label_value(a.account) + "\",uid=\"" +
                     std::to_string(a.uid) + "\"",
                 number(a.attempts));
    }
    if (m.explained) {
        w.one("attempts_explained_total", "counter",
              "Refused attempts the worker recorded with their process (the history's total).",
              number(*m.explained));
    }
    w.one("allowed_uids", "gauge", "Uids allowed to send SMTP.", number(m.allowed_uids));
    w.one("allowed_gids", "gauge", "Gids allowed to send SMTP.", number(m.allowed_gids));
    w.one("destination_exceptions", "gauge", "Relay exceptions (SMTP_ALLOWDEST) in force.",
          number(m.destination_exceptions));
    if (m.last_apply_seconds) {
        w.one("last_apply_duration_seconds", "gauge",
              "How long the last successful apply of the policy took.",
              seconds(*m.last_apply_seconds));
        w.one("last_apply_timestamp_seconds", "gauge",
              "When the last successful apply of the policy ended (Unix time).",
              number(static_cast<std::uint64_t>(m.last_apply_at)));
    }
    return w.take();
}

}  // namespace smtpfence
