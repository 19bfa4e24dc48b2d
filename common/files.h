// Reading configuration files defensively: a config path given by an admin may be a
// directory, a symlink loop, a FIFO or a 10 GB file by mistake; each is a clear error.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "common/error.h"
#include "common/fd.h"

namespace smtpfence {

// Largest configuration file we read. A full-size csf.conf is ~100 KB; 16 MiB leaves
// room for huge allowlists while refusing runaway files before they eat memory.
inline constexpr std::size_t kMaxConfigBytes = 16U << 20U;

// Whether the last component of a path may be a symlink. Follow for the admin's files
// in /etc (config management links them); Refuse for the files we write ourselves
// (the worker's state): one planted there must not make us read something else.
enum class Symlinks { Follow, Refuse };

// The detail of every error for a symlink we refused to follow (O_NOFOLLOW's ELOOP).
inline constexpr const char* kSymlinkRefused = "a symlink: refusing to follow it";

// Whether name (relative to dirfd, or a path with AT_FDCWD) is itself a symlink. For
// the error of an open() with O_DIRECTORY|O_NOFOLLOW, which says ENOTDIR for a symlink,
// even one to a directory.
[[nodiscard]] bool is_symlink_at(int dirfd, const std::string& name);

// The worker's state directory (mode 0750, created when missing), opened as a directory
// descriptor and never through a symlink: replaced by one, it would make the worker, as
// root, create and write files in whatever directory it points at.
[[nodiscard]] Result<UniqueFd> open_state_dir(const std::string& state_dir);

// A file the worker writes as root must be its own: a regular file with one link. A
// hard link planted at its name would make it write, as root, to whatever file shares
// that inode. st: the file's (l)stat; refusing: what is refused, for the message
// ("write to it").
[[nodiscard]] Result<void> check_own_file(const struct stat& st, const std::string& path,
                                          const std::string& refusing);

// Reads a regular file of at most max_bytes. Errors name the path:
// "/etc/smtpfence/smtpfence.conf: Is a directory".
[[nodiscard]] Result<std::string> read_text_file(const std::string& path,
                                                 std::size_t max_bytes = kMaxConfigBytes,
                                                 Symlinks symlinks = Symlinks::Follow);

// Writes all of data to fd, retrying on EINTR and short writes (a blocking fd: on a
// non-blocking one EAGAIN is an error). The error carries write(2)'s errno under
// "write"; callers name the file or peer.
[[nodiscard]] Result<void> write_all(int fd, std::string_view data);

// The same for a socket, with send(2) and MSG_NOSIGNAL: a peer that has gone away is
// EPIPE, not SIGPIPE. The error carries send(2)'s errno under "send".
[[nodiscard]] Result<void> send_all(int fd, std::string_view data);

// Writes path atomically: a temporary file in the same directory, fsync, rename, fsync
// of the directory. Readers see the old or the new content, never a mix.
[[nodiscard]] Result<void> write_file_atomic(const std::string& path, const std::string& content,
                                             unsigned mode = 0644);

}  // namespace smtpfence
