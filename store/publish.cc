// Publishing a version: stage, make durable, verify, then claim the next number with one rename.
//
// Why this holds with several publishers, also on different hosts sharing NFS or Lustre: the
// version number is claimed by rename(2) of the complete staging directory onto ROOT/MODEL/N.
// renameat2(RENAME_NOREPLACE) fails if N exists; where the file system lacks it (NFS), rename(2)
// of a directory onto an existing non-empty directory fails with EEXIST/ENOTEMPTY, and the server
// performs the rename atomically. Exactly one publisher wins N; the others see the failure and try
// N+1. A reader lists only complete version directories, so it never sees a half-written one: the
// staging directory is hidden, and its rename is the moment the version appears. One NFS quirk is
// handled: a retransmitted rename that had succeeded reports ENOENT; the publisher then finds its
// own publish id in N's manifest and knows the number is its own.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>

#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "store/internal.h"
#include "tessera/config.h"

namespace tessera::store {

using namespace internal;

namespace {

// Refuses a tensor holding NaN or infinity: such weights answer every request with garbage.
void RequireFinite(const io::WeightsView& v, const std::string& model) {
  int64_t n = 1;
  for (int64_t d : v.shape) n *= d;
  int64_t bad = 0;
  if (v.dtype == DType::kF32) {
    const float* p = static_cast<const float*>(v.data);
    for (int64_t i = 0; i < n; ++i) bad += !std::isfinite(p[i]);
  } else if (v.dtype == DType::kF64) {
    const double* p = static_cast<const double*>(v.data);
    for (int64_t i = 0; i < n; ++i) bad += !std::isfinite(p[i]);
  }
  if (bad > 0)
    TESSERA_THROW(StoreError, "model '", model, "': refusing to publish: tensor ", v.name, " holds ", bad, " of ", n,
                  " values that are NaN or infinite");
}

// Moves to the trash the staging directories of publishers on this host that no longer run and
// were last touched more than ten minutes ago (their names are UniqueToken()s: host-pid-random;
// the age guards against a live publisher in another PID namespace under the same host name).
// One rename decides: a publisher still alive either renamed its stage to a version first, or
// finds it gone and fails cleanly. Other hosts' leftovers are for gc, which goes by age alone.
void RemoveDeadStaging(const fs::path& model_dir) {
  const fs::path staging = model_dir / kStagingDir;
  const std::string host = io::HostName();
  const std::time_t now = FileSystemNow(staging);
  for (const fs::path& e : io::ListDir(staging)) {
    const std::string name = e.filename().string();
    // <host>-<pid>-<16 hex digits>; the host name may itself hold '-'.
    const size_t random = name.rfind('-');
    const size_t pid_at = random == std::string::npos || random == 0 ? std::string::npos : name.rfind('-', random - 1);
    if (pid_at == std::string::npos || name.substr(0, pid_at) != host) continue;
    const long pid = std::atol(name.substr(pid_at + 1, random - pid_at - 1).c_str());
    if (pid <= 0 || kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    if (AgeOnFileSystem(e, now) < 600) continue;
    fs::path trashed = MoveToTrash(e, model_dir / kTrashDir);
    if (!trashed.empty()) io::RemoveAllQuietly(trashed);
  }
}

// The highest number any entry of the model directory is named by (complete or not).
int64_t HighestNumber(const fs::path& model_dir) {
  int64_t high = 0;
  for (const fs::path& e : io::ListDir(model_dir)) high = std::max(high, ParseVersionName(e.filename().string()));
  return high;
}

// Whether version directory `dir` holds the manifest of publish `token`.
bool PublishedBy(const fs::path& dir, const std::string& token) {
  try {
    VersionManifest m;
    ReadTextProto((dir / kManifestFile).string(), &m, "a version manifest");
    return m.publish_id() == token;
  } catch (const Error&) {
    return false;
  }
}

// Renames the complete `stage` to the next free number; returns it. Each attempt takes a number
// above both the highest listed and the last one tried (a cached directory listing on NFS may lag).
int64_t ClaimNextNumber(const fs::path& model_dir, const fs::path& stage, const std::string& token, int* attempts) {
  int64_t tried = 0;
  for (*attempts = 1;; ++*attempts) {
    const int64_t n = std::max(HighestNumber(model_dir), tried) + 1;
    tried = n;
    const fs::path target = model_dir / std::to_string(n);
    int rc = renameat2(AT_FDCWD, stage.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE);
    int err = errno;
    if (rc != 0 && (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP)) {
      if (io::Exists(target)) continue;
      rc = std::rename(stage.c_str(), target.c_str());
      err = errno;
    }
    if (rc == 0) return n;
    if (err == ENOENT && PublishedBy(target, token)) return n;
    if (err == ENOENT)
      TESSERA_THROW(IoError, stage.string(), ": the staged version vanished before it was published (removed as stale "
                    "by another process?)");
    if (err != EEXIST && err != ENOTEMPTY)
      TESSERA_THROW(IoError, stage.string(), ": cannot rename to ", target.string(), ": ", std::strerror(err));
    if (*attempts >= 10000) TESSERA_THROW(IoError, model_dir.string(), ": could not claim a version number");
    if (*attempts % 16 == 0) usleep(1000);  // many publishers at once: let the listing catch up
  }
}

// Re-reads what was staged as a reader will: the manifest parses and lists each file with its
// size and sha256, the architecture parses, and the weights file opens with the tensors written.
void VerifyStaged(const fs::path& stage, const VersionManifest& want, const io::WeightsWriteResult& written) {
  VersionManifest m;
  ReadTextProto((stage / kManifestFile).string(), &m, "a version manifest");
  if (m.publish_id() != want.publish_id() || m.files_size() != want.files_size())
    TESSERA_THROW(IoError, stage.string(), ": verification: the manifest read back differs from the one written");
  for (const FileDigest& f : m.files()) {
    struct stat st {};
    const fs::path p = stage / f.name();
    if (stat(p.c_str(), &st) != 0 || st.st_size != f.bytes())
      TESSERA_THROW(IoError, p.string(), ": verification: not ", f.bytes(), " bytes as the manifest says");
  }
  Architecture a;
  ReadTextProto((stage / kArchitectureFile).string(), &a, "a model architecture");
  io::WeightsInfo w = io::ReadWeightsInfo((stage / kWeightsFile).string());
  if (w.tensors.size() != written.tensors.size())
    TESSERA_THROW(IoError, stage.string(), ": verification: the weights file lists ", w.tensors.size(), " tensors, not ",
                  written.tensors.size());
  for (size_t i = 0; i < w.tensors.size(); ++i)
    if (w.tensors[i].path != written.tensors[i].path || w.tensors[i].shape != written.tensors[i].shape ||
        w.tensors[i].crc32 != written.tensors[i].crc32)
      TESSERA_THROW(IoError, stage.string(), ": verification: ", w.tensors[i].path, " differs from what was written");
}

FileDigest DigestOf(const std::string& name, int64_t bytes, const std::string& sha) {
  FileDigest d;
  d.set_name(name);
  d.set_bytes(bytes);
  d.set_sha256(sha);
  return d;
}

}  // namespace

PublishResult Store::Publish(const PublishRequest& req) {
  ValidateModelName(req.model);
  if (!req.alias.empty()) ValidateAliasName(req.alias);
  if (!req.architecture.has_model() || req.architecture.model().family_case() == models::ModelSpec::FAMILY_NOT_SET)
    TESSERA_THROW(StoreError, "model '", req.model, "': the architecture names no model");
  for (const io::WeightsView& v : req.weights) RequireFinite(v, req.model);
  const fs::path model_dir = ModelDir(req.model);
  const fs::path staging = model_dir / kStagingDir;
  io::CreateDurableDirectories(staging);
  RemoveDeadStaging(model_dir);
  const std::string token = io::UniqueToken();
  const fs::path stage = staging / token;
  if (mkdir(stage.c_str(), 0755) != 0)
    TESSERA_THROW(IoError, stage.string(), ": cannot create the staging directory: ", std::strerror(errno));
  PublishResult result;
  try {
    // 1. The files, each durable under its final name inside the hidden staging directory.
    const std::string weights = (stage / kWeightsFile).string();
    // Each file fsynced; their names inside the private stage are made durable by one fsync of it.
    io::WeightsWriteResult written = io::WriteWeightsFile(weights, req.weights_meta, req.weights, false);
    if (chmod(weights.c_str(), 0444) != 0) TESSERA_THROW(IoError, weights, ": chmod failed: ", std::strerror(errno));
    const int64_t weights_bytes = written.file_bytes;
    const std::string& weights_sha = written.sha256;
    const std::string arch = TextProto(req.architecture);
    io::WriteFileAtomically((stage / kArchitectureFile).string(), arch, 0444, false);
    VersionManifest m;
    m.set_model(req.model);
    m.set_created(io::UtcNow());
    m.set_tessera_version(TESSERA_VERSION);
    m.set_publish_id(token);
    *m.add_files() = DigestOf(kWeightsFile, weights_bytes, weights_sha);
    *m.add_files() = DigestOf(kArchitectureFile, static_cast<int64_t>(arch.size()), io::Sha256Hex(arch));
    for (const auto& [name, value] : req.metrics) (*m.mutable_metrics())[name] = value;
    *m.mutable_lineage() = req.lineage;
    const std::string manifest = TextProto(m);
    io::WriteFileAtomically((stage / kManifestFile).string(), manifest, 0444, false);
    result.bytes = weights_bytes + static_cast<int64_t>(arch.size() + manifest.size());
    // 2. Read back as a reader will, then make the directory entries durable.
    VerifyStaged(stage, m, written);
    io::FsyncPath(stage.string(), true);
    // 3. Visible in one step, under the next free number.
    result.version = ClaimNextNumber(model_dir, stage, token, &result.attempts);
  } catch (...) {
    io::RemoveAllQuietly(stage);
    throw;
  }
  io::FsyncPath(model_dir.string(), true);
  result.dir = VersionDir(req.model, result.version);
  if (!req.alias.empty()) {
    try {
      SetAlias(req.model, req.alias, result.version);
    } catch (const Error& e) {
      TESSERA_THROW(StoreError, "model '", req.model, "': published version ", result.version, " (", result.dir,
                    ") but could not move alias '", req.alias, "' to it: ", e.what(), "; move it with `tessera store "
                    "alias ", req.model, "@", result.version, " ", req.alias, "` rather than publishing again");
    }
  }
  return result;
}

}  // namespace tessera::store
