// From the trainer into the model store, and back: what a published version records about the
// job that made it (architecture, lineage), and `train.init_from`, which starts a job from the
// weights of a store version or a checkpoint.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "jobs/job.pb.h"
#include "store/store.h"

namespace tessera::jobs {

// The architecture of the job's model for serving: its model spec, the input normalisation,
// one example's shape as the dataset holds it, the dataset's element type, and the classes.
store::Architecture ArchitectureOf(const JobSpec& spec, const Shape& example, int classes);
// The same when the training data is not at hand (publishing a checkpoint): the data files of the
// spec are opened if they exist, otherwise the shape is what the model spec implies.
store::Architecture ArchitectureOf(const JobSpec& spec);

struct InitSource;
// The job's data files with their sizes and sha256 (missing files are left out with a warning).
// `cancel`: stops the hashing (a preempted run does not wait for it).
std::vector<store::FileDigest> DatasetDigests(const JobSpec& spec, const std::atomic<bool>* cancel = nullptr);
// What a version records about how it was made: the job and its resolved spec, this build's
// source commit, the data files with their sha256 (`datasets`: computed here when null), the Slurm
// job (from SLURM_* variables), the parallel layout, step, run directory, checkpoint, host and
// user, and the parent the job started from (`init`, as resolved when the job started; null: none).
store::Lineage LineageOf(const JobSpec& spec, int64_t step, int world_size, const std::string& run_dir,
                         const std::string& checkpoint, const InitSource* init,
                         const std::vector<store::FileDigest>* datasets = nullptr);

// Where train.init_from points.
struct InitSource {
  std::string reference;     // as written
  std::string weights_path;  // the weights file or checkpoint to read the /model tensors from
  bool from_store = false;
  store::ParentVersion parent;  // when from_store
};
// Resolves a store reference (store://ROOT/MODEL@ALIAS, store://ROOT/MODEL/3) or a checkpoint
// path (a file, a step directory, a checkpoints or run directory). StoreError, NotFoundError or
// IoError naming the reference.
InitSource ResolveInitFrom(const std::string& reference);

// RUN_DIR/init_from.json: train.init_from as it was resolved when the run started, so that a
// resumed run (or `tessera store publish` of its checkpoint) names the parent it really started
// from, even after the alias has moved or the parent has been deleted. Read returns null when the
// run directory has no record.
void WriteInitRecord(const std::string& run_dir, const InitSource& source);
std::unique_ptr<InitSource> ReadInitRecord(const std::string& run_dir);

// Copies every tensor of `source` whose name and shape match a parameter of `params`; the other
// parameters keep their initial values (a new head for a different number of classes, say).
// Returns one line per parameter saying which happened, for the log. ConfigError when no tensor
// at all matches (a different model: nothing would be fine-tuned).
std::vector<std::string> InitFromWeights(const InitSource& source, nn::FlatParameters& params);

// Publishes the parameters of `params` as `values` holds them (the flat buffer itself, or a copy
// of it taken at the best evaluation) for the job `spec`, with `metrics` and `lineage`, as
// spec.publish says (store root, model name, alias). Rank 0 only.
store::PublishResult PublishWeights(const JobSpec& spec, nn::FlatParameters& params, const Tensor& values,
                                    const store::Architecture& arch, const std::map<std::string, double>& metrics,
                                    const store::Lineage& lineage);

}  // namespace tessera::jobs
