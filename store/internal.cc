#include "store/internal.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <pwd.h>
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

std::string Actor() {
  const char* user = std::getenv("USER");
  std::string name = user && *user ? user : "";
  if (name.empty()) {
    struct passwd* pw = getpwuid(getuid());
    name = pw && pw->pw_name ? pw->pw_name : std::to_string(getuid());
  }
  return name + "@" + io::HostName();
}

// ---- the model lock ---------------------------------------------------------------------------

namespace {

double AgeSeconds(const fs::path& p) {
  struct stat st {};
  if (stat(p.c_str(), &st) != 0) return 0;
  return std::difftime(std::time(nullptr), st.st_mtime);
}

// Whether the lock's owner file names a process on this host that no longer exists.
bool OwnerIsDeadHere(const fs::path& lock) {
  std::string owner;
  try {
    owner = io::ReadSmallFile((lock / "owner").string(), 4096, "a lock owner file");
  } catch (const Error&) {
    return false;
  }
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
  const auto start = std::chrono::steady_clock::now();
  std::mt19937 rng(std::random_device{}());
  for (;;) {
    if (mkdir(dir_.c_str(), 0755) == 0) {
      std::ostringstream owner;
      owner << token_ << " " << io::HostName() << " " << getpid() << " " << io::UtcNow() << "\n";
      io::WriteFileAtomically((dir_ / "owner").string(), owner.str());
      return;
    }
    if (errno != EEXIST) TESSERA_THROW(IoError, dir_.string(), ": cannot create the model lock: ", std::strerror(errno));
    if (AgeSeconds(dir_) > stale_s || OwnerIsDeadHere(dir_)) {
      // Whoever renames it away breaks it; the others find it gone and try mkdir again.
      fs::path broken = dir_.parent_path() / (std::string(kLockDir) + ".stale-" + token_);
      if (std::rename(dir_.c_str(), broken.c_str()) == 0) io::RemoveAllQuietly(broken);
      continue;
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_s) {
      std::string owner;
      try {
        owner = io::ReadSmallFile((dir_ / "owner").string(), 4096, "a lock owner file");
      } catch (const Error&) {
        owner = "unknown";
      }
      TESSERA_THROW(StoreError, dir_.string(), ": the model is locked (by ", owner.substr(0, owner.find('\n')),
                    ") and stayed locked for ", timeout_s, " s; if that process is gone, remove ", dir_.string());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(2, 20)(rng)));
  }
}

ModelLock::~ModelLock() {
  // Only our own lock is removed: if it was broken as stale and taken by another, leave theirs.
  try {
    std::string owner = io::ReadSmallFile((dir_ / "owner").string(), 4096, "a lock owner file");
    if (owner.rfind(token_, 0) != 0) return;
  } catch (const Error&) {
    return;
  }
  fs::path released = dir_.parent_path() / (std::string(kLockDir) + ".released-" + token_);
  if (std::rename(dir_.c_str(), released.c_str()) == 0) io::RemoveAllQuietly(released);
}

}  // namespace tessera::store::internal
