// The one place that builds and sends nf_tables netlink batches. Callers add
// objects; they never touch nlmsghdr. Every message asks for an ACK and carries its
// own sequence number, so a refusal names the object (and, with the kernel's
// extended ACK, the expression inside a rule) that failed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "nft/handles.h"
#include "nft/netlink.h"

namespace smtpfence::nft {

// A set element's key in the kernel's byte order for its type.
using ElementKey = std::vector<std::uint8_t>;

enum class Op {
    Create,     // NEW* with NLM_F_CREATE: no error if it already exists
    Exclusive,  // NEW* with NLM_F_CREATE|NLM_F_EXCL: EEXIST if it already exists
    Delete,     // DEL*
};

class Batch {
  public:
    explicit Batch(std::uint16_t family) : family_(family) {}

    void table(nftnl_table& t, Op op, std::string what);
    void chain(nftnl_chain& c, Op op, std::string what);
    void set(nftnl_set& s, Op op, std::string what);
    // Elements of table/set added or deleted, split into messages of
    // kElementsPerMessage so no single message grows past a few pages. For an interval
    // set, key_ends[i] is the last key (inclusive) of the element starting at keys[i]
    // (NFTA_SET_ELEM_KEY_END); empty for any other set.
    void set_elements(const std::string& table, const std::string& set,
                      const std::vector<ElementKey>& keys, Op op, const std::string& what,
                      const std::vector<ElementKey>& key_ends = {});
    // expr_names: a label per expression, in order, so an extended ACK pointing into
    // the rule names the expression ("expression 3 (queue)").
    void rule(nftnl_rule& r, Op op, std::string what, std::vector<std::string> expr_names);

    [[nodiscard]] std::size_t message_count() const { return messages_.size(); }
    [[nodiscard]] bool empty() const { return messages_.empty(); }

    // Sends the whole batch as one transaction in one datagram and reads every ACK,
    // even after an error. All or nothing: on error the kernel applied nothing.
    // The error names the first object the kernel refused, with its reason; further
    // refusals are counted in detail.
    [[nodiscard]] Result<void> commit(Transport& transport) const;

    // The bytes that commit() sends (without BEGIN/END), for tests.
    [[nodiscard]] const std::vector<char>& body() const { return body_; }

    static constexpr std::size_t kElementsPerMessage = 512;

  private:
    struct Message {
        std::size_t offset;  // of its nlmsghdr in body_
        std::string what;
        std::vector<std::string> expr_names;  // rules only
    };
    // Appends one message built by fill(header position); fill returns the header.
    template <class Fill>
    void append(std::size_t max_bytes, std::string what, std::vector<std::string> expr_names,
                Fill fill);
    [[nodiscard]] std::string describe_error_site(const Message& msg, std::uint32_t offset) const;

    std::uint16_t family_;
    std::vector<char> body_;
    std::vector<Message> messages_;
};

}  // namespace smtpfence::nft
