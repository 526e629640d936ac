// Internal to jobs/checkpoint/: the pieces of the checkpoint format that the writer, the reader
// and the directory policy share. The format itself is documented in docs/checkpoint-format.md
// and jobs/checkpoint.h.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>

#include "core/io/tensor_file.h"
#include "jobs/checkpoint.h"

namespace tessera::jobs::checkpoint_internal {

using json = nlohmann::json;

constexpr const char* kFileName = "checkpoint.h5";

// "step-00000400"; and back (-1 for a name that is not a committed checkpoint's directory).
std::string StepName(int64_t step);
int64_t ParseStepName(const std::string& name);

// The flat range rank r of w owns: [r * n / w, (r + 1) * n / w).
void OwnedRange(int64_t n, int r, int w, int64_t* lo, int64_t* hi);

// The root attributes that carry meaning, as JSON: written as the attributes, stored again in the
// manifest (so that the manifest's CRC covers them), printed by `tessera ckpt inspect --json`.
// `kind`: "checkpoint" or "model".
json MetaJson(const CheckpointMeta& m, const std::string& kind);

// The metadata and tensor list of an open checkpoint or model file (the HDF5 lock held), every
// attribute checked for type and range. `manifest`, when given, receives the manifest as read.
CheckpointInfo ReadInfoLocked(hid_t file, const std::string& path, io::Manifest* manifest = nullptr);

// /rng/rank_state: per rank (seed, next example position), with its CRC checked. The lock held.
std::vector<uint64_t> ReadRankState(hid_t file, const CheckpointInfo& info);

// What a loader checks beyond the structure: the manifest's CRC and its copy of the root
// attributes, the step against the step-N directory holding the file, and the training position
// (epoch, step in epoch, optimizer step, learning rate) against the step. Returns the problems.
std::vector<std::string> CheckConsistency(const CheckpointInfo& info, const io::Manifest& manifest);

}  // namespace tessera::jobs::checkpoint_internal
