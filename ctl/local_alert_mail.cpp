#include "ctl/local_alert_mail.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/fd.h"
#include "common/files.h"
#include "common/log.h"
#include "common/text.h"

namespace smtpfence {
namespace {

using text::printable;

std::string shown_or(std::string_view value, std::string_view unknown, std::size_t max = 200) {
    return value.empty() ? std::string(unknown) : printable(value, max);
}

std::string rfc5322_date(std::time_t now) {
    std::tm tm{};
    if (::localtime_r(&now, &tm) == nullptr)
        return "Thu, 1 Jan 1970 00:00:00 +0000";
    static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    char rest[64];
    if (std::strftime(rest, sizeof rest, "%Y %H:%M:%S %z", &tm) == 0)
        rest[0] = '\0';
    return std::string(kDays[tm.tm_wday]) + ", " + std::to_string(tm.tm_mday) + " " +
           kMonths[tm.tm_mon] + " " + rest;
}

// Connects to address:port within timeout; the socket then blocks with timeout on each
// send and receive.
Result<UniqueFd> connect_to(const std::string& address, std::uint16_t port,
                            std::chrono::seconds timeout) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (::inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        len = sizeof *v4;
    } else if (::inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
    } else {
        return fail(EINVAL, address, "not an address");
    }
    UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid())
        return fail(errno, "socket");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        if (errno != EINPROGRESS)
            return fail(errno, "connect");
        pollfd p{fd.get(), POLLOUT, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(timeout.count() * 1000));
        if (ready == 0)
            return fail(ETIMEDOUT, "connect");
        int err = 0;
        socklen_t err_len = sizeof err;
        if (ready < 0 || ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len) != 0)
            return fail(errno, "connect");
        if (err != 0)
            return fail(err, "connect");
    }
    const int flags = ::fcntl(fd.get(), F_GETFL);
    (void)::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    const timeval tv{static_cast<time_t>(timeout.count()), 0};
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

// One SMTP conversation on a connected socket.
class SmtpSession {
  public:
    explicit SmtpSession(int fd) : fd_(fd) {}

    // Sends line (unless empty) and reads the reply; an error unless its code starts with
    // one of want.
    Result<void> step(std::string_view what, const std::string& line, std::string_view want) {
        if (!line.empty()) {
            if (auto sent = send_all(fd_, line); !sent)
                return fail(sent.error().code, std::string(what));
        }
        auto reply = read_reply();
        if (!reply)
            return fail(reply.error().code, std::string(what), "no reply");
        if (want.find((*reply)[0]) == std::string_view::npos)
            return fail(0, std::string(what), "refused: " + printable(*reply, 200));
        return {};
    }

  private:
    // A whole reply: lines "CODE-text" up to the last, "CODE text".
    Result<std::string> read_reply() {
        while (true) {
            const auto end = buffer_.find("\r\n");
            if (end != std::string::npos) {
                std::string line = buffer_.substr(0, end);
                buffer_.erase(0, end + 2);
                if (line.size() < 4 || line[3] != '-')
                    return line.size() >= 3 ? line : std::string("???");
                continue;
            }
            if (buffer_.size() > kMaxReply)
                return fail(EMSGSIZE, "reply");
            char chunk[1024];
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return fail(errno == EAGAIN ? ETIMEDOUT : errno, "recv");
            if (n == 0)
                return fail(ECONNRESET, "recv");
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }

    static constexpr std::size_t kMaxReply = std::size_t{64} * 1024;  // longer: no SMTP server
    int fd_;
    std::string buffer_;
};

// DATA's content: a line that starts with "." gets another (RFC 5321 4.5.2), then the
// end mark.
std::string dot_stuffed(std::string_view message) {
    std::string out;
    std::size_t start = 0;
    while (start < message.size()) {
        const auto end = message.find("\r\n", start);
        const auto line = message.substr(
            start, end == std::string_view::npos ? std::string_view::npos : end - start);
        if (line.starts_with('.'))
            out += '.';
        out += line;
        out += "\r\n";
        if (end == std::string_view::npos)
            break;
        start = end + 2;
    }
    return out + ".\r\n";
}

Result<void> converse(int fd, std::string_view to, std::string_view message,
                      std::string_view host) {
    SmtpSession s(fd);
    const std::string me(host);
    if (auto r = s.step("greeting", "", "2"); !r)
        return r;
    if (auto r = s.step("EHLO", "EHLO " + me + "\r\n", "2"); !r) {
        if (auto h = s.step("HELO", "HELO " + me + "\r\n", "2"); !h)
            return h;
    }
    for (const auto& [what, line, want] :
         {std::tuple<const char*, std::string, const char*>{"MAIL FROM", "MAIL FROM:<>\r\n", "2"},
          {"RCPT TO", "RCPT TO:<" + std::string(to) + ">\r\n", "2"},
          {"DATA", "DATA\r\n", "3"},
          {"message", dot_stuffed(message), "2"}}) {
        if (auto r = s.step(what, line, want); !r)
            return r;
    }
    // The message is accepted: a QUIT left unanswered changes nothing.
    if (auto quit = s.step("QUIT", "QUIT\r\n", "2"); !quit)
        log::debug("SMTP QUIT: " + quit.error().message());
    return {};
}

}  // namespace

