// Timing and number formatting shared by the benchmarks' reports.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"

namespace smtpfence::bench {

// How long f (returning Result<void>) took, in seconds, or its error.
template <class F>
Result<double> timed(F&& f) {
    const auto start = std::chrono::steady_clock::now();
    Result<void> r = f();
    const auto end = std::chrono::steady_clock::now();
    if (!r) {
        return std::unexpected(r.error());
    }
    return std::chrono::duration<double>(end - start).count();
}

struct Spread {
    double median = 0;
    double min = 0;
    double max = 0;
};

inline Spread spread(std::vector<double> v) {
    if (v.empty()) {
        return {};
    }
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    const double median = n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    return {median, v.front(), v.back()};
}

__attribute__((format(printf, 1, 2))) inline std::string strf(const char* format, ...) {
    std::array<char, 1024> buf{};
    va_list args;
    va_start(args, format);
    (void)std::vsnprintf(buf.data(), buf.size(), format, args);
    va_end(args);
    return buf.data();
}

// Progress and errors, on stderr (the report is on stdout).
__attribute__((format(printf, 1, 2))) inline void note(const char* format, ...) {
    va_list args;
    va_start(args, format);
    (void)std::vfprintf(stderr, format, args);
    va_end(args);
}

// 128431.7 -> "128,432"
inline std::string grouped(double value) {
    const long long n = std::llround(value);
    const std::string digits = std::to_string(n < 0 ? -n : n);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) {
            out += ',';
        }
        out += digits[i];
    }
    return n < 0 ? "-" + out : out;
}

inline std::string grouped(std::uint64_t value) {
    return grouped(static_cast<double>(value));
}

// 0.0123 -> "12.30 ms"
inline std::string duration_text(double seconds) {
    if (seconds >= 1.0) {
        return strf("%.2f s", seconds);
    }
    if (seconds >= 1e-3) {
        return strf("%.2f ms", seconds * 1e3);
    }
    return strf("%.1f us", seconds * 1e6);
}

inline std::string ratio_text(const Spread& s) {
    return strf("%.3f [%.3f..%.3f]", s.median, s.min, s.max);
}

}  // namespace smtpfence::bench
