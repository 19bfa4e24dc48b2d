// The mail of a local threshold alert, and its delivery to the local MTA over SMTP
// (127.0.0.1, then ::1, port 25). Why SMTP and not sendmail(8): the daemon's unit has
// ProtectSystem=strict, so a sendmail child could not write the MTA's spool; root's
// connection to the local MTA is one our own firewall always lets through.
// docs/alerts.md, "Mail".
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "ctl/local_alert_child.h"

namespace smtpfence {

// The recipient as given to RCPT TO: ALERT_EMAIL, with "@localhost" added to a bare
// local part (an MTA may refuse an unqualified address from SMTP).
[[nodiscard]] std::string alert_recipient(std::string_view email);

// The message (headers and body, CRLF line ends, no dot-stuffing yet). Every value from
// the account or its process is escaped (common/text.h printable): the message is ASCII,
// and a newline or quote in a folder name can neither add a header nor break a line.
[[nodiscard]] std::string alert_message(const AlertFacts& facts, std::string_view to,
                                        std::string_view host, std::time_t now);

struct SmtpTarget {
    std::vector<std::string> addresses{"127.0.0.1", "::1"};  // tried in this order
    std::uint16_t port = 25;
    std::chrono::seconds timeout{10};  // to connect, and for each reply
};

// Delivers message to `to` from the null sender (<>; an automatic notice, RFC 3834):
// EHLO (HELO if refused), MAIL, RCPT, DATA, QUIT. The error names the address and the
// step, with the server's reply.
[[nodiscard]] Result<void> send_mail(const SmtpTarget& target, std::string_view to,
                                     std::string_view message, std::string_view host);

}  // namespace smtpfence
