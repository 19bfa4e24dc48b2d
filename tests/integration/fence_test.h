// The fixture shared by the daemon tests: a fresh Topology per test, made-up
// accounts in the test's own passwd/group files, an SMTP listener on the remote side
// and helpers to start smtpfenced in the server namespace and probe connections.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tests/integration/harness.h"

namespace smtpfence::itest {

// The accounts of the test's passwd/group files (never the host's).
inline const Credentials kRoot{"root", 0, 0, {}};
inline const Credentials kMail{"mail", 8, 8, {8}};
inline const Credentials kExim{"Debian-exim", 101, 103, {103}};
inline const Credentials kAlice{"alice", 2001, 2001, {2001}};
inline const Credentials kBob{"bob", 2002, 2002, {2002}};
inline const Credentials kCarol{"carol", 2003, 2003, {2003, 3000}};  // webmail, supplementary
inline const Credentials kDave{"dave", 2004, 3000, {3000}};          // webmail, primary group
inline const Credentials kErin{"erin", 2005, 8, {8}};                // mail, primary group
inline constexpr gid_t kWebmailGid = 3000;

extern const char* const kTestPasswd;
extern const char* const kTestGroup;

// Ports the remote listener serves: the SMTP ports and two that are not.
inline const std::vector<std::uint16_t> kRemotePorts{25, 465, 587, 2525, 80};
inline const std::vector<std::uint16_t> kSmtpPorts{25, 465, 587};
inline constexpr const char* kRemoteHost = "remote.test";
inline constexpr const char* kServerHost = "server.test";

// A table name no other test (nor the host) uses.
[[nodiscard]] std::string unique_table_name();

class FenceTest : public ::testing::Test {
  protected:
    void SetUp() override;

    // Writes the daemon's config file (same path every time, as an admin edits it).
    void write_config(const std::string& text);
    // Writes config and starts smtpfenced with the test accounts; fatal on failure
    // (call through ASSERT_NO_FATAL_FAILURE).
    void start_daemon(const std::string& config, std::vector<std::string> extra = {},
                      std::vector<std::string> env = {});

    [[nodiscard]] ConnectResult connect(const Credentials& who, const std::string& address,
                                        std::uint16_t port) const;
    // ECONNREFUSED, and at once (well before any retransmission timeout).
    void expect_refused(const Credentials& who, const std::string& address, std::uint16_t port);
    // Connected and greeted by host's listener.
    void expect_connected(const Credentials& who, const std::string& address, std::uint16_t port,
                          const std::string& host = kRemoteHost);

    // An engine inside the server namespace (opened on first use).
    [[nodiscard]] nft::Engine& server_engine();
    // What a failure message needs: the kernel's table and the daemon's log.
    [[nodiscard]] std::string diagnostics();

    std::string table_;
    std::string config_path_;
    std::string passwd_path_;
    std::string group_path_;
    // Declaration order = reverse destruction order: processes and sockets go before
    // the namespaces they live in, the namespaces before the files.
    std::unique_ptr<TempDir> dir_;
    std::unique_ptr<Topology> topo_;
    std::unique_ptr<SmtpListener> remote_smtp_;
    std::unique_ptr<Daemon> daemon_;
    std::unique_ptr<NsEngine> engine_;
};

}  // namespace smtpfence::itest
