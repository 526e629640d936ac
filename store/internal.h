// Internal to store/: file names, hostile reading of the protobuf text files, version listing and
// the model lock.
#pragma once

#include <google/protobuf/message.h>

#include <cstdint>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "store/store.h"

namespace tessera::store::internal {

namespace fs = std::filesystem;

constexpr const char* kWeightsFile = "weights.h5";
constexpr const char* kArchitectureFile = "model.pbtxt";
constexpr const char* kManifestFile = "manifest.pbtxt";
constexpr const char* kAliasesDir = "aliases";
constexpr const char* kStagingDir = ".staging";
constexpr const char* kLockDir = ".lock";
constexpr const char* kTrashDir = ".trash";
// Caps on what a store file may hold before it is even parsed.
constexpr int64_t kMaxTextFileBytes = int64_t{16} << 20;

// The version a directory name denotes ("3" -> 3), or 0 for any other name ("03", "x", ".3").
int64_t ParseVersionName(const std::string& name);

// Reads protobuf text file `path` into `msg`, refusing a file over kMaxTextFileBytes, a
// non-regular file, or text that does not parse (IoError naming `what`, the path and the line).
void ReadTextProto(const std::string& path, google::protobuf::Message* msg, const std::string& what);
std::string TextProto(const google::protobuf::Message& msg);

// "user@host" of this process.
std::string Actor();

// The file system's own clock in `dir` (the mtime of a file created there now): what the ages of
// locks and staging directories are measured against, so that a host whose clock is off by
// minutes judges them as every other host does.
std::time_t FileSystemNow(const fs::path& dir);
// Seconds since `p` was last modified, by the file system's clock (0 if it is gone).
double AgeOnFileSystem(const fs::path& p, std::time_t fs_now);

// Moves `p` into `trash` under a unique name (one rename: whoever renames first owns it) and
// returns the new path, or "" when `p` was already gone.
fs::path MoveToTrash(const fs::path& p, const fs::path& trash);

// The model's lock: a directory created with mkdir(2), atomic on local file systems, NFS and
// Lustre alike, holding an `owner` file (token, host, pid, time). Waits up to `timeout_s` for a
// holder; breaks a lock older than `stale_s` (its holder died) or one held by a dead process on
// this host. Held for milliseconds at a time: alias moves and gc only, never a publish.
class ModelLock {
 public:
  ModelLock(const fs::path& model_dir, double timeout_s = 60, double stale_s = 30);
  ~ModelLock();
  ModelLock(const ModelLock&) = delete;
  ModelLock& operator=(const ModelLock&) = delete;

 private:
  fs::path dir_;
  std::string token_;
};

}  // namespace tessera::store::internal
