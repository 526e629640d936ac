// Helpers the C++ benchmarks share: timing, medians, a cold page cache, timing a shell command.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"

namespace tessera::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

inline double Min(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

// Drops the file's clean pages from the page cache, so the next read comes from the disk.
inline void DropCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) TESSERA_THROW(IoError, path, ": cannot open: ", std::strerror(errno));
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

// Runs `cmd` through the shell; its wall time in seconds (Error when it fails).
inline double TimeCommand(const std::string& cmd) {
  auto t0 = Clock::now();
  if (std::system(cmd.c_str()) != 0) TESSERA_THROW(Error, "failed: ", cmd);
  return Seconds(t0, Clock::now());
}

}  // namespace tessera::bench
