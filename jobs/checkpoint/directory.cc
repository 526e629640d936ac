// Where checkpoints live in a run directory, and how a run directory is tidied after a crash:
//
//   checkpoints/step-00000400/checkpoint.h5   committed
//   checkpoints/latest -> step-00000400/checkpoint.h5
//   checkpoints/.step-00000500.partial/       being written; removed at start
//   checkpoints/.step-00000300.deleting/      retention in progress; removed at start
//   checkpoints/.step-00000400.replaced/      an older save of a step being saved again
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <regex>

#include "core/io/durable.h"
#include "jobs/checkpoint.h"
#include "jobs/checkpoint/format.h"

namespace tessera::jobs {

namespace fs = std::filesystem;
using checkpoint_internal::kFileName;
using checkpoint_internal::ParseStepName;

void RemovePartialCheckpoints(const std::string& checkpoints_dir) {
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return;
  // A committed checkpoint moved aside to be replaced by a new save of the same step, when the
  // crash came before the new one took its place: put it back.
  static const std::regex replaced(R"(\.(step-[0-9]+)\.replaced)");
  for (const fs::path& entry : io::ListDir(checkpoints_dir)) {
    std::smatch m;
    std::string name = entry.filename().string();
    if (!std::regex_match(name, m, replaced)) continue;
    fs::path committed = entry.parent_path() / m[1].str();
    if (fs::is_regular_file(committed / kFileName, ec)) {
      io::RemoveAllQuietly(entry);  // the new save took its place: the old one is garbage
    } else if (fs::is_regular_file(entry / kFileName, ec)) {
      io::RemoveAllQuietly(committed);  // at most an empty or half-made directory
      fs::rename(entry, committed, ec);
      if (ec)
        std::fprintf(stderr, "tessera: warning: cannot put %s back as %s: %s\n", entry.c_str(), committed.c_str(),
                     ec.message().c_str());
    }
    // anything else (no checkpoint.h5: a deletion cut short) is left for the loop below
  }
  static const std::regex re(R"(\.step-[0-9]+\.(partial|deleting)|\.latest\.tmp)");
  static const std::regex half_deleted(R"(\.step-[0-9]+\.replaced)");
  for (const fs::path& entry : io::ListDir(checkpoints_dir)) {
    std::string name = entry.filename().string();
    if (std::regex_match(name, re)) io::RemoveAllQuietly(entry);
    // A .replaced that still holds a checkpoint was not put back (the rename failed): keep it.
    else if (std::regex_match(name, half_deleted) && !fs::is_regular_file(entry / kFileName, ec))
      io::RemoveAllQuietly(entry);
  }
}

std::string SetAsideCheckpoints(const std::string& checkpoints_dir) {
  fs::path dir = fs::path(checkpoints_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "a/checkpoints/" -> "a/checkpoints"
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, ".earlier-%Y%m%d-%H%M%S", &tm);
  fs::path aside = dir.string() + stamp;
  for (int k = 2; io::Exists(aside); ++k) aside = dir.string() + stamp + "-" + std::to_string(k);
  // One rename: a crash leaves either the old directory whole or nothing of it in the way.
  std::error_code ec;
  fs::rename(dir, aside, ec);
  if (ec) TESSERA_THROW(IoError, dir.string(), ": cannot move to ", aside.string(), ": ", ec.message());
  io::FsyncParent(fs::absolute(dir, ec).string());
  return aside.string();
}

std::string FindLatestCheckpoint(const std::string& checkpoints_dir) {
  std::error_code ec;
  fs::path dir(checkpoints_dir);
  if (!fs::is_directory(dir, ec)) return "";
  fs::path latest = dir / "latest";
  if (fs::is_symlink(latest, ec)) {
    fs::path target = fs::read_symlink(latest, ec);
    if (!ec) {
      fs::path file = target.is_absolute() ? target : dir / target;
      if (fs::is_regular_file(file, ec)) return file.lexically_normal().string();
    }
  }
  std::vector<std::string> all = ListCheckpoints(checkpoints_dir);
  return all.empty() ? "" : all.front();
}

CheckpointDirReport InspectCheckpointDir(const std::string& checkpoints_dir) {
  CheckpointDirReport r;
  std::error_code ec;
  const fs::path dir(checkpoints_dir);
  if (!fs::exists(fs::symlink_status(dir, ec))) {
    fs::create_directories(dir, ec);  // now, so that a path that cannot be created fails now
    if (ec) r.problems.push_back(checkpoints_dir + ": cannot be created: " + ec.message());
    return r;
  }
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::is_directory(st)) {
    r.problems.push_back(checkpoints_dir + ": exists and is not a directory; checkpoints cannot be saved there");
    return r;
  }
  if (access(checkpoints_dir.c_str(), W_OK) != 0)
    r.problems.push_back(checkpoints_dir + ": is not writable (" + std::strerror(errno) + "); checkpoints cannot be saved");
  const fs::path latest = dir / "latest";
  const fs::file_status ls = fs::symlink_status(latest, ec);
  if (fs::exists(ls) && !fs::is_symlink(ls))
    r.problems.push_back(latest.string() + ": is a " + (fs::is_directory(ls) ? "directory" : "file") +
                         ", not the symbolic link tessera keeps there; move it away");
  const std::vector<std::string> committed = ListCheckpoints(checkpoints_dir);
  const int64_t newest = committed.empty() ? -1 : ParseStepName(fs::path(committed.front()).parent_path().filename().string());
  if (fs::is_symlink(ls)) {
    const fs::path target = fs::read_symlink(latest, ec);
    const fs::path file = target.is_absolute() ? target : dir / target;
    if (!ec && !fs::is_regular_file(file, ec))
      r.warnings.push_back(latest.string() + " names " + target.string() + ", which is gone; resuming from " +
                           (committed.empty() ? std::string("nothing (starting from scratch)") : committed.front()));
  }
  for (const fs::path& entry : io::ListDir(checkpoints_dir)) {
    const int64_t s = ParseStepName(entry.filename().string());
    if (s > newest && !fs::is_regular_file(entry / kFileName, ec))
      r.warnings.push_back(entry.string() + " has no " + kFileName + " (deleted?); it is skipped");
  }
  return r;
}

std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir) {
  std::error_code ec;
  std::vector<std::pair<int64_t, std::string>> found;
  for (const fs::path& entry : io::ListDir(checkpoints_dir)) {
    int64_t s = ParseStepName(entry.filename().string());
    if (s >= 0 && fs::is_regular_file(entry / kFileName, ec))
      found.emplace_back(s, (entry / kFileName).lexically_normal().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string ResolveCheckpoint(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (!fs::exists(p, ec)) TESSERA_THROW(IoError, path, ": no such file or directory");
  if (!fs::is_directory(p, ec)) {
    io::RequireRegularFile(path, "a checkpoint");  // a FIFO or device would block or never end
    return path;
  }
  if (fs::is_regular_file(p / kFileName, ec)) return (p / kFileName).string();
  std::string found = FindLatestCheckpoint(path);
  if (found.empty() && fs::is_directory(p / "checkpoints", ec)) found = FindLatestCheckpoint((p / "checkpoints").string());
  if (found.empty())
    TESSERA_THROW(IoError, path, ": no checkpoint there (expected a checkpoint file, a step-N directory, a "
                  "checkpoints directory or a run directory holding committed checkpoints)");
  return found;
}

}  // namespace tessera::jobs
