#include "store/internal.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <sstream>
#include <thread>

#include "core/io/durable.h"

namespace tessera::store::internal {

namespace pb = google::protobuf;

int64_t ParseVersionName(const std::string& name) {
  if (name.empty() || name.size() > 18 || name[0] < '1' || name[0] > '9') return 0;
  for (char c : name)
    if (c < '0' || c > '9') return 0;
  return std::stoll(name);
}

namespace {
class Collector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (first_.empty()) first_ = detail::StrCat("line ", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};
}  // namespace

void ReadTextProto(const std::string& path, pb::Message* msg, const std::string& what) {
  std::string text = io::ReadSmallFile(path, kMaxTextFileBytes, what);
  Collector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  msg->Clear();
  if (!parser.ParseFromString(text, msg))
    TESSERA_THROW(IoError, path, ": ", what, " does not parse: ", errors.first().empty() ? "invalid" : errors.first());
}

std::string TextProto(const pb::Message& msg) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(msg, &out);
  return out;
}

std::string Actor() { return io::UserName() + "@" + io::HostName(); }

std::time_t FileSystemNow(const fs::path& dir) {
  const fs::path probe = dir / (".clock-" + io::UniqueToken());
  int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return std::time(nullptr);
  struct stat st {};
  const bool ok = fstat(fd, &st) == 0;
  close(fd);
  unlink(probe.c_str());
  return ok ? st.st_mtime : std::time(nullptr);
}

double AgeOnFileSystem(const fs::path& p, std::time_t fs_now) {
  struct stat st {};
  if (lstat(p.c_str(), &st) != 0) return 0;
  return std::difftime(fs_now, st.st_mtime);
}

fs::path MoveToTrash(const fs::path& p, const fs::path& trash) {
  io::CreateDurableDirectories(trash);
  const fs::path to = trash / (p.filename().string() + "-" + io::UniqueToken());
  if (std::rename(p.c_str(), to.c_str()) == 0) return to;
  if (errno == ENOENT) return {};
  TESSERA_THROW(IoError, p.string(), ": cannot move to ", to.string(), ": ", std::strerror(errno));
}

// ---- the model lock ---------------------------------------------------------------------------

namespace {

std::string OwnerOf(const fs::path& lock) {
  try {
    return io::ReadSmallFile((lock / "owner").string(), 4096, "a lock owner file");
  } catch (const Error&) {
    return "";
  }
}

// Whether the lock's owner file names a process on this host that no longer exists.
bool OwnerIsDeadHere(const std::string& owner) {
  std::istringstream in(owner);
  std::string token, host;
  long pid = 0;
  in >> token >> host >> pid;
  if (host != io::HostName() || pid <= 0) return false;
  return kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

ModelLock::ModelLock(const fs::path& model_dir, double timeout_s, double stale_s)
    : dir_(model_dir / kLockDir), token_(io::UniqueToken()) {
  if (!io::Exists(model_dir)) TESSERA_THROW(NotFoundError, model_dir.string(), ": no such model");
  const auto start = std::chrono::steady_clock::now();
  std::mt19937 rng(std::random_device{}());
  for (;;) {
    if (mkdir(dir_.c_str(), 0755) == 0) {
      std::ostringstream owner;
      owner << token_ << " " << io::HostName() << " " << getpid() << " " << io::UtcNow() << "\n";
      try {
        io::WriteFileAtomically((dir_ / "owner").string(), owner.str());
      } catch (...) {
        io::RemoveAllQuietly(dir_);
        throw;
      }
      return;
    }
    if (errno != EEXIST) TESSERA_THROW(IoError, dir_.string(), ": cannot create the model lock: ", std::strerror(errno));
    const std::string owner = OwnerOf(dir_);
    if (AgeOnFileSystem(dir_, FileSystemNow(model_dir)) > stale_s || OwnerIsDeadHere(owner)) {
      // Whoever renames it away breaks it. If what was renamed is no longer the lock judged stale
      // (its holder released it and another took it in between), it is put back.
      fs::path broken = dir_.parent_path() / (std::string(kLockDir) + ".stale-" + token_);
      if (std::rename(dir_.c_str(), broken.c_str()) == 0) {
        if (OwnerOf(broken) == owner || owner.empty()) io::RemoveAllQuietly(broken);
        else if (std::rename(broken.c_str(), dir_.c_str()) != 0) io::RemoveAllQuietly(broken);
      }
      continue;
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_s)
      TESSERA_THROW(StoreError, dir_.string(), ": the model is locked (by ",
                    owner.empty() ? std::string("unknown") : owner.substr(0, owner.find('\n')), ") and stayed locked for ",
                    timeout_s, " s; if that process is gone, remove ", dir_.string());
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(2, 20)(rng)));
  }
}

ModelLock::~ModelLock() {
  // Only our own lock is removed: if it was broken as stale and taken by another, leave theirs.
  if (OwnerOf(dir_).rfind(token_, 0) != 0) return;
  fs::path released = dir_.parent_path() / (std::string(kLockDir) + ".released-" + token_);
  if (std::rename(dir_.c_str(), released.c_str()) == 0) io::RemoveAllQuietly(released);
}

}  // namespace tessera::store::internal
