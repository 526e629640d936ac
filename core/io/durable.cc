#include "core/io/durable.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>

#include "core/error.h"

namespace tessera::io {

ScopedFd::~ScopedFd() {
  if (fd >= 0) close(fd);
}

void FsyncPath(const std::string& path, bool directory) {
  int fd = open(path.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  if (fd < 0) TESSERA_THROW(IoError, path, ": cannot open to sync: ", std::strerror(errno));
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) TESSERA_THROW(IoError, path, ": fsync failed: ", std::strerror(err));
}

void FsyncParent(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  FsyncPath(parent.empty() ? "." : parent.string(), true);
}

void PwriteAll(int fd, const char* data, size_t n, int64_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t w = pwrite(fd, data, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      TESSERA_THROW(IoError, path, ": write of ", n, " bytes at offset ", offset, " failed: ", std::strerror(errno));
    }
    data += w;
    n -= static_cast<size_t>(w);
    offset += w;
  }
}

void CreateDurableDirectories(const fs::path& dir) {
  if (Exists(dir)) return;
  std::error_code ec;
  fs::path abs = fs::absolute(dir, ec).lexically_normal();
  if (ec) TESSERA_THROW(IoError, dir.string(), ": cannot resolve the path: ", ec.message());
  if (abs.filename().empty()) abs = abs.parent_path();  // "a/b/" -> "a/b"
  fs::path top = abs;  // the highest ancestor that does not exist yet
  for (fs::path up = top.parent_path(); up != top && !up.empty() && !Exists(up); up = top.parent_path()) top = up;
  fs::create_directories(abs, ec);
  if (ec && !fs::is_directory(abs)) TESSERA_THROW(IoError, dir.string(), ": cannot create the directory: ", ec.message());
  // Each new directory's entry is made durable in its parent, from the deepest up.
  for (fs::path p = abs;; p = p.parent_path()) {
    FsyncPath(p.parent_path().string(), true);
    if (p == top) break;
  }
}

std::string TempNameBeside(const std::string& path) {
  fs::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + ".tmp-" + UniqueToken())).string();
}

void WriteFileAtomically(const std::string& path, const std::string& contents, unsigned mode, bool sync_directory) {
  const std::string tmp = TempNameBeside(path);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) TESSERA_THROW(IoError, tmp, ": cannot create: ", std::strerror(errno));
  try {
    PwriteAll(fd, contents.data(), contents.size(), 0, tmp);
    if (fchmod(fd, mode) != 0) TESSERA_THROW(IoError, tmp, ": chmod failed: ", std::strerror(errno));
    if (fsync(fd) != 0) TESSERA_THROW(IoError, tmp, ": fsync failed: ", std::strerror(errno));
    if (close(fd) != 0) {
      fd = -1;
      TESSERA_THROW(IoError, tmp, ": close failed: ", std::strerror(errno));
    }
    fd = -1;
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      TESSERA_THROW(IoError, path, ": cannot rename ", tmp, " into place: ", std::strerror(errno));
  } catch (...) {
    if (fd >= 0) close(fd);
    unlink(tmp.c_str());
    throw;
  }
  if (sync_directory) FsyncParent(path);
}

bool RenameNoReplace(const fs::path& from, const fs::path& to) {
  if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
  if (errno == EEXIST || errno == ENOTEMPTY) return false;
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
    TESSERA_THROW(IoError, from.string(), ": cannot rename to ", to.string(), ": ", std::strerror(errno));
  // No RENAME_NOREPLACE here (NFS): rename() onto an existing non-empty directory fails.
  if (Exists(to)) return false;
  if (std::rename(from.c_str(), to.c_str()) == 0) return true;
  if (errno == EEXIST || errno == ENOTEMPTY) return false;
  TESSERA_THROW(IoError, from.string(), ": cannot rename to ", to.string(), ": ", std::strerror(errno));
}

void RequireRegularFile(const std::string& path, const std::string& what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) TESSERA_THROW(IoError, path, ": no such file (", what, ")");
    TESSERA_THROW(IoError, path, ": cannot read ", what, ": ", std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) TESSERA_THROW(IoError, path, ": is a directory, not ", what);
  if (!S_ISREG(st.st_mode))
    TESSERA_THROW(IoError, path, ": is not a regular file (a FIFO, device or socket); refusing to read it as ", what);
}

std::string ReadSmallFile(const std::string& path, int64_t max_bytes, const std::string& what) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // O_NONBLOCK: a FIFO must not block the open
  if (fd < 0) {
    if (errno == ENOENT) TESSERA_THROW(IoError, path, ": no such file (", what, ")");
    TESSERA_THROW(IoError, path, ": cannot read ", what, ": ", std::strerror(errno));
  }
  struct stat st {};
  std::string out;
  try {
    if (fstat(fd, &st) != 0) TESSERA_THROW(IoError, path, ": cannot read ", what, ": ", std::strerror(errno));
    if (S_ISDIR(st.st_mode)) TESSERA_THROW(IoError, path, ": is a directory, not ", what);
    if (!S_ISREG(st.st_mode))
      TESSERA_THROW(IoError, path, ": is not a regular file (a FIFO, device or socket); refusing to read it as ", what);
    if (st.st_size > max_bytes)
      TESSERA_THROW(IoError, path, ": is ", st.st_size, " bytes; ", what, " is at most ", max_bytes, " bytes");
    out.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < out.size()) {
      ssize_t r = pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) TESSERA_THROW(IoError, path, ": read failed: ", std::strerror(errno));
      if (r == 0) break;  // shrank while being read
      got += static_cast<size_t>(r);
    }
    out.resize(got);
  } catch (...) {
    close(fd);
    throw;
  }
  close(fd);
  return out;
}

std::vector<fs::path> ListDirOrThrow(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec == std::errc::no_such_file_or_directory) return out;
  for (; !ec && it != end; it.increment(ec)) out.push_back(it->path());
  if (ec) TESSERA_THROW(IoError, dir.string(), ": cannot list: ", ec.message());
  return out;
}

void RemoveAllQuietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

std::vector<fs::path> ListDir(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) out.push_back(it->path());
  return out;
}

bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec)) && !ec;
}

std::string HostName() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0 || host[0] == 0) return "?";
  return host;
}

std::string UserName() {
  const char* user = std::getenv("USER");
  if (user && *user) return user;
  struct passwd* pw = getpwuid(getuid());
  if (pw && pw->pw_name) return pw->pw_name;
  return std::to_string(getuid());
}

std::string UniqueToken() {
  static thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid()) ^
           static_cast<uint64_t>(std::time(nullptr));
  }());
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return HostName() + "-" + std::to_string(getpid()) + "-" + buf;
}

std::string UtcNow() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace tessera::io