std::string alert_recipient(std::string_view email) {
    std::string to(email);
    if (to.find('@') == std::string::npos)
        to += "@localhost";
    return to;
}

std::string alert_message(const AlertFacts& facts, std::string_view to, std::string_view host,
                          std::time_t now) {
    const std::string account = shown_or(facts.account, std::to_string(facts.uid), 64);
    const std::string h = printable(host, 64);
    const std::string count = std::to_string(facts.count);
    const std::string interval = std::to_string(facts.interval.count());
    std::string m;
    const auto header = [&](std::string_view name, const std::string& value) {
        m.append(name).append(": ").append(value).append("\r\n");
    };
    header("From", "smtpfence <root@localhost>");
    header("To", "<" + std::string(to) + ">");
    header("Subject", "smtpfence: " + account + " made " + count + " SMTP attempts in " + interval +
                          " s on " + h);
    header("Date", rfc5322_date(now));
    header("Message-ID", "<smtpfence." + std::to_string(now) + "." + std::to_string(::getpid()) +
                             "." + std::to_string(facts.uid) + "@localhost>");
    header("Auto-Submitted", "auto-generated");
    header("MIME-Version", "1.0");
    header("Content-Type", "text/plain; charset=us-ascii");
    m += "\r\n";
    const auto line = [&](std::string_view text) { m.append(text).append("\r\n"); };
    line("Account " + account + " (uid " + std::to_string(facts.uid) + ", user " +
         shown_or(facts.user, "unknown", 64) + ") made " + count +
         " outbound SMTP connection attempts");
    line("within " + interval + " seconds on " + h + " (ALERT_ATTEMPTS in smtpfence.conf).");
    line("smtpfence refused them; this mail comes at most once per account and interval.");
    line("");
    line("Last process seen (values escaped: \\xHH for other bytes than printable ASCII):");
    line("  pid:     " + (facts.pid ? std::to_string(*facts.pid) : std::string("unknown")));
    line("  program: " + shown_or(facts.exe, "unknown"));
    line("  folder:  " + shown_or(facts.cwd, "unknown"));
    line("  command: " + shown_or(facts.cmdline, "unknown", 400));
    line("");
    line("More: smtpfencectl attempts --user " + std::to_string(facts.uid));
    return m;
}

Result<void> send_mail(const SmtpTarget& target, std::string_view to, std::string_view message,
                       std::string_view host) {
    Error last{};
    for (const std::string& address : target.addresses) {
        const std::string where = "SMTP to " + address + " port " + std::to_string(target.port);
        auto fd = connect_to(address, target.port, target.timeout);
        if (!fd) {
            last = Error{0, where + ": " + fd.error().message(), ""};
            continue;  // the MTA may listen on the other family only
        }
        if (auto sent = converse(fd->get(), to, message, host); !sent)
            return fail(0, where + ": " + sent.error().message());
        return {};
    }
    return std::unexpected(last);
}

}  // namespace smtpfence
