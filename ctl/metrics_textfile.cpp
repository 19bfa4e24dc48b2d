#include "ctl/metrics_textfile.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/fd.h"
#include "common/files.h"

namespace smtpfence {
namespace {

// Creates name in dir, refusing anything already there but a file we left behind
// (the daemon died between create and rename): that one is removed and made again.
Result<UniqueFd> create_temp(int dir_fd, const std::string& name, const std::string& shown) {
    for (int tries = 0; tries < 2; ++tries) {
        UniqueFd fd(::openat(dir_fd, name.c_str(),
                             O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (fd.valid())
            return fd;
        if (errno != EEXIST || tries > 0)
            return fail(errno, shown);
        // unlinkat removes a symlink or hard link planted here, never what it points at.
        if (::unlinkat(dir_fd, name.c_str(), 0) != 0)
            return fail(errno, shown, "cannot remove what is left there");
    }
    return fail(EEXIST, shown);
}

}  // namespace

// No fsync: the file is written again every few seconds and read by a collector that
// wants the newest state, not a durable one. After a power cut the daemon writes it
// anew within seconds of starting; syncing 17280 times a day would only wear the disk.
// The rename is what readers need: they see the old or the new file, never a part.
Result<void> write_textfile(const std::string& path, std::string_view text) {
    const auto slash = path.rfind('/');
    if (path.empty() || path.front() != '/' || slash == std::string::npos ||
        slash + 1 == path.size())
        return fail(EINVAL, path, "not an absolute file path");
    const std::string dir = slash == 0 ? "/" : path.substr(0, slash);
    const std::string name = path.substr(slash + 1);
    UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir_fd.valid()) {
        const int err = errno;
        if (err == ENOTDIR && is_symlink_at(AT_FDCWD, dir))
            return fail(ELOOP, dir, kSymlinkRefused);
        return fail(err, dir);
    }
    struct stat st {};
    if (::fstatat(dir_fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISLNK(st.st_mode))
            return fail(ELOOP, path, kSymlinkRefused);
        if (!S_ISREG(st.st_mode))
            return fail(EEXIST, path, "not a regular file: refusing to replace it");
    } else if (errno != ENOENT) {
        return fail(errno, path);
    }
    const std::string temp = "." + name + ".tmp";
    const std::string temp_shown = dir + "/" + temp;
    auto fd = create_temp(dir_fd.get(), temp, temp_shown);
    if (!fd)
        return std::unexpected(fd.error());
    // The daemon's umask could have taken bits away; node_exporter runs as its own user.
    Result<void> written;
    if (::fchmod(fd->get(), 0644) != 0)
        written = fail(errno, temp_shown, "chmod 0644");
    else
        written = with_context(write_all(fd->get(), text), temp_shown);
    if (written && ::close(fd->release()) != 0)
        written = fail(errno, temp_shown, "close");
    if (written && ::renameat(dir_fd.get(), temp.c_str(), dir_fd.get(), name.c_str()) != 0)
        written = fail(errno, path, "rename from " + temp);
    if (!written)
        (void)::unlinkat(dir_fd.get(), temp.c_str(), 0);
    return written;
}

}  // namespace smtpfence
