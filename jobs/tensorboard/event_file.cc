#include "jobs/tensorboard/event_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "core/error.h"
#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "jobs/tensorboard/event.pb.h"

namespace tessera::jobs::tensorboard {
namespace {

uint32_t MaskedCrc(const void* data, size_t n) {
  const uint32_t c = io::Crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void PutLittleEndian(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

double WallTimeNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string EventFile::Record(const std::string& payload) {
  std::string r;
  r.reserve(payload.size() + 16);
  PutLittleEndian(r, payload.size(), 8);
  PutLittleEndian(r, MaskedCrc(r.data(), 8), 4);
  r += payload;
  PutLittleEndian(r, MaskedCrc(payload.data(), payload.size()), 4);
  return r;
}

void EventFile::Open() {
  const double now = WallTimeNow();
  const std::string base = dir_ + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." +
                           io::HostName() + "." + std::to_string(getpid());
  int fd = -1;
  for (int n = 0; fd < 0 && n < 1000; ++n) {
    path_ = n == 0 ? base : base + "." + std::to_string(n);
    fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) TESSERA_THROW(IoError, path_, ": cannot write: ", std::strerror(errno));
  }
  if (fd < 0) TESSERA_THROW(IoError, base, ": cannot write: 1000 files of that name exist");
  ::close(fd);
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) TESSERA_THROW(IoError, path_, ": cannot write: ", std::strerror(errno));
  Event e;
  e.set_wall_time(now);
  e.set_file_version("brain.Event:2");
  Append(e.SerializeAsString());
}

void EventFile::Write(int64_t step, const Scalars& scalars, double wall_time) {
  if (scalars.empty()) return;
  if (!out_.is_open()) Open();
  Event e;
  e.set_wall_time(wall_time);
  e.set_step(step);
  Summary* s = e.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    SummaryValue* v = s->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  Append(e.SerializeAsString());
}

void EventFile::Restart(int64_t next_step, double wall_time) {
  if (!out_.is_open()) Open();
  Event e;
  e.set_wall_time(wall_time);
  e.set_step(next_step);
  e.mutable_session_log()->set_status(SessionLog::START);
  Append(e.SerializeAsString());
}

void EventFile::Append(const std::string& payload) {
  out_ << Record(payload) << std::flush;
  if (!out_) TESSERA_THROW(IoError, path_, ": cannot write: ", std::strerror(errno));
}

}  // namespace tessera::jobs::tensorboard
