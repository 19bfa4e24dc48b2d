// Set arithmetic the daemon's diffs share (what to add to the kernel, what to remove).
#pragma once

#include <algorithm>
#include <iterator>
#include <set>

namespace smtpfence {

// The elements of a that are not in b.
template <class T>
[[nodiscard]] std::set<T> set_minus(const std::set<T>& a, const std::set<T>& b) {
    std::set<T> out;
    std::ranges::set_difference(a, b, std::inserter(out, out.end()));
    return out;
}

}  // namespace smtpfence
