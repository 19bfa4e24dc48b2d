// Text helpers shared by every folder: showing untrusted bytes safely, reading
// numbers strictly, trimming and joining.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smtpfence::text {

// Perl's \s on a byte string (CSF never decodes its files): ASCII whitespace only, so a
// NUL or a 0xA0 byte is an ordinary character.
[[nodiscard]] constexpr bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// s without leading and trailing ASCII whitespace (is_space).
[[nodiscard]] std::string_view trim(std::string_view s);

// The items separated by separator: "a, b" for {"a", "b"} and ", ".
[[nodiscard]] std::string join(const std::vector<std::string>& items, std::string_view separator);

// The numbers in decimal, separated by separator: "25,465,587".
template <class Numbers>
[[nodiscard]] std::string join_numbers(const Numbers& numbers, std::string_view separator = ",") {
    std::string out;
    for (const auto& n : numbers) {
        if (!out.empty())
            out += separator;
        out += std::to_string(n);
    }
    return out;
}

// text made safe to show in a message or a terminal: printable ASCII as is, a backslash
// doubled, every other byte as \xHH (\t for a tab). At most about max_chars characters
// are shown; a longer text is cut and ends in "... (N bytes)", so a 10 MB line in a
// config file still makes a one-line message.
[[nodiscard]] std::string printable(std::string_view text, std::size_t max_chars = 80);

// A decimal number of digits only (no sign, no spaces, leading zeros allowed) that is
// at most max; nullopt otherwise. Used for ports, uids, gids and numeric settings.
[[nodiscard]] std::optional<std::uint64_t> parse_unsigned(std::string_view text, std::uint64_t max);

// Digits only, at least one.
[[nodiscard]] bool is_all_digits(std::string_view s);

// s in ASCII upper case.
[[nodiscard]] std::string upper(std::string_view s);

}  // namespace smtpfence::text
