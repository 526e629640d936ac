// Durable files: what it takes for a write to survive a crash, and for a reader to see either the
// old state or the new one, never half of either.
//
// The pattern, used by checkpoints and the model store alike: write under a hidden temporary
// name in the destination's own directory, fsync the file, rename it over the final name (atomic
// on POSIX file systems, NFS and Lustre included), then fsync the directory so the rename itself
// survives a power loss. Every failure is an IoError naming the path and the system's reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace tessera::io {

namespace fs = std::filesystem;

// Closes a file descriptor when it goes out of scope (close errors ignored: for descriptors only
// read from, or whose writes were made durable with an fsync that was checked).
struct ScopedFd {
  int fd = -1;
  explicit ScopedFd(int f) : fd(f) {}
  ~ScopedFd();
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
};

// fsync() of a file or a directory.
void FsyncPath(const std::string& path, bool directory);
// fsync() of the directory holding `path` (".", for a bare name).
void FsyncParent(const std::string& path);
// pwrite() of all n bytes at `offset`, retrying short writes and EINTR.
void PwriteAll(int fd, const char* data, size_t n, int64_t offset, const std::string& path);

// Creates `dir` and missing parents; when it creates any, makes the new entries durable.
void CreateDurableDirectories(const fs::path& dir);
// "<dir>/.<name>.tmp-<token>": a hidden name beside `path` that no reader looks at.
std::string TempNameBeside(const std::string& path);
// Writes `contents` to `path` atomically and durably (temporary name, fsync, rename, fsync of the
// directory). `mode`: the final file's permission bits. `sync_directory` false leaves the
// directory's fsync to the caller (several files written into one private directory, which is
// then fsynced once).
void WriteFileAtomically(const std::string& path, const std::string& contents, unsigned mode = 0644,
                         bool sync_directory = true);
// Renames `from` to `to` unless `to` exists; returns false (and leaves both) when it does. Uses
// renameat2(RENAME_NOREPLACE) where the file system has it; elsewhere (NFS) a plain rename(),
// which refuses a non-empty directory as the target but would replace an empty one or a file.
bool RenameNoReplace(const fs::path& from, const fs::path& to);

// The whole of a regular file of at most `max_bytes` bytes. IoError naming `what` and the path
// for a missing file, a directory, a FIFO or device, or one over the limit.
std::string ReadSmallFile(const std::string& path, int64_t max_bytes, const std::string& what);
// Throws IoError unless `path` is a regular file (not a directory, FIFO, socket or device).
void RequireRegularFile(const std::string& path, const std::string& what);

// The entries of `dir`; IoError naming it for any failure but its absence (then: none). For
// decisions that must not be made on a partial listing (what gc may delete).
std::vector<fs::path> ListDirOrThrow(const fs::path& dir);

// Never throw: best-effort tidying and listing.
void RemoveAllQuietly(const fs::path& p);
std::vector<fs::path> ListDir(const fs::path& dir);
bool Exists(const fs::path& p);

// A token unique across hosts and processes: "<host>-<pid>-<16 random hex digits>".
std::string UniqueToken();
// This machine's host name ("?" if it has none).
std::string HostName();
// The user running this process ($USER, else the password database, else the uid).
std::string UserName();
// Now, in UTC, ISO 8601: "2026-12-03T10:52:44Z".
std::string UtcNow();

}  // namespace tessera::io
