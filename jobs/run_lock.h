// One `tessera train` per run directory: an exclusive flock on RUN_DIR/.lock, held by rank 0 for
// the life of the run. A second process on the same directory (whose start-up cleanup would
// delete the first one's checkpoint in progress) is refused with the holder's pid, host and start
// time. The kernel drops the lock when the holder exits, however it exits: no stale locks.
#pragma once

#include <string>

namespace tessera::jobs {

class RunDirLock {
 public:
  // Throws ConfigError naming the holder when another process holds the lock.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace tessera::jobs
