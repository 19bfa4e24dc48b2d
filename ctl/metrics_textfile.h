// Writing the metrics textfile for node_exporter's textfile collector: atomically
// (readers see the old or the new file, never a part) and never through a symlink.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace smtpfence {

// Replaces path with text: a temporary file created beside it (O_EXCL|O_NOFOLLOW, mode
// 0644, a name the collector skips: it reads *.prom only), then renameat over path.
// A symlink at path, or a directory given by one, is refused. No fsync: see the .cpp.
[[nodiscard]] Result<void> write_textfile(const std::string& path, std::string_view text);

}  // namespace smtpfence
