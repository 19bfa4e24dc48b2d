// The frame of every benchmark program: what an interruption does, and an exception
// reported as one line.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>

namespace smtpfence::bench {

namespace detail {
inline const char* interrupted_program = "smtpfence-bench";
}

// SIGINT and SIGTERM end the process at once, saying so on stderr: nothing needs
// cleaning up by hand, since the namespaces are descriptors of the process and every
// child dies with it (PR_SET_PDEATHSIG).
inline void exit_on_interrupt(const char* program) {
    detail::interrupted_program = program;
    struct sigaction sa {};
    sa.sa_handler = [](int) {
        static const char tail[] = ": interrupted; its namespaces go with it\n";
        (void)!::write(STDERR_FILENO, "\n", 1);
        (void)!::write(STDERR_FILENO, detail::interrupted_program,
                       std::strlen(detail::interrupted_program));
        (void)!::write(STDERR_FILENO, tail, sizeof tail - 1);
        ::_exit(130);
    };
    (void)::sigaction(SIGINT, &sa, nullptr);
    (void)::sigaction(SIGTERM, &sa, nullptr);
}

// body()'s exit status. Errors are values throughout; only allocation failure (or a
// library's exception) ends up caught here: "program: what", status 1.
template <class Body>
int guarded_main(const char* program, Body body) {
    try {
        return body();
    } catch (const std::exception& e) {
        (void)std::fprintf(stderr, "%s: %s\n", program, e.what());
    } catch (...) {
        (void)std::fprintf(stderr, "%s: unknown exception\n", program);
    }
    return 1;
}

}  // namespace smtpfence::bench
