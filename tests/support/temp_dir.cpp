#include "tests/support/temp_dir.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/support/child.h"

namespace smtpfence::testing {
void remove_stale_dirs(const TempDirSpec& spec) {
    static std::set<std::string> done;
    if (!done.insert(spec.parent + "/" + spec.prefix).second)
        return;
    for (const std::string& name : left_by_dead_runs(spec.parent, spec.prefix)) {
        std::error_code ec;
        std::filesystem::remove_all(spec.parent + "/" + name, ec);
    }
}

TempDirSpec unit_test_dir() {
    return {"sf-unit", std::filesystem::temp_directory_path().string(), 0700};
}

Result<TempDir> TempDir::create(const TempDirSpec& spec) {
    remove_stale_dirs(spec);
    std::string tmpl =
        spec.parent + "/" + spec.prefix + "-" + std::to_string(::getpid()) + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
        return fail(errno, "mkdtemp " + tmpl);
    // mkdtemp makes it 0700.
    if (spec.mode != 0700 && ::chmod(tmpl.c_str(), spec.mode) != 0) {
        const int error = errno;
        ::rmdir(tmpl.c_str());
        return fail(error, "chmod " + tmpl);
    }
    return TempDir(tmpl);
}

TempDir::TempDir() {
    auto dir = create(unit_test_dir());
    if (!dir) {
        (void)std::fprintf(stderr, "smtpfence test support: %s\n", dir.error().message().c_str());
        std::abort();
    }
    path_ = std::exchange(dir->path_, {});
}

TempDir::~TempDir() {
    if (path_.empty())
        return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& content) const {
    const std::string full = path_ + "/" + name;
    std::ofstream out(full, std::ios::binary | std::ios::trunc);
    out << content;
    return full;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace smtpfence::testing
