// Model-only weights files ("tessera.model"): what `tessera ckpt export` writes, what the model
// store publishes and what a server loads. The layout is core/io/tensor_file.h's with only /model
// tensors and these root attributes: format, format_version, tessera_version, created, step,
// job_spec, dtype (and `source_checkpoint`, which the manifest does not copy).
//
// Needs neither the trainer nor MPI: store/ and serve/ read and write weights through this alone.
// Reading treats the file as hostile (core/io/hdf5.h). Thread-safe: every HDF5 call holds the
// process-wide HDF5 lock.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/io/tensor_file.h"

namespace tessera::io {

struct WeightsMeta {
  int format_version = kFormatVersion;
  std::string tessera_version;  // filled in by the writer
  std::string created;          // UTC, ISO 8601; filled in by the writer
  int64_t step = 0;             // optimizer steps of the training that produced the weights
  std::string job_spec;         // the resolved job spec, protobuf text
  std::string dtype = "float32";
  std::string source;  // where the weights came from (a checkpoint path), informational
};

// One tensor to write: `name` as the model names it ("0.weight"), stored as /model/<name>.
struct WeightsView {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;
  const void* data = nullptr;  // row-major, NumElements(shape) * SizeOf(dtype) bytes
};

struct WeightsWriteResult {
  std::vector<TensorRecord> tensors;  // as written, with CRCs
  int64_t file_bytes = 0;
  std::string sha256;  // of the whole file, as sha256sum prints it
};
// Writes a weights file at `path`: under a temporary name beside it, fsynced, then renamed into
// place (an existing file is replaced atomically). HDF5 lays out the file (every dataset allocated
// contiguous); the tensors' bytes are then written straight to their offsets, while the file's
// SHA-256 is computed on a second thread from memory. The CRC-32 of every tensor is computed here.
// `sync_directory` false leaves the fsync of the directory (which makes the rename durable) to the
// caller, as for WriteFileAtomically.
WeightsWriteResult WriteWeightsFile(const std::string& path, const WeightsMeta& meta,
                                    const std::vector<WeightsView>& tensors, bool sync_directory = true);

// What a reader accepts beyond a model file of the current format.
struct WeightsReadOptions {
  bool allow_checkpoint = false;  // the /model tensors of a checkpoint too
  // Format 1 files too. They hold variable-length strings, which HDF5 cannot read safely when
  // damaged or crafted: for the user's own files only (resuming, fine-tuning, publishing them),
  // never for what a store or a server is handed.
  bool allow_legacy = false;
  // Check every tensor's CRC-32. A caller that checks the whole file's SHA-256 against a manifest
  // it trusts (the model store) needs no second checksum of the same bytes.
  bool check_crc = true;
};

struct WeightsInfo {
  std::string path;
  WeightsMeta meta;
  std::vector<TensorRecord> tensors;  // every /model tensor, from the manifest
};
// The metadata and tensor list of a weights file, checked (no tensor data read). IoError for a
// damaged file, FormatError for a newer format, or a checkpoint or legacy file that `options`
// does not allow.
WeightsInfo ReadWeightsInfo(const std::string& path, const WeightsReadOptions& options = {});

// Where tensor `t` goes: a buffer of t.bytes bytes, or null to skip it.
using TensorSink = std::function<void*(const TensorRecord& t)>;
// Reads the tensors `sink` asks for and checks each one's CRC-32. After an error, buffers may
// hold part of the data.
WeightsInfo ReadWeights(const std::string& path, const TensorSink& sink, const WeightsReadOptions& options = {});

// Every check ReadWeights makes, plus the manifest's own CRC and the root attributes against the
// manifest's copy, and datasets the manifest does not list: one line per problem (none: sound).
// Throws like ReadWeightsInfo when the file cannot be opened as a weights file at all.
std::vector<std::string> VerifyWeights(const std::string& path, const WeightsReadOptions& options = {});

// The root attributes a model file carries (and its manifest copies), from `meta`.
json WeightsMetaJson(const WeightsMeta& meta);

}  // namespace tessera::io
