#include "common/names.h"

#include "common/text.h"

namespace smtpfence {

std::string account_name_problem(std::string_view name) {
    if (name.empty())
        return "empty";
    if (name.size() > kMaxAccountNameBytes)
        return "longer than " + std::to_string(kMaxAccountNameBytes) + " bytes";
    if (name.front() == '-')
        return "starts with '-'";
    for (std::size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
                        (c == '$' && i > 0 && i + 1 == name.size());
        if (!ok) {
            return "contains \"" + text::printable(name.substr(i, 1)) +
                   "\" (allowed: letters, digits, '.', '_', '-', a final '$')";
        }
    }
    return {};
}

}  // namespace smtpfence
