#include "common/text.h"

#include <algorithm>
#include <charconv>

namespace smtpfence::text {

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
        s.remove_suffix(1);
    return s;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
    std::string out;
    for (const std::string& item : items) {
        if (!out.empty())
            out += separator;
        out += item;
    }
    return out;
}

std::string printable(std::string_view text, std::size_t max_chars) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    std::size_t shown = 0;
    for (; shown < text.size(); ++shown) {
        const auto byte = static_cast<unsigned char>(text[shown]);
        std::string piece;
        if (byte == '\\') {
            piece = "\\\\";
        } else if (byte == '\t') {
            piece = "\\t";
        } else if (byte >= 0x20 && byte < 0x7f) {
            piece.assign(1, static_cast<char>(byte));
        } else {
            piece = {'\\', 'x', kHex[byte >> 4U], kHex[byte & 0xfU]};
        }
        if (out.size() + piece.size() > max_chars)
            break;
        out += piece;
    }
    if (shown < text.size())
        out += "... (" + std::to_string(text.size()) + " bytes)";
    return out;
}

std::optional<std::uint64_t> parse_unsigned(std::string_view text, std::uint64_t max) {
    if (text.empty() ||
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return std::nullopt;
    }
    // Leading zeros are harmless; skip them so from_chars sees at most 20 digits of value.
    const std::size_t nonzero = text.find_first_not_of('0');
    if (nonzero == std::string_view::npos)
        return 0;
    text.remove_prefix(nonzero);
    std::uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || ptr != text.data() + text.size() || value > max)
        return std::nullopt;
    return value;
}

bool is_all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string upper(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'a' && c <= 'z')
            c = static_cast<char>(c - 'a' + 'A');
    }
    return out;
}

}  // namespace smtpfence::text
