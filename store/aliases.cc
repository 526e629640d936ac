// Moving aliases, rolling them back, and garbage collection: each under the model's lock, so that
// gc never deletes a version an alias is being moved to.
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <set>

#include "core/io/durable.h"
#include "store/internal.h"

namespace tessera::store {

using namespace internal;

namespace {

constexpr int kMaxAliasHistory = 100;

fs::path AliasPath(const fs::path& model_dir, const std::string& alias) { return model_dir / kAliasesDir / alias; }

// The alias as stored, or an empty one when it does not exist yet. A damaged alias file is an
// IoError naming it unless `tolerate_damage` (moving an alias repairs it).
Alias ReadAlias(const fs::path& path, bool tolerate_damage) {
  Alias a;
  if (!io::Exists(path)) return a;
  try {
    ReadTextProto(path.string(), &a, "an alias");
  } catch (const IoError& e) {
    if (!tolerate_damage) throw;
    std::fprintf(stderr, "tessera: warning: %s; it is rewritten and its history starts again\n", e.what());
    a.Clear();
  }
  return a;
}

void WriteAlias(const fs::path& path, Alias a) {
  io::CreateDurableDirectories(path.parent_path());
  io::WriteFileAtomically(path.string(), TextProto(a));
}

double AgeSeconds(const fs::path& p) {
  struct stat st {};
  if (lstat(p.c_str(), &st) != 0) return 0;
  return std::difftime(std::time(nullptr), st.st_mtime);
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
  ModelLock lock(model_dir);
  // Every alias must be readable: a version an unreadable alias names might be deleted otherwise.
  std::set<int64_t> aliased;
  for (const fs::path& e : io::ListDir(model_dir / kAliasesDir)) {
    std::string name = e.filename().string();
    if (name.empty() || name[0] == '.') continue;
    Alias a;
    ReadTextProto(e.string(), &a, "an alias (gc stops: it cannot tell which version it protects)");
    aliased.insert(a.version());
  }
  std::vector<int64_t> all = Versions(model);
  GcResult r;
  for (size_t i = 0; i < all.size(); ++i) {
    const bool newest = i + static_cast<size_t>(keep) >= all.size();
    (newest || aliased.count(all[i]) ? r.kept : r.deleted).push_back(all[i]);
  }
  if (dry_run) return r;
  const fs::path trash = model_dir / kTrashDir;
  for (int64_t v : r.deleted) {
    // Out of sight in one rename, then deleted: a crash half-way leaves nothing that looks like a version.
    io::CreateDurableDirectories(trash);
    const fs::path doomed = trash / (std::to_string(v) + "-" + io::UniqueToken());
    std::error_code ec;
    fs::rename(model_dir / std::to_string(v), doomed, ec);
    if (ec) TESSERA_THROW(IoError, (model_dir / std::to_string(v)).string(), ": cannot move to ", doomed.string(), ": ", ec.message());
    io::RemoveAllQuietly(doomed);
  }
  if (!r.deleted.empty()) io::FsyncPath(model_dir.string(), true);
  for (const fs::path& e : io::ListDir(trash)) io::RemoveAllQuietly(e);  // deletions cut short
  for (const fs::path& e : io::ListDir(model_dir / kStagingDir)) {
    if (AgeSeconds(e) > stale_after_s) {
      io::RemoveAllQuietly(e);
      ++r.stale_staging_removed;
    }
  }
  return r;
}

}  // namespace tessera::store
