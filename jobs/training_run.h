// Internal to jobs/: one run of a job spec. The constructor builds the job in named steps
// (trainer.cc); Run() loops over the steps, checkpointing and evaluating as the spec says
// (training_loop.cc), then writes the summary and publishes (training_end.cc).
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/model_spec.h"
#include "core/nn/loss.h"
#include "core/ops/ops.h"
#include "core/threads.h"
#include "datasets/sampler.h"
#include "dist/data_parallel.h"
#include "jobs/build.h"
#include "jobs/evaluate.h"
#include "jobs/preemption.h"
#include "jobs/publish.h"
#include "jobs/resume.h"
#include "jobs/run_lock.h"
#include "jobs/run_log.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "tessera/config.h"

namespace tessera::jobs::internal {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

inline double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// A field of /proc/self/status in bytes ("VmRSS:", "VmHWM:"); 0 where /proc does not say.
inline int64_t ProcessMemoryBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0) return std::strtoll(line.c_str() + n, nullptr, 10) * 1024;
  return 0;
}

// ZeRO stage 3: every parameter whole on every rank while this lives (a collective: every rank
// makes one at the same point); nothing at stages 0 to 2.
class WholeParameters {
 public:
  explicit WholeParameters(dist::DataParallel& dp) : dp_(dp) { dp_.GatherParameters(); }
  ~WholeParameters() { dp_.ReleaseParameters(); }
  WholeParameters(const WholeParameters&) = delete;
  WholeParameters& operator=(const WholeParameters&) = delete;

 private:
  dist::DataParallel& dp_;
};

class TrainingRun {
 public:
  TrainingRun(const JobSpec& spec, const TrainerOptions& opt);
  TrainSummary Run();

 private:
  // Set-up, in this order.
  void TakePlacement();
  void CheckLaunch();
  void OpenData();
  void BuildModelAndOptimizer();
  void RecordMemoryHeld();
  void StartFromCheckpointOrWeights();
  void JoinRanks();
  void Announce();
  // The loop.
  double TrainStep(const datasets::Batch& batch, double lr);
  void LogWindow(double lr, int epoch);
  void CheckpointAfterStep(double lr);
  void EvaluateAt(int64_t step, int epoch);
  bool PreemptionAgreed();
  void StopForPreemption(double lr);
  // The end.
  void FinishCheckpoints();
  void PublishIfAsked();
  void WriteSummary();
  void RecordPublishInSummary();

  dist::CollectiveOptions Collective(dist::ReduceOp op = dist::ReduceOp::kSum) const {
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s_;
    o.op = op;
    return o;
  }
  CheckpointMeta MetaAt(int64_t at, double lr) const;
  // Throws, naming the first parameter holding NaN or Inf, unless `values` are all finite.
  // Throws naming the first parameter that holds NaN or Inf, `where` they were found, and `hint`
  // (by default: what makes training diverge).
  void CheckWeightsFinite(const Tensor& values, const std::string& where, const char* hint = nullptr) const;
  void CheckWeightsFiniteOnEveryRank(const std::string& where);
  void Save(double lr);
  void ReportCheckpoints();

  const JobSpec& spec_;
  const TrainerOptions& opt_;
  const TrainSpec& t_;
  const Clock::time_point t_start_ = Clock::now();
  dist::ProcessGroup* group_;  // null for one process
  int rank_ = 0, world_ = 1;
  TrainerOptions::Placement placement_;
  bool lead_ = true;
  double timeout_s_;
  std::unique_ptr<RunDirLock> lock_;  // rank 0's
  ResumePlan plan_;
  std::unique_ptr<RunLog> log_;

  std::unique_ptr<datasets::Dataset> train_data_, test_data_;
  int classes_ = 0, out_classes_ = 0;
  int64_t tokens_per_example_ = 0;  // a language model's sequence length (0: a classifier)
  std::unique_ptr<nn::Sequential> net_;
  // The parameters, optimizer, reducer and step (ZeRO stages 0 to 2); params_ and optimizer_ are dp_'s.
  std::unique_ptr<dist::DataParallel> dp_;
  nn::FlatParameters* params_ = nullptr;
  optim::Optimizer* optimizer_ = nullptr;
  std::unique_ptr<datasets::DistributedSampler> sampler_;
  std::unique_ptr<optim::LrSchedule> schedule_;
  int64_t steps_per_epoch_ = 0, total_steps_ = 0, global_batch_ = 0, dataset_size_ = 0;
  CheckpointLayout layout_;

  int64_t step_ = 0, start_step_ = 0;
  std::string resume_path_;
  double resumed_lr_ = 0;
  bool already_complete_ = false;  // the run directory's checkpoint is at the last step
  std::unique_ptr<InitSource> init_;  // train.init_from, as resolved when the run first started
  // publish { }: the data files' sha256 for the lineage, computed on rank 0 while training runs.
  std::atomic<bool> stop_digests_{false};  // declared first: outlives the hashing that reads it
  std::future<std::vector<store::FileDigest>> dataset_digests_;

  std::unique_ptr<dist::ProcessGroup> ckpt_group_;  // the checkpoint writer's own collectives
  std::unique_ptr<CheckpointWriter> writer_;
  Clock::time_point last_save_ = Clock::now();
  int64_t last_saved_step_ = -1;

  nn::CrossEntropyLoss loss_fn_;
  datasets::LoaderOptions eval_norm_;
  double window_loss_ = 0, last_window_loss_ = 0;                    // sums of per-step global mean losses
  int64_t window_steps_ = 0, window_samples_ = 0, total_samples_ = 0;  // samples: this rank's
  double train_seconds_ = 0;  // excludes evaluation
  int64_t between_steps_rss_ = 0;  // the largest RSS at a log line
  double window_time_ = 0;    // training time of the current log window before an evaluation
  Clock::time_point t_window_ = Clock::now();
  EvalResult last_eval_;
  // publish.when: BEST: the weights and evaluation of the best evaluation so far (rank 0).
  Tensor best_values_;
  EvalResult best_eval_;
  int64_t best_step_ = -1;
  double best_metric_ = 0;

  TrainSummary summary_;
};

}  // namespace tessera::jobs::internal
