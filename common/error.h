// Errors as values: every fallible operation returns Result<T>, carrying errno and
// the context a human needs ("add rule judge#4 (reject): Operation not supported").
#pragma once

#include <expected>
#include <string>
#include <utility>

namespace smtpfence {

struct Error {
    int code = 0;        // errno value, 0 when the error is not a system error
    std::string what;    // what we were doing, naming the object: file:line, set, rule
    std::string detail;  // extra explanation (the kernel's extended ACK message, a hint)

    // "what: strerror(code) (detail)" with the empty parts left out.
    [[nodiscard]] std::string message() const;

    // The same error with more context in front: "outer: inner".
    [[nodiscard]] Error wrap(const std::string& outer) const;
};

template <class T = void>
using Result = std::expected<T, Error>;

// Shorthand for `return fail(errno, "open " + path);`
[[nodiscard]] inline std::unexpected<Error> fail(int code, std::string what,
                                                 std::string detail = {}) {
    return std::unexpected<Error>(Error{code, std::move(what), std::move(detail)});
}

// The result unchanged, or its error with outer context in front
// (libstdc++ 12 has no std::expected::transform_error yet).
template <class T>
[[nodiscard]] Result<T> with_context(Result<T> r, const std::string& outer) {
    if (!r)
        return std::unexpected(r.error().wrap(outer));
    return r;
}

// Thread-safe strerror.
[[nodiscard]] std::string errno_text(int code);

}  // namespace smtpfence
