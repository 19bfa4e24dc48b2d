// csf.conf as `smtpfenced --csf-conf` and `smtpfencectl import-csf` read it:
// conf::parse_conf, policy_from_csf, import_csf.
// Invariants: the mapping and the import fail alike; every key of kSmtpKeys is
// recorded in order with its line and value; every other setting is listed as ignored;
// the policy holds values in range; and the import's promise (import.h): the written
// smtpfence.conf parses and loads to the policy that csf.conf enforces.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/conf_reader.h"
#include "common/text.h"
#include "csf-compat/csf_policy.h"
#include "csf-compat/import.h"
#include "fuzz/fuzz_check.h"
#include "policy/policy.h"

namespace smtpfence::fuzz {
namespace {

constexpr std::string_view kPath = "/etc/csf/csf.conf";

void check_mapping(const conf::ConfFile& conf, const csf::CsfPolicy& m) {
    check(m.mapped.size() == csf::kSmtpKeys.size(), "not every SMTP key recorded");
    for (std::size_t i = 0; i < m.mapped.size(); ++i) {
        const csf::Mapped& mk = m.mapped[i];
        check(mk.key == csf::kSmtpKeys[i], "SMTP keys recorded out of order");
        const conf::Entry* e = conf.find(mk.key);
        check(mk.line == (e != nullptr ? e->line : 0), "a recorded line is not the entry's");
        check(mk.value == (e != nullptr ? e->value : std::string()),
              "a recorded value is not the entry's");
        check(!mk.meaning.empty(), "a recorded key without meaning");
    }
    std::size_t smtp = 0;
    for (const conf::Entry& e : conf.entries) {
        if (std::find(csf::kSmtpKeys.begin(), csf::kSmtpKeys.end(), e.key) != csf::kSmtpKeys.end())
            ++smtp;
    }
    check(smtp + m.ignored.size() == conf.entries.size(), "a setting neither mapped nor ignored");
    check(m.policy.source == conf.path, "source");
    check_policy(m.policy);
}

void fuzz_one(std::string_view text) {
    const std::string path(kPath);
    auto conf = conf::parse_conf(text, path);
    if (!conf)
        return;  // the reader itself is fuzz_config's
    auto mapping = csf::policy_from_csf(*conf);
    auto imported = csf::import_csf(*conf);
    check(mapping.has_value() == imported.has_value(), "the mapping and the import disagree");
    if (!mapping) {
        check(mapping.error().what.starts_with(path), "a mapping error without the file");
        check(mapping.error().message() == imported.error().message(),
              "the mapping and the import fail differently");
        return;
    }
    check_mapping(*conf, *mapping);
    check(same_policy(mapping->policy, imported->mapping.policy), "the import maps differently");

    const std::string written = "/etc/smtpfence/smtpfence.conf";
    auto reread = conf::parse_conf(imported->config_text, written);
    check(reread.has_value(), "the imported smtpfence.conf does not parse: " +
                                  (reread ? std::string() : reread.error().message()));
    auto loaded = policy_from_conf(*reread);
    check(loaded.has_value(), "the imported smtpfence.conf does not load: " +
                                  (loaded ? std::string() : loaded.error().message()));
    check(same_policy(loaded->policy, mapping->policy),
          "the imported smtpfence.conf loads to another policy than csf.conf enforces");
}

}  // namespace
}  // namespace smtpfence::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    smtpfence::fuzz::fuzz_one(smtpfence::fuzz::as_text(std::span(data, size)));
    return 0;
}
