// Replays a corpus through a fuzz target without libFuzzer: every file of each
// directory argument (and each file argument) goes to LLVMFuzzerTestOneInput once, in
// name order. Built with the normal compiler, so ctest replays the seeds and every
// crash reproducer kept in fuzz/corpus/ in each build, ASan's included. A broken
// invariant aborts; an empty corpus is a failure too (a typo in the path tests nothing).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

// One input, in a buffer of exactly its size (as libFuzzer gives it), so that ASan sees
// a read one byte past the end.
bool replay(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        std::cerr << "replay: cannot read " << file << "\n";
        return false;
    }
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto exact = std::make_unique<std::uint8_t[]>(bytes.size());
    std::copy(bytes.begin(), bytes.end(), exact.get());
    LLVMFuzzerTestOneInput(exact.get(), bytes.size());
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " CORPUS_DIR_OR_FILE...\n";
        return 2;
    }
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        const fs::path arg(argv[i]);
        std::error_code ec;
        if (fs::is_directory(arg, ec)) {
            for (const auto& entry : fs::directory_iterator(arg)) {
                if (entry.is_regular_file())
                    files.push_back(entry.path());
            }
        } else if (fs::is_regular_file(arg, ec)) {
            files.push_back(arg);
        } else {
            std::cerr << "replay: " << arg << " is neither a directory nor a file\n";
            return 2;
        }
    }
    if (files.empty()) {
        std::cerr << "replay: no input found\n";
        return 1;
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
        // Named before it runs: when an invariant aborts, the last name is the culprit.
        std::cerr << "replay: " << f.filename().string() << "\n";
        if (!replay(f))
            return 1;
    }
    std::cout << "replay: " << files.size() << " input(s) replayed, no invariant broken\n";
    return 0;
}
