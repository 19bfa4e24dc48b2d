#include "common/error.h"

#include <cstring>

namespace smtpfence {

std::string errno_text(int code) {
    char buf[256];
    // GNU strerror_r returns a pointer that may or may not be buf.
    const char* text = strerror_r(code, buf, sizeof buf);
    return text;
}

std::string Error::message() const {
    std::string out = what;
    if (code != 0) {
        if (!out.empty())
            out += ": ";
        out += errno_text(code);
    }
    if (!detail.empty()) {
        if (!out.empty())
            out += code != 0 ? " (" : ": ";
        out += detail;
        if (code != 0)
            out += ")";
    }
    return out;
}

Error Error::wrap(const std::string& outer) const {
    Error e = *this;
    e.what = what.empty() ? outer : outer + ": " + what;
    return e;
}

}  // namespace smtpfence
