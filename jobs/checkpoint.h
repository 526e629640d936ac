// Checkpoints: one HDF5 file per checkpoint, every tensor at its logical name, shape and dtype.
//
//   RUN_DIR/checkpoints/step-00000400/checkpoint.h5   a committed checkpoint
//   RUN_DIR/checkpoints/latest -> step-00000400/checkpoint.h5
//   RUN_DIR/checkpoints/.step-00000500.partial/       being written (never read; removed at start)
//
// Inside the file (docs/checkpoint-format.md has every attribute):
//   /model/<param>             e.g. /model/0.weight, float32 at the parameter's shape
//   /optim/<param>/<state>     e.g. /optim/0.weight/exp_avg (PyTorch's state names)
//   /rng/rank_state            per rank: (seed, next example position) -- every random stream is a
//                              function of (seed, epoch, example), so this is all of it
//   /manifest                  JSON: every tensor's path, shape, dtype, bytes and CRC-32
//   root attributes            step, epoch, sampler position, optimizer step, resolved job spec,
//                              world size, parallel layout, format and tessera versions
// Each tensor dataset carries a `crc32` attribute: zlib's CRC-32 of its bytes in row-major order,
// so `zlib.crc32(f["/model/0.weight"][()].tobytes())` checks it with no tessera code.
//
// Writing. Each rank owns a contiguous slice of the flat buffers (1/N of them: the ZeRO-style
// partition, so the I/O is shared even when the state is replicated). Save() copies the rank's
// slice to host memory and returns; a background thread then does the I/O:
//   1. rank 0 creates the file under the temporary name with every dataset allocated
//      (contiguous, no fill) and broadcasts each dataset's byte offset in the file;
//   2. every rank pwrite()s the bytes it owns at those offsets and fdatasync()s;
//   3. the ranks' per-piece CRCs are gathered; rank 0 combines them, writes the crc32
//      attributes and the manifest, fsyncs, and reopens the file as a reader would to check that
//      every tensor has its shape, dtype and CRC and sits where its bytes were written (the data
//      itself is read back and checked by every load and by `tessera ckpt verify`);
//   4. rank 0 renames the directory into place, points `latest` at it (a symlink replaced by
//      rename), fsyncs the parent, deletes all but the newest keep_last checkpoints and tells
//      every rank that the save is committed (or why it failed).
// A crash at any point leaves the previous checkpoint committed and the partial one invisible.
// Coordination uses the process group's collectives with their timeouts, so a dead rank is an
// error, never a hang; HDF5 itself is only ever called by one process at a time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/io/hdf5.h"
#include "core/io/tensor_file.h"
#include "core/tensor.h"
#include "dist/process_group.h"

namespace tessera::nn {
class FlatParameters;
}
namespace tessera::optim {
class Optimizer;
}

