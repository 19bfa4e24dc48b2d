#include "common/conf_reader.h"

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include "common/files.h"
#include "common/text.h"

namespace smtpfence::conf {
namespace {

std::string location(const std::string& path, int line) {
    return path + ":" + std::to_string(line);
}

// One record of the file as CSF's slurp() splits it, with the line number an editor
// shows for it.
struct Record {
    std::string_view text;
    int line = 0;
};

// CSF splits at CRLF, CR, LF, VT and FF (ConfigServer::Slurp's $slurpreg). Its regex also
// lists NEL (0x85) and U+2028/U+2029, but on undecoded bytes that splits every UTF-8
// character whose last byte is 0x85 ("Å" is C3 85) in two mid-character; CSF's own forks
// dropped those, and so do we. VT and FF end a record but not an editor's line, so they
// do not advance the line number used in messages.
class RecordSplitter {
  public:
    explicit RecordSplitter(std::string_view text) : rest_(text) {}

    bool next(Record& out) {
        if (done_)
            return false;
        std::size_t i = 0;
        while (i < rest_.size() && !is_separator(rest_[i]))
            ++i;
        out = Record{rest_.substr(0, i), line_};
        if (i == rest_.size()) {
            done_ = true;
            return true;
        }
        const char sep = rest_[i];
        std::size_t consumed = 1;
        if (sep == '\r' && i + 1 < rest_.size() && rest_[i + 1] == '\n')
            consumed = 2;
        if (sep == '\r' || sep == '\n')
            ++line_;
        rest_.remove_prefix(i + consumed);
        return true;
    }

  private:
    static bool is_separator(char c) { return c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

    std::string_view rest_;
    int line_ = 1;
    bool done_ = false;
};

}  // namespace

const Entry* ConfFile::find(std::string_view key) const {
    const auto it =
        std::find_if(entries.begin(), entries.end(), [&](const Entry& e) { return e.key == key; });
    return it == entries.end() ? nullptr : &*it;
}

Result<ConfFile> parse_conf(std::string_view text, const std::string& path) {
    ConfFile conf;
    conf.path = path;
    std::unordered_map<std::string, int> first_line;  // key -> line it was set on
    RecordSplitter records(text);
    Record rec;
    while (records.next(rec)) {
        // CSF's $cleanreg strips leading and trailing whitespace before its
        // /^(\s|\#|$)/ test, so an indented setting is read, not skipped.
        const std::string_view line = text::trim(rec.text);
        if (line.empty() || line.front() == '#')
            continue;
        const std::size_t eq = line.find('=');
        if (eq == std::string_view::npos) {
            conf.skipped.push_back(SkippedLine{std::string(line), rec.line});
            continue;
        }

        std::string name;
        name.reserve(eq);
        for (const char c : line.substr(0, eq)) {
            if (!text::is_space(c))
                name.push_back(c);
        }
        // /"(.*)"/ is greedy: the value runs from the first to the last double quote,
        // so `KEY = "1" # "note"` reads `1" # "note` and `KEY = "1" # note` reads `1`.
        const std::string_view rhs = line.substr(eq + 1);
        const std::size_t open = rhs.find('"');
        const std::size_t close = rhs.rfind('"');
        if (open == std::string_view::npos || close == open) {
            return fail(0, location(path, rec.line),
                        "Invalid configuration line: " + text::printable(line) +
                            " (the value must be in double quotes)");
        }
        const auto [it, inserted] = first_line.try_emplace(name, rec.line);
        if (!inserted) {
            return fail(0, location(path, rec.line),
                        "Setting " + text::printable(name) + " is repeated (first set on line " +
                            std::to_string(it->second) + ")");
        }
        conf.entries.push_back(
            Entry{std::move(name), std::string(rhs.substr(open + 1, close - open - 1)), rec.line});
    }
    return conf;
}

Result<ConfFile> read_conf_file(const std::string& path) {
    auto text = read_text_file(path);
    if (!text)
        return std::unexpected(text.error());
    return parse_conf(*text, path);
}

std::vector<std::string> split_list(std::string_view value) {
    std::vector<std::string> items;
    while (true) {
        const std::size_t comma = value.find(',');
        const std::string_view item = text::trim(value.substr(0, comma));
        if (!item.empty())
            items.emplace_back(item);
        if (comma == std::string_view::npos)
            break;
        value.remove_prefix(comma + 1);
    }
    return items;
}

}  // namespace smtpfence::conf
