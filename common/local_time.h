// Local calendar days, for "today" (top, the uses of relay exceptions).
#pragma once

#include <ctime>

namespace smtpfence {

// Local midnight days_ahead days after the start of now's day (0: today's); UTC
// midnight when the local time cannot be had.
[[nodiscard]] inline std::time_t local_midnight(std::time_t now, int days_ahead = 0) {
    std::tm tm{};
    if (localtime_r(&now, &tm) == nullptr)
        return now - (now % 86400) + static_cast<std::time_t>(days_ahead) * 86400;
    tm.tm_hour = 0;
    tm.tm_min = 0;
    tm.tm_sec = 0;
    tm.tm_mday += days_ahead;
    tm.tm_isdst = -1;
    return std::mktime(&tm);
}

}  // namespace smtpfence
