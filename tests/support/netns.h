// Network namespaces made for a test or benchmark, never the host's own, in two kinds:
//
// - named (create): `ip netns add sft-<pid>-<n>`, so that `ip -n NAME` and
//   `ip netns pids NAME` reach it. The destructor kills every process inside and deletes
//   it; a later run deletes those of a run killed before its destructors ran. The root
//   test suites use these.
// - anonymous (create_anonymous): nothing but an open nsfs descriptor, no name under
//   /run/netns, no holder process. The kernel frees such a namespace (with its links,
//   nftables tables and iptables rules) once the last descriptor, socket and process
//   referring to it is gone, so nothing is left behind however the run ends, SIGKILL
//   included. The benchmarks use these.
//
// The calling process enters a namespace only for a moment (NetnsEntry: to create it,
// or a socket that stays bound to it) or for a test that lives in it; children enter
// with setns (child.h).
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "common/error.h"
#include "common/fd.h"
#include "nft/engine.h"
#include "nft/netlink.h"

namespace smtpfence::testing {

class Netns {
  public:
    [[nodiscard]] static Result<Netns> create();
    // A new, empty namespace (loopback down). The calling thread enters it only for the
    // unshare() and is back in its own namespace before this returns.
    [[nodiscard]] static Result<Netns> create_anonymous();
    Netns(Netns&& other) noexcept
        : name_(std::exchange(other.name_, {})), fd_(std::move(other.fd_)) {}
    Netns& operator=(Netns&& other) noexcept;
    Netns(const Netns&) = delete;
    Netns& operator=(const Netns&) = delete;
    ~Netns() { remove(); }

    // The namespace, for setns().
    [[nodiscard]] int fd() const { return fd_.get(); }
    // "sft-<pid>-<n>"; empty for an anonymous namespace.
    [[nodiscard]] const std::string& name() const { return name_; }
    // A path naming it, for `ip link ... netns PATH`: /run/netns/NAME, or
    // /proc/<our pid>/fd/<fd> for an anonymous one.
    [[nodiscard]] std::string path() const;

  private:
    Netns(std::string name, UniqueFd fd) : name_(std::move(name)), fd_(std::move(fd)) {}
    // Named: kills the processes inside and deletes the name.
    void remove();
    std::string name_;
    UniqueFd fd_;
};

// The calling thread inside ns until dropped, then back in the namespace it came from.
// When it cannot go back the process aborts: carrying on in the wrong namespace could
// touch the host's firewall.
class NetnsEntry {
  public:
    [[nodiscard]] static Result<NetnsEntry> enter(const Netns& ns);
    NetnsEntry(NetnsEntry&&) noexcept = default;
    NetnsEntry& operator=(NetnsEntry&&) = delete;
    NetnsEntry(const NetnsEntry&) = delete;
    NetnsEntry& operator=(const NetnsEntry&) = delete;
    ~NetnsEntry();

  private:
    explicit NetnsEntry(UniqueFd original) : original_(std::move(original)) {}
    UniqueFd original_;
};

// A netlink socket opened inside ns (a socket stays bound to the namespace it was
// created in) and an Engine on it, so one process inspects and programs the nftables of
// every namespace without forking.
class NsEngine {
  public:
    [[nodiscard]] static Result<std::unique_ptr<NsEngine>> open(const Netns& ns);
    [[nodiscard]] nft::Engine& engine() { return engine_; }
    nft::Engine* operator->() { return &engine_; }

  private:
    explicit NsEngine(nft::NetlinkSocket socket) : socket_(std::move(socket)), engine_(socket_) {}
    nft::NetlinkSocket socket_;
    nft::Engine engine_;
};

}  // namespace smtpfence::testing
