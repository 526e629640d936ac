// The trainer: runs a validated job spec on this process and writes its run directory.
//
// RUN_DIR/job.pbtxt      the resolved spec (every default written out)
// RUN_DIR/metrics.jsonl  one JSON object per event: {"event": "train", ...} every
//                        train.log_every_steps, {"event": "eval", ...} after each evaluation
// RUN_DIR/summary.json   at the end: final_train_loss, test_accuracy, test_precision, test_recall,
//                        test_f1, confusion_matrix, samples_per_sec, steps, wall_seconds, ...
//
// RUN_DIR/rank-R.log     under data parallelism: each rank's own throughput lines
// RUN_DIR/checkpoints/   HDF5 checkpoints (jobs/checkpoint.h), by checkpoint.every_steps,
//                        checkpoint.every_minutes and at the end; a run directory that holds one
//                        is resumed from it (metrics.jsonl is then appended to)
//
// publish { store: ... }: at the end, rank 0 publishes the final (or best) weights to the model
// store (store/store.h) and every rank learns the outcome. train.init_from starts from the
// weights of a store version or a checkpoint (jobs/publish.h).
//
// Progress goes to stdout: a live line on a terminal, plain lines otherwise (files, CI).
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "jobs/job.pb.h"

namespace tessera::jobs {

struct TrainSummary {
  std::string name;
  int64_t steps = 0;
  int epochs_completed = 0;
  double final_train_loss = 0;
  double test_loss = 0;
  double test_accuracy = 0, test_precision = 0, test_recall = 0, test_f1 = 0;
  std::vector<std::vector<int64_t>> confusion_matrix;
  double samples_per_sec = 0;  // training samples per second, evaluation excluded
  // A language model (model.gpt): test_accuracy is the next token's; no precision, recall, F1 or
  // confusion matrix.
  bool language_model = false;
  double test_perplexity = 0, tokens_per_sec = 0;
  double wall_seconds = 0;
  double train_seconds = 0;
  int64_t resumed_from_step = -1;  // -1: started from scratch
  std::string checkpoint;          // the last committed checkpoint ("" if none was written)
  // publish { store ... }: the version published at the end (0: none).
  int64_t published_version = 0;
  std::string published_model, published_dir;
  // TrainerOptions::preemptible: the signal the run stopped on (0: it ran to the end). The
  // checkpoint of the step it stopped after is committed; summary.json is not written.
  int preempted_by = 0;
  // What each rank holds, in bytes (parallel.zero_stage shards optimizer state, gradients and
  // parameters): the parameters (at stage 3 its shard), the gradients it keeps between steps
  // (from stage 2 its shard; buckets in flight during backward come on top), the optimizer
  // state; and every rank's peak RSS.
  int zero_stage = 0;
  int64_t parameter_bytes = 0, gradient_bytes = 0, optimizer_state_bytes = 0;
  int64_t gathered_unit_bytes = 0;  // stage 3: the largest layer gathered whole (at most two at a time)
  std::vector<int64_t> peak_rss_bytes;  // by rank
  // By rank: the largest RSS seen at a log line, after a step (what a rank holds between steps,
  // without backward's buckets in flight).
  std::vector<int64_t> between_steps_rss_bytes;
};

struct TrainerOptions {
  std::string run_dir;   // created if missing
  bool progress = true;  // print progress to stdout (rank 0 only)
  // The data-parallel group; null or a group of one for a single process. With N ranks, each
  // takes an equal slice of every global batch, gradients are all-reduced in buckets during
  // backward, rank 0 writes the run directory and every rank writes RUN_DIR/rank-R.log.
  dist::ProcessGroup* group = nullptr;
  // Where the launcher put this process (launch/world.h: mpirun's or srun's variables), as
  // `tessera train` passes it. The rank and world must be the group's (ConfigError naming both
  // otherwise: a launcher and a communicator that disagree); the local rank is logged in
  // RUN_DIR/rank-R.log and is what picks a GPU. world 0: not given, the group's rank and size.
  struct Placement {
    int rank = 0, world = 0, local_rank = 0, local_size = 1;
    std::string launcher = "single";
  };
  Placement placement;
  // kAuto: continue from the newest checkpoint in the checkpoint directory when there is one.
  // kRequire: the same, but fail when there is none (`tessera train --resume`).
  // kNever: start from scratch whatever the directory holds.
  enum class Resume { kAuto, kRequire, kNever };
  Resume resume = Resume::kAuto;
  std::string resume_from;  // a specific checkpoint (file or directory) to continue from
  // Stop at the next step boundary, with a committed checkpoint, once a signal watched by
  // WatchPreemptSignals (jobs/preemption.h) has reached any rank.
  bool preemptible = false;
};

// runs/NAME-YYYYmmdd-HHMMSS (local time `when`): where a run goes when no directory is named.
std::string DefaultRunDir(const std::string& name, std::time_t when);

// Runs `spec` (already validated by LoadJobSpec) to completion.
TrainSummary Train(const JobSpec& spec, const TrainerOptions& options);

}  // namespace tessera::jobs
