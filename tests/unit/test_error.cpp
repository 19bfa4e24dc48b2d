#include <gtest/gtest.h>

#include <cerrno>

#include "common/error.h"

namespace smtpfence {
namespace {

TEST(Error, MessageNamesWhatErrnoAndDetail) {
    const Error e{ENOENT, "set allow_uid", "table gone"};
    EXPECT_EQ(e.message(), "set allow_uid: No such file or directory (table gone)");
}

TEST(Error, MessageWithoutErrno) {
    const Error e{0, "/etc/x.conf:3", "bad port \"x\""};
    EXPECT_EQ(e.message(), "/etc/x.conf:3: bad port \"x\"");
}

TEST(Error, WrapPutsContextInFront) {
    const Error e{EEXIST, "chain judge", ""};
    EXPECT_EQ(e.wrap("apply table inet t").message(),
              "apply table inet t: chain judge: File exists");
}

}  // namespace
}  // namespace smtpfence
