// TensorBoard event files, written by tessera (no TensorFlow): RUN_DIR/events.out.tfevents.*,
// which `tensorboard --logdir runs/` shows beside other runs.
//
// A file is a sequence of records, each
//     uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes |
//     `length` bytes: a serialized Event (jobs/tensorboard/event.proto) | uint32 masked CRC-32C of them
// where masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8, the TFRecord framing. The first record
// holds the file version "brain.Event:2"; each later one a Summary of scalars at one step.
//
// Every Write is flushed to the file, so a run that dies keeps what it had logged; a record cut
// short by a crash is at the end, where TensorBoard's reader stops. A resumed run opens a new
// file in the same directory, as TensorFlow's writers do (TensorBoard reads them in name order),
// starting with a restart record (Restart). A name already taken (a run resumed in the same
// second by the same process) gets a suffix: an existing file is never truncated.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace tessera::jobs::tensorboard {

// Seconds since the epoch, as an Event's wall_time.
double WallTimeNow();

class EventFile {
 public:
  // Writes into DIR/events.out.tfevents.<unix seconds>.<host>.<pid>, created at the first Write
  // (a run that logs nothing, such as a finished run started again, leaves no file behind).
  explicit EventFile(std::string dir) : dir_(std::move(dir)) {}

  // Scalars at `step` (one Event), each (tag, value); `wall_time` in seconds since the epoch.
  // IoError naming the file when it cannot be created or written.
  using Scalars = std::vector<std::pair<std::string, double>>;
  void Write(int64_t step, const Scalars& scalars, double wall_time);
  // A resumed run's first record: a SessionLog START at `next_step` (the first step it will log),
  // so that TensorBoard drops what earlier files logged from there on.
  void Restart(int64_t next_step, double wall_time);

  // The file's path; empty before the first Write.
  const std::string& path() const { return path_; }

  // The record framing around `payload`, exposed for the tests.
  static std::string Record(const std::string& payload);

 private:
  std::string dir_, path_;
  std::ofstream out_;
  void Open();
  void Append(const std::string& payload);
};

}  // namespace tessera::jobs::tensorboard
