#include "jobs/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/io/durable.h"

namespace tessera::jobs {

RunDirLock::RunDirLock(const std::string& run_dir) {
  const std::string path = run_dir + "/.lock";
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) TESSERA_THROW(IoError, path, ": cannot open the run directory's lock: ", std::strerror(errno));
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[256] = {0};
    const ssize_t n = pread(fd_, holder, sizeof holder - 1, 0);
    close(fd_);
    fd_ = -1;
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string("another process");
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    if (err == EWOULDBLOCK)
      TESSERA_THROW(ConfigError, "the run directory ", run_dir, " is in use by ", who,
                    ": wait for that run to end, or give this one another --run-dir");
    TESSERA_THROW(IoError, path, ": cannot lock the run directory: ", std::strerror(err));
  }
  const std::string me = "tessera pid " + std::to_string(getpid()) + " on " + io::HostName() + " since " +
                         io::UtcNow() + "\n";
  if (ftruncate(fd_, 0) != 0 || pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    TESSERA_THROW(IoError, path, ": cannot write the run directory's lock: ", std::strerror(errno));
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) close(fd_);
}

}  // namespace tessera::jobs
