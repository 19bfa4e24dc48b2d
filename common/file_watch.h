// Noticing that a file changed, by polling its stat(2): replaced by rename (as
// useradd and editors do: a new inode), edited in place (mtime, size), created or
// deleted. Polling once a second is cheap (one stat per file) and, unlike inotify
// on the file, keeps working across renames without re-arming anything.
#pragma once

#include <sys/stat.h>

#include <string>
#include <vector>

namespace smtpfence {

struct FileStamp {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    timespec mtime{};
    timespec ctime{};

    [[nodiscard]] static FileStamp of(const std::string& path) {
        FileStamp s;
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0)
            return s;
        s.exists = true;
        s.dev = st.st_dev;
        s.ino = st.st_ino;
        s.size = st.st_size;
        s.mtime = st.st_mtim;
        s.ctime = st.st_ctim;
        return s;
    }
    [[nodiscard]] bool operator==(const FileStamp& o) const {
        return exists == o.exists && dev == o.dev && ino == o.ino && size == o.size &&
               mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec &&
               ctime.tv_sec == o.ctime.tv_sec && ctime.tv_nsec == o.ctime.tv_nsec;
    }
};

class FileWatch {
  public:
    FileWatch() = default;
    explicit FileWatch(std::vector<std::string> paths) : paths_(std::move(paths)) { rearm(); }

    // Takes the current stamps as the reference (call before reading the files, so a
    // change made while reading is seen next time).
    void rearm() {
        stamps_.clear();
        for (const std::string& p : paths_)
            stamps_.push_back(FileStamp::of(p));
    }
    // True when any file differs from the reference; the reference is updated.
    [[nodiscard]] bool changed() {
        bool any = false;
        for (std::size_t i = 0; i < paths_.size(); ++i) {
            const FileStamp now = FileStamp::of(paths_[i]);
            if (!(now == stamps_[i])) {
                stamps_[i] = now;
                any = true;
            }
        }
        return any;
    }
    [[nodiscard]] const std::vector<std::string>& paths() const { return paths_; }

  private:
    std::vector<std::string> paths_;
    std::vector<FileStamp> stamps_;
};

}  // namespace smtpfence