namespace tessera::jobs {

// The newest format this build writes and reads.
constexpr int kCheckpointFormatVersion = io::kFormatVersion;

// Everything in a checkpoint besides the tensors.
struct CheckpointMeta {
  int format_version = kCheckpointFormatVersion;
  std::string tessera_version;
  std::string created;  // UTC, ISO 8601
  int64_t step = 0;           // optimizer steps completed
  int64_t epoch = 0;          // epoch of the next step
  int64_t step_in_epoch = 0;  // the next step's index in its epoch: the sampler position
  int64_t steps_per_epoch = 0;
  int64_t global_batch = 0;
  int64_t samples_seen = 0;  // training examples consumed over all ranks
  uint64_t seed = 0;
  std::vector<int64_t> rank_next_example;  // per rank: the position its next batch starts at
  int world_size = 1;
  int data_parallel = 1, zero_stage = 0, tensor_parallel = 1, pipeline_parallel = 1;
  std::string optimizer;  // "adam", "adamw", "sgd", "rmsprop"
  int64_t optimizer_step = 0;
  std::string lr_schedule;  // e.g. "cosine(lr=0.001, warmup_steps=100, total_steps=1407, min_lr=0)"
  double lr = 0;            // the rate of the last step taken
  std::string job_spec;     // the resolved spec, protobuf text
  std::string dtype;        // of the model parameters, "float32" or "float64"; Save fills it in
};

// A tensor as a checkpoint records it (path, shape, dtype, bytes, CRC-32, offset in the file).
using CheckpointTensor = io::TensorRecord;

// Where the live state is: the logical tensors and the flat buffers that hold them.
struct CheckpointLayout {
  struct Buffer {
    Tensor data;       // 1-D
    int64_t base = 0;  // flat position of data[0] in the logical flat layout
  };
  struct Entry {
    std::string path;
    Shape shape;
    int buffer = 0;      // index into buffers
    int64_t offset = 0;  // flat position of element 0 in the logical flat layout
  };
  std::vector<Buffer> buffers;
  std::vector<Entry> entries;
  int64_t flat_size = 0;  // length of the logical flat layout (padding included)
};

// /model/<param> for every parameter of `params`; /optim/<param>/<state> for every state tensor of
// `optimizer` (may be null), whose slice starts at flat position `optimizer_base`.
CheckpointLayout MakeCheckpointLayout(nn::FlatParameters& params, const optim::Optimizer* optimizer,
                                      int64_t optimizer_base = 0);

struct CheckpointWriterOptions {
  std::string dir;  // RUN_DIR/checkpoints; created if missing
  int keep_last = 3;
  // The ranks that save together (a group used by nothing else: the writer's collectives run on
  // its own thread), or null for one process.
  dist::ProcessGroup* group = nullptr;
  // Each of the writer's collectives waits for a save's I/O on some rank, so its deadline is
  // timeout_s (the trainer passes parallel.collective_timeout_s) plus the checkpoint's bytes at
  // min_io_bytes_per_s (checkpoint.min_io_mb_per_s): a rank that dies during a save is an error on
  // the others within that time, and slow storage does not fail a large save.
  double timeout_s = 300;
  double min_io_bytes_per_s = 10e6;
};

// What one finished save did (rank 0 reports the commit; other ranks their part).
struct CheckpointSaveReport {
  int64_t step = 0;
  std::string path;         // the committed file (rank 0)
  int64_t bytes = 0;        // tensor bytes in the checkpoint (all ranks)
  int64_t rank_bytes = 0;   // bytes this rank wrote
  double write_seconds = 0; // from the start of the background work to the commit
};

class CheckpointWriter {
 public:
  explicit CheckpointWriter(CheckpointWriterOptions options);
  // Waits for a save in flight; its error, if any, is printed to stderr (call Wait() to get it).
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Every rank of the group calls this with the same step. Waits for the previous save (and
  // rethrows its failure), copies this rank's slice of every buffer to host memory, starts the
  // background write and returns. Returns the seconds this call blocked.
  double Save(const CheckpointLayout& layout, const CheckpointMeta& meta);
  // Blocks until the save in flight (if any) has finished; rethrows its failure.
  void Wait();
  // Rethrows the failure of a finished background save, if any; never blocks.
  void ThrowIfFailed();
  // Reports of the saves finished since the last call.
  std::vector<CheckpointSaveReport> TakeReports();
  bool busy() const;

 private:
  struct Job;
  void Run(std::shared_ptr<Job> job);
  void WriteJob(Job& job);

  CheckpointWriterOptions o_;
  std::vector<Tensor> host_;  // reused host copies of this rank's slices, one per buffer
  std::thread thread_;
  mutable std::mutex mu_;
  bool running_ = false;
  std::exception_ptr error_;
  std::vector<CheckpointSaveReport> reports_;
};

// Finds the checkpoint file named by `path`: the file itself, a step directory, a checkpoints
// directory (its `latest`) or a run directory (its checkpoints/latest). Throws IoError naming
// the path when there is none.
std::string ResolveCheckpoint(const std::string& path);
// The newest committed checkpoint under `checkpoints_dir` (`latest`, else the highest
// step-* directory), or "" when there is none.
std::string FindLatestCheckpoint(const std::string& checkpoints_dir);
// What is wrong with `checkpoints_dir` before a run starts, as messages:
//   `problems`: what would make the first save fail after training (a checkpoints directory
//   that cannot be created or written, or is a file; a `latest` that is a directory or file
//   instead of tessera's link). A missing directory is created.
//   `warnings`: what makes resuming fall back silently (a `latest` whose checkpoint is gone, a
//   step directory newer than the newest committed checkpoint but without its file).
struct CheckpointDirReport {
  std::vector<std::string> problems, warnings;
};
CheckpointDirReport InspectCheckpointDir(const std::string& checkpoints_dir);
// Every committed checkpoint file under `checkpoints_dir`, highest step first.
std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir);
// Cleans up after a crash in `checkpoints_dir`: removes partial saves (.step-N.partial), half-done
// deletions and symlink updates, and puts back a committed checkpoint that was moved aside
// (.step-N.replaced) for a new save of the same step that never took its place.
void RemovePartialCheckpoints(const std::string& checkpoints_dir);
// Renames the whole checkpoints directory to CHECKPOINTS_DIR.earlier-YYYYmmdd-HHMMSS (one
// rename: for a run that starts over in the same directory; nothing is deleted). Returns the new name.
std::string SetAsideCheckpoints(const std::string& checkpoints_dir);

// Metadata and tensor list (no tensor data), every attribute checked for type and range. Throws
// IoError for a missing, damaged or malformed file, CheckpointFormatError for a newer format or a
// file of another kind.
struct CheckpointInfo {
  std::string path;
  std::string kind;  // "checkpoint" or "model" (an export)
  CheckpointMeta meta;
  std::vector<CheckpointTensor> tensors;
};
CheckpointInfo ReadCheckpointInfo(const std::string& path);

// An intact file that cannot be used as asked: written by a newer tessera, not a tessera file of
// a known kind, or an exported model where a checkpoint is needed. Damage of any kind (empty,
// truncated, not HDF5, a bad manifest, a missing attribute, a CRC mismatch) is a plain IoError:
// the trainer falls back to an older checkpoint on that, and stops on this.
using CheckpointFormatError = io::FormatError;

// Loads every entry of `layout` from `path` into the buffers (the parts of each tensor that the
// buffers hold), checking each tensor's CRC as it is read, and first the manifest's CRC, its copy
// of the root attributes, and the step against the step-N directory and the training position.
// Throws ShapeError naming the tensor and both shapes when the model differs, IoError naming the
// file and tensor for a missing tensor, a CRC mismatch, an inconsistency or a read failure. A /model tensor in the file that the layout lacks is
// an error too (a different model). Returns the checkpoint's metadata. After an error the
// buffers may hold part of the checkpoint: do not train on them.
CheckpointInfo LoadCheckpoint(const std::string& path, const CheckpointLayout& layout);

// Checks the structure, the manifest and every tensor's CRC. Returns one line per problem
// ("checkpoint.h5: /model/0.weight: CRC-32 mismatch: stored 0x..., computed 0x..."); empty when
// the checkpoint is sound. Throws like ReadCheckpointInfo when the file cannot be opened at all.
std::vector<std::string> VerifyCheckpoint(const std::string& path);

// Writes the model tensors of a checkpoint (verified on the way) into one self-contained HDF5
// file with the same /model layout, CRCs and a manifest: what a model store publishes and a
// server loads. Written under a temporary name, fsynced and renamed.
void ExportModel(const std::string& checkpoint_path, const std::string& out_path);

// A human-readable summary: step, layout, tensors with shapes and dtypes.
std::string DescribeCheckpoint(const CheckpointInfo& info);
// The same as one JSON object (metadata and the tensor list).
std::string CheckpointInfoJson(const CheckpointInfo& info);

}  // namespace tessera::jobs
