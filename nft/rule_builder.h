// RuleBuilder: one nftables rule as libnftnl expressions, appended in order, each
// with the label an error message names it by (Batch maps a refused expression back
// to its label). The vocabulary of nft/ruleset.cpp's rules.
#pragma once

#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_log.h>
#include <linux/netfilter/nf_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nft/handles.h"
#include "nft/ruleset.h"

namespace smtpfence::nft {

// A `limit rate RATE/UNIT burst BURST packets` expression: a token bucket, in a rule
// or (given to a dynset) one per set element.
inline ExprPtr make_limit(std::uint64_t rate, std::uint64_t unit_seconds, std::uint32_t burst) {
    ExprPtr e = make_expr("limit");
    nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_RATE, rate);
    nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_UNIT, unit_seconds);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_BURST, burst);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_TYPE, NFT_LIMIT_PKTS);
    nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_FLAGS, 0);
    return e;
}

// Builds one rule: expressions appended in order, each with a label.
class RuleBuilder {
  public:
    RuleBuilder(const std::string& table, const std::string& chain) : rule_(make_rule()) {
        nftnl_rule_set_u32(rule_.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
        nftnl_rule_set_str(rule_.get(), NFTNL_RULE_TABLE, table.c_str());
        nftnl_rule_set_str(rule_.get(), NFTNL_RULE_CHAIN, chain.c_str());
        chain_ = chain;
    }

    // dreg: where a part of a concatenated key goes (reg_at); register 1 otherwise.
    RuleBuilder& meta(std::uint32_t key, const char* label, std::uint32_t dreg = NFT_REG_1) {
        ExprPtr e = make_expr("meta");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, dreg);
        return add(std::move(e), label);
    }
    // `meta KEY set` from register 1.
    RuleBuilder& meta_set(std::uint32_t key, const char* label) {
        ExprPtr e = make_expr("meta");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_SREG, NFT_REG_1);
        return add(std::move(e), label);
    }
    RuleBuilder& cmp(std::uint32_t op, const void* data, std::uint32_t len, const char* label) {
        ExprPtr e = make_expr("cmp");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_SREG, NFT_REG_1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_OP, op);
        nftnl_expr_set(e.get(), NFTNL_EXPR_CMP_DATA, data, len);
        return add(std::move(e), label);
    }
    RuleBuilder& payload(std::uint32_t base, std::uint32_t offset, std::uint32_t len,
                         const char* label, std::uint32_t dreg = NFT_REG_1) {
        ExprPtr e = make_expr("payload");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, base);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, len);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_DREG, dreg);
        return add(std::move(e), label);
    }
    // A 4-byte value in reg to network byte order, in place (`byteorder hton`).
    RuleBuilder& hton32(std::uint32_t reg, const char* label) {
        ExprPtr e = make_expr("byteorder");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SREG, reg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_DREG, reg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_LEN, 4);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BYTEORDER_SIZE, 4);
        return add(std::move(e), label);
    }
    RuleBuilder& bitwise(std::uint32_t len, const void* mask, const void* xor_value,
                         const char* label) {
        ExprPtr e = make_expr("bitwise");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_LEN, len);
        nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_MASK, mask, len);
        nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_XOR, xor_value, len);
        return add(std::move(e), label);
    }
    RuleBuilder& lookup(const char* set, bool invert, const char* label) {
        ExprPtr e = make_expr("lookup");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set);
        if (invert)
            nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        return add(std::move(e), label);
    }
    RuleBuilder& verdict(int code, const char* label, const char* chain = nullptr) {
        ExprPtr e = make_expr("immediate");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, static_cast<std::uint32_t>(code));
        if (chain != nullptr)
            nftnl_expr_set_str(e.get(), NFTNL_EXPR_IMM_CHAIN, chain);
        return add(std::move(e), label);
    }
    RuleBuilder& dynset(std::uint32_t op, const char* set, ExprPtr element_expr,
                        const char* label) {
        ExprPtr e = make_expr("dynset");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_DYNSET_SREG_KEY, NFT_REG_1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_DYNSET_OP, op);
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_DYNSET_SET_NAME, set);
        if (element_expr) {
            // The dynset expression takes ownership of the per-element expression.
            nftnl_expr_set(e.get(), NFTNL_EXPR_DYNSET_EXPR, element_expr.release(), 0);
        }
        return add(std::move(e), label);
    }
    RuleBuilder& reject_tcp_reset(const char* label) {
        ExprPtr e = make_expr("reject");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_TCP_RST);
        nftnl_expr_set_u8(e.get(), NFTNL_EXPR_REJECT_CODE, 0);
        return add(std::move(e), label);
    }
    RuleBuilder& native_queue(std::uint16_t num, const char* label) {
        ExprPtr e = make_expr("queue");
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_NUM, num);
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_TOTAL, 1);
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_FLAGS, NFT_QUEUE_FLAG_BYPASS);
        return add(std::move(e), label);
    }
    // A token bucket shared by every packet reaching the rule (not per uid).
    RuleBuilder& limit_per_minute(std::uint32_t rate, std::uint32_t burst, const char* label) {
        return add(make_limit(rate, 60, burst), label);
    }
    // Level 4 (warning) is what iptables' LOG target, and so CSF, used; syslog's
    // LOG_WARNING as a constant, so that no syslog.h macro leaks in.
    RuleBuilder& log(const char* prefix, bool with_uid, const char* label) {
        constexpr std::uint32_t kLogLevelWarning = 4;
        ExprPtr e = make_expr("log");
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOG_PREFIX, prefix);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOG_LEVEL, kLogLevelWarning);
        if (with_uid)
            nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOG_FLAGS, NF_LOG_UID);
        return add(std::move(e), label);
    }
    // To the primary address of the output device, i.e. 127.0.0.1 or ::1 for a locally
    // generated packet, keeping the destination port.
    RuleBuilder& redirect(const char* label) { return add(make_expr("redir"), label); }
    // The route type of the packet's destination address as it is now (after nat).
    RuleBuilder& fib_daddr_type(const char* label) {
        ExprPtr e = make_expr("fib");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_DREG, NFT_REG_1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
        return add(std::move(e), label);
    }
    RuleBuilder& xt_nfqueue(std::uint16_t num, const char* label) {
        ExprPtr e = make_expr("target");
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_TG_NAME, "NFQUEUE");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_TG_REV, 3);
        set_nfqueue_info(e.get(), num);
        return add(std::move(e), label);
    }

    // `meta l4proto tcp`, or what nft puts before a `tcp` match.
    RuleBuilder& tcp() {
        const std::uint8_t tcp = IPPROTO_TCP;
        meta(NFT_META_L4PROTO, "meta l4proto");
        return cmp(NFT_CMP_EQ, &tcp, 1, "l4proto tcp");
    }

    // `tcp flags syn / syn,ack tcp dport @ports`: the SYN of a new connection only.
    RuleBuilder& smtp_syn() {
        // The TCP flags byte: offset 13 of the TCP header.
        constexpr std::uint32_t kTcpFlagsOffset = 13;
        constexpr std::uint8_t kTcpSyn = 0x02;
        constexpr std::uint8_t kTcpAck = 0x10;
        // The flags first: most packets are not SYNs, and a compare is cheaper than the
        // ports' set lookup.
        tcp();
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, kTcpFlagsOffset, 1, "tcp flags");
        const std::uint8_t mask = kTcpSyn | kTcpAck;
        const std::uint8_t zero = 0;
        bitwise(1, &mask, &zero, "flags & (syn|ack)");
        cmp(NFT_CMP_EQ, &kTcpSyn, 1, "== syn");
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, offsetof(tcphdr, dest), 2, "tcp dport");
        lookup(kSetPorts, false, "dport @ports");
        return *this;
    }

    BuiltRule done(std::string text) {
        return BuiltRule{chain_, std::move(text), std::move(names_), std::move(rule_)};
    }

  private:
    RuleBuilder& add(ExprPtr e, const char* label) {
        // The rule takes ownership of the expression.
        nftnl_rule_add_expr(rule_.get(), e.release());
        names_.emplace_back(label);
        return *this;
    }

    RulePtr rule_;
    std::string chain_;
    std::vector<std::string> names_;
};

}  // namespace smtpfence::nft
