#include "common/files.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "common/fd.h"

namespace smtpfence {

bool is_symlink_at(int dirfd, const std::string& name) {
    struct stat st {};
    return ::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
}

Result<void> check_own_file(const struct stat& st, const std::string& path,
                            const std::string& refusing) {
    if (!S_ISREG(st.st_mode))
        return fail(EINVAL, path, "not a regular file: refusing to " + refusing);
    if (st.st_nlink > 1) {
        return fail(EMLINK, path,
                    "has " + std::to_string(st.st_nlink) + " hard links: refusing to " + refusing +
                        " (another file shares it)");
    }
    return {};
}

Result<UniqueFd> open_state_dir(const std::string& state_dir) {
    if (::mkdir(state_dir.c_str(), 0750) != 0 && errno != EEXIST)
        return fail(errno, "create state directory " + state_dir);
    UniqueFd dir(::open(state_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir.valid()) {
        const int err = errno;
        return fail(err, "state directory " + state_dir,
                    is_symlink_at(AT_FDCWD, state_dir) ? kSymlinkRefused : "");
    }
    return dir;
}

Result<std::string> read_text_file(const std::string& path, std::size_t max_bytes,
                                   Symlinks symlinks) {
    // O_NONBLOCK so that a FIFO given by mistake cannot hang the daemon in open().
    const int nofollow = symlinks == Symlinks::Refuse ? O_NOFOLLOW : 0;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | nofollow));
    if (!fd.valid()) {
        const int err = errno;
        return fail(err, path, err == ELOOP && nofollow != 0 ? kSymlinkRefused : "");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return fail(errno, path);
    if (S_ISDIR(st.st_mode))
        return fail(EISDIR, path);
    if (!S_ISREG(st.st_mode))
        return fail(EINVAL, path, "not a regular file");
    if (static_cast<std::size_t>(st.st_size) > max_bytes) {
        return fail(EFBIG, path,
                    "larger than " + std::to_string(max_bytes >> 20U) + " MiB, refusing to read");
    }
    std::string content;
    content.resize(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (true) {
        if (done == content.size()) {
            // The file may have grown since fstat; read on in bounded steps.
            if (content.size() >= max_bytes + 1)
                break;
            content.resize(std::min(content.size() + 65536, max_bytes + 1));
        }
        const ssize_t n = ::read(fd.get(), content.data() + done, content.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(errno, path);
        }
        if (n == 0)
            break;
        done += static_cast<std::size_t>(n);
    }
    if (done > max_bytes) {
        return fail(EFBIG, path,
                    "larger than " + std::to_string(max_bytes >> 20U) + " MiB, refusing to read");
    }
    content.resize(done);
    return content;
}

namespace {

// write_all and send_all: one loop over the bytes, with the call that moves them.
template <class Put>
Result<void> put_all(std::string_view data, const char* what, Put put) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = put(data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(errno, what);
        }
        done += static_cast<std::size_t>(n);
    }
    return {};
}

}  // namespace

Result<void> write_all(int fd, std::string_view data) {
    return put_all(data, "write", [fd](const char* p, std::size_t n) { return ::write(fd, p, n); });
}

Result<void> send_all(int fd, std::string_view data) {
    return put_all(data, "send",
                   [fd](const char* p, std::size_t n) { return ::send(fd, p, n, MSG_NOSIGNAL); });
}

Result<void> write_file_atomic(const std::string& path, const std::string& content, unsigned mode) {
    const std::filesystem::path target(path);
    const std::filesystem::path dir =
        target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
    std::string tmp = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
    UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
    if (!fd.valid())
        return fail(errno, "create temporary file in " + dir.string());
    auto cleanup_fail = [&](int err, const std::string& what) {
        ::unlink(tmp.c_str());
        return fail(err, what);
    };
    if (::fchmod(fd.get(), static_cast<mode_t>(mode)) != 0)
        return cleanup_fail(errno, tmp);
    if (auto written = write_all(fd.get(), content); !written)
        return cleanup_fail(written.error().code, "write " + tmp);
    if (::fsync(fd.get()) != 0)
        return cleanup_fail(errno, "fsync " + tmp);
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0)
        return cleanup_fail(errno, "rename to " + path);
    UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd.valid())
        (void)::fsync(dfd.get());
    return {};
}

}  // namespace smtpfence
