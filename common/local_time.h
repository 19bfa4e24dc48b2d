// Local calendar days, for "today" (top, the uses of relay exceptions).
#pragma once

#include <cstdint>
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

// The local calendar day of t as a day number (days since 1970-01-01 of that date's
// y-m-d, whatever the zone), the key of the history's daily totals; UTC's day when the
// local time cannot be had.
[[nodiscard]] inline std::int64_t local_day(std::time_t t) {
    std::tm tm{};
    if (localtime_r(&t, &tm) == nullptr)
        return static_cast<std::int64_t>(t / 86400);
    // Howard Hinnant's days_from_civil.
    const std::int64_t y = static_cast<std::int64_t>(tm.tm_year) + 1900 - (tm.tm_mon < 2 ? 1 : 0);
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const std::int64_t yoe = y - era * 400;
    const std::int64_t m = tm.tm_mon + 1;
    const std::int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + tm.tm_mday - 1;
    const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

}  // namespace smtpfence
