// Moving aliases, rolling them back, and garbage collection: each under the model's lock, so that
// gc never deletes a version an alias is being moved to.
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <set>

#include <google/protobuf/text_format.h>

#include "core/io/durable.h"
#include "store/internal.h"

namespace tessera::store {

using namespace internal;

namespace {

constexpr int kMaxAliasHistory = 100;

fs::path AliasPath(const fs::path& model_dir, const std::string& alias) { return model_dir / kAliasesDir / alias; }

// The alias as stored, or an empty one when it does not exist yet. An alias file that cannot be
// read is an IoError; one that reads but does not parse is repaired (its history starts again)
// when `repair`, an IoError otherwise.
Alias ReadAlias(const fs::path& path, bool repair) {
  Alias a;
  if (!io::Exists(path)) return a;
  std::string text = io::ReadSmallFile(path.string(), kMaxTextFileBytes, "an alias");
  if (!google::protobuf::TextFormat::ParseFromString(text, &a)) {
    if (!repair) TESSERA_THROW(IoError, path.string(), ": the alias does not parse");
    std::fprintf(stderr, "tessera: warning: %s: the alias does not parse; it is rewritten and its history starts again\n",
                 path.c_str());
    a.Clear();
  }
  return a;
}

void WriteAlias(const fs::path& path, Alias a) {
  io::CreateDurableDirectories(path.parent_path());
  io::WriteFileAtomically(path.string(), TextProto(a));
}

}  // namespace

AliasChange Store::SetAlias(const std::string& model, const std::string& alias, int64_t version) {
  ValidateAliasName(alias);
  const fs::path model_dir = ModelDir(model);
  ModelLock lock(model_dir);
  std::vector<int64_t> all = Versions(model);
  if (!std::binary_search(all.begin(), all.end(), version))
    TESSERA_THROW(NotFoundError, "model '", model, "' in ", root_, ": no version ", version, " for alias '", alias, "'");
  const fs::path path = AliasPath(model_dir, alias);
  Alias a = ReadAlias(path, true);
  AliasChange change{alias, a.version(), version};
  if (a.version() == version) return change;
  Alias next;  // the previous target goes to the front of the history
  next.set_name(alias);
  next.set_version(version);
  next.set_moved(io::UtcNow());
  next.set_by(Actor());
  if (a.version() > 0) {
    AliasMove* previous = next.add_history();
    previous->set_version(a.version());
    previous->set_moved(a.moved());
    previous->set_by(a.by());
  }
  for (const AliasMove& m : a.history())
    if (next.history_size() < kMaxAliasHistory) *next.add_history() = m;
  a = next;
  WriteAlias(path, a);
  return change;
}

AliasChange Store::Rollback(const std::string& model, const std::string& alias) {
  ValidateAliasName(alias);
  const fs::path model_dir = ModelDir(model);
  ModelLock lock(model_dir);
  const fs::path path = AliasPath(model_dir, alias);
  if (!io::Exists(path)) TESSERA_THROW(NotFoundError, "model '", model, "' in ", root_, ": no alias '", alias, "'");
  Alias a = ReadAlias(path, false);
  if (a.history_size() == 0)
    TESSERA_THROW(StoreError, "model '", model, "': alias '", alias, "' (version ", a.version(),
                  ") has never been moved: there is nothing to roll back to");
  const int64_t target = a.history(0).version();
  std::vector<int64_t> all = Versions(model);
  if (!std::binary_search(all.begin(), all.end(), target))
    TESSERA_THROW(StoreError, "model '", model, "': alias '", alias, "' was at version ", target,
                  " before, but that version no longer exists; move it with `tessera store alias`");
  AliasChange change{alias, a.version(), target};
  a.mutable_history()->erase(a.mutable_history()->begin());
  a.set_version(target);
  a.set_moved(io::UtcNow());
  a.set_by(Actor());
  WriteAlias(path, a);
  return change;
}

GcResult Store::Gc(const std::string& model, int keep, bool dry_run, double stale_after_s) {
  if (keep < 1) TESSERA_THROW(StoreError, "gc --keep must be >= 1 (the latest version is always kept), got ", keep);
  const fs::path model_dir = ModelDir(model);
  if (!io::Exists(model_dir)) TESSERA_THROW(NotFoundError, "no model '", model, "' in ", root_);
  const fs::path trash = model_dir / kTrashDir;
  GcResult r;
  std::vector<fs::path> doomed;
  {
    ModelLock lock(model_dir);
    // Every alias must be readable, and listings complete: a version an unreadable alias names
    // might be deleted otherwise. Each alias protects its version and the one before it (where a
    // rollback would go).
    std::set<int64_t> protect;
    for (const fs::path& e : io::ListDirOrThrow(model_dir / kAliasesDir)) {
      std::string name = e.filename().string();
      if (name.empty() || name[0] == '.') continue;
      Alias a = ReadAlias(e, false);
      protect.insert(a.version());
      if (a.history_size() > 0) protect.insert(a.history(0).version());
    }
    std::vector<int64_t> all;
    for (const fs::path& e : io::ListDirOrThrow(model_dir))
      if (int64_t v = ParseVersionName(e.filename().string())) all.push_back(v);
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i < all.size(); ++i) {
      const bool newest = i + static_cast<size_t>(keep) >= all.size();
      (newest || protect.count(all[i]) ? r.kept : r.deleted).push_back(all[i]);
    }
    if (dry_run) return r;
    // Under the lock only the renames out of sight: quick, whatever the versions' sizes.
    for (int64_t v : r.deleted) {
      fs::path t = MoveToTrash(model_dir / std::to_string(v), trash);
      if (!t.empty()) doomed.push_back(t);
    }
    if (!r.deleted.empty()) io::FsyncPath(model_dir.string(), true);
  }
  for (const fs::path& t : doomed) io::RemoveAllQuietly(t);
  // Deletions cut short earlier, and publishes that died long ago (by the file system's clock).
  const std::time_t now = FileSystemNow(model_dir);
  for (const fs::path& e : io::ListDir(trash))
    if (AgeOnFileSystem(e, now) > 60) io::RemoveAllQuietly(e);
  for (const fs::path& e : io::ListDir(model_dir / kStagingDir)) {
    if (AgeOnFileSystem(e, now) <= stale_after_s) continue;
    fs::path t = MoveToTrash(e, trash);
    if (!t.empty()) {
      io::RemoveAllQuietly(t);
      ++r.stale_staging_removed;
    }
  }
  return r;
}

}  // namespace tessera::store
