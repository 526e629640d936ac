// Train(): one run of a job spec, as a TrainingRun whose constructor builds the job in named
// steps (launch checks, data, model and optimizer, where to start from, joining the ranks) and
// whose Run() loops over steps, then checkpoints, publishes and summarises.
#include "jobs/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
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
#include "dist/reducer.h"
#include "jobs/build.h"
#include "jobs/evaluate.h"
#include "jobs/publish.h"
#include "jobs/resume.h"
#include "jobs/run_log.h"
#include "jobs/spec.h"
#include "tessera/config.h"

namespace tessera::jobs {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string FormatDuration(double s) {
  if (s < 0 || !std::isfinite(s)) return "?";
  char buf[32];
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ds", t);
  return buf;
}

class TrainingRun {
 public:
  TrainingRun(const JobSpec& spec, const TrainerOptions& opt);
  TrainSummary Run();

 private:
  // Set-up, in this order.
  void CheckLaunch();
  void OpenData();
  void BuildModelAndOptimizer();
  void StartFromCheckpointOrWeights();
  void JoinRanks();
  void Announce();
  // The loop.
  double TrainStep(const datasets::Batch& batch, double lr);
  void LogWindow(double lr, int epoch);
  void CheckpointAfterStep(double lr);
  void EvaluateAt(int64_t step, int epoch);
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
  void Save(double lr);
  void ReportCheckpoints();

  const JobSpec& spec_;
  const TrainerOptions& opt_;
  const TrainSpec& t_;
  const Clock::time_point t_start_ = Clock::now();
  dist::ProcessGroup* group_;  // null for one process
  int rank_ = 0, world_ = 1;
  bool lead_ = true;
  double timeout_s_;
  ResumePlan plan_;
  std::unique_ptr<RunLog> log_;

  std::unique_ptr<datasets::Dataset> train_data_, test_data_;
  int classes_ = 0, out_classes_ = 0;
  std::unique_ptr<nn::Sequential> net_;
  std::unique_ptr<nn::FlatParameters> params_;
  std::unique_ptr<optim::Optimizer> optimizer_;
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
  std::future<std::vector<store::FileDigest>> dataset_digests_;

  std::unique_ptr<dist::Reducer> reducer_;
  std::unique_ptr<dist::ProcessGroup> ckpt_group_;  // the checkpoint writer's own collectives
  std::unique_ptr<CheckpointWriter> writer_;
  Clock::time_point last_save_ = Clock::now();
  int64_t last_saved_step_ = -1;

  nn::CrossEntropyLoss loss_fn_;
  datasets::LoaderOptions eval_norm_;
  double window_loss_ = 0, last_window_loss_ = 0;                    // sums of per-step global mean losses
  int64_t window_steps_ = 0, window_samples_ = 0, total_samples_ = 0;  // samples: this rank's
  double train_seconds_ = 0;  // excludes evaluation
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

// ---- set-up -----------------------------------------------------------------------------------

TrainingRun::TrainingRun(const JobSpec& spec, const TrainerOptions& opt)
    : spec_(spec), opt_(opt), t_(spec.train()), timeout_s_(spec.parallel().collective_timeout_s()) {
  group_ = opt.group && opt.group->size() > 1 ? opt.group : nullptr;
  rank_ = group_ ? group_->rank() : 0;
  world_ = group_ ? group_->size() : 1;
  lead_ = rank_ == 0;
  CheckLaunch();
  std::error_code ec;
  fs::create_directories(opt.run_dir, ec);
  if (ec) TESSERA_THROW(IoError, opt.run_dir, ": cannot create the run directory: ", ec.message());
  const CheckpointSpec& cs = spec.checkpoint();
  plan_ = PlanResume(cs.dir().empty() ? opt.run_dir + "/checkpoints" : cs.dir(), opt, group_, timeout_s_);
  log_ = std::make_unique<RunLog>(opt.run_dir, spec, rank_, world_, opt.progress, !plan_.candidates.empty());
  SetNumThreads(t_.threads());
  if (lead_ && !spec.publish().store().empty())
    dataset_digests_ = std::async(std::launch::async, [&spec] { return DatasetDigests(spec); });
  OpenData();
  BuildModelAndOptimizer();
  StartFromCheckpointOrWeights();
  JoinRanks();
  Announce();
}

// The layout asked for must match what was launched.
void TrainingRun::CheckLaunch() {
  const int want = spec_.parallel().data();
  if (want != 0 && want != world_)
    TESSERA_THROW(ConfigError, "parallel.data is ", want, " but ", world_, " rank", world_ == 1 ? " was" : "s were",
                  " launched; launch ", want, " ranks or set parallel.data to ", world_, " (0 means: every launched rank)");
  if (spec_.data().batch_size() % world_ != 0)
    TESSERA_THROW(ConfigError, "data.batch_size ", spec_.data().batch_size(), " does not divide evenly over the ",
                  world_, " data-parallel ranks");
}

void TrainingRun::OpenData() {
  train_data_ = OpenSplit(spec_.data(), true);
  test_data_ = OpenSplit(spec_.data(), false);
  if (test_data_->example_shape() != train_data_->example_shape())
    TESSERA_THROW(DataError, "test examples have shape ", ShapeString(test_data_->example_shape()),
                  " but training examples ", ShapeString(train_data_->example_shape()));
  classes_ = std::max(train_data_->num_classes(), test_data_->num_classes());
  dataset_size_ = train_data_->size();
  eval_norm_ = LoaderOptionsFor(spec_, false);
  log_->Say("data: train %s\n      test  %s\n", train_data_->Describe().c_str(), test_data_->Describe().c_str());
}

void TrainingRun::BuildModelAndOptimizer() {
  net_ = models::BuildModel(spec_.model(), train_data_->example_shape(), classes_);
  net_->set_needs_input_grad(false);
  params_ = std::make_unique<nn::FlatParameters>(*net_, Device::CPU(), DType::kF32, t_.seed());
  out_classes_ = static_cast<int>(models::OutFeatures(spec_.model()));
  optimizer_ = BuildOptimizer(spec_.optimizer(), *params_);
  sampler_ = std::make_unique<datasets::DistributedSampler>(dataset_size_, spec_.data().batch_size(), t_.seed(),
                                                            spec_.data().shuffle(), spec_.data().drop_last(), rank_,
                                                            world_);
  steps_per_epoch_ = sampler_->steps_per_epoch();
  total_steps_ = t_.steps() > 0 ? t_.steps() : steps_per_epoch_ * t_.epochs();
  global_batch_ = spec_.data().batch_size();
  schedule_ = BuildSchedule(spec_.optimizer(), total_steps_);
  layout_ = MakeCheckpointLayout(*params_, optimizer_.get());
}

// A checkpoint to continue from wins; otherwise train.init_from's weights, if any. A resumed run
// takes its parent from the record its first start left (the reference may resolve differently
// by now, or not at all).
void TrainingRun::StartFromCheckpointOrWeights() {
  if (!plan_.candidates.empty()) init_ = ReadInitRecord(opt_.run_dir);
  else if (!t_.init_from().empty()) init_ = std::make_unique<InitSource>(ResolveInitFrom(t_.init_from()));
  if (plan_.candidates.empty()) {
    if (init_) {
      std::vector<std::string> lines = InitFromWeights(*init_, *params_);
      if (lead_) WriteInitRecord(opt_.run_dir, *init_);
      log_->Say("init_from: %s (%s)\n", init_->reference.c_str(), init_->weights_path.c_str());
      for (const std::string& l : lines) log_->Say("  %s\n", l.c_str());
      log_->Emit({{"event", "init_from"}, {"reference", init_->reference}, {"weights", init_->weights_path},
                  {"tensors", lines}});
    }
    return;
  }
  if (plan_.own_checkpoints && !opt_.resume_from.empty())
    log_->Say("resume: %s already holds checkpoints of this run; continuing from its newest, not from --resume-from "
              "%s\n", plan_.ckpt_dir.c_str(), opt_.resume_from.c_str());
  Resumed r = LoadFirstUsable(plan_, layout_, rank_);
  const CheckpointMeta& m = r.info.meta;
  optimizer_->set_step_count(m.optimizer_step);
  resume_path_ = r.path;
  resumed_lr_ = m.lr;
  step_ = m.step;
  summary_.resumed_from_step = step_;
  summary_.checkpoint = resume_path_;
  log_->Say("resume: %s (step %lld, epoch %lld, written by %d rank%s)\n", resume_path_.c_str(),
            static_cast<long long>(step_), static_cast<long long>(m.epoch), m.world_size, m.world_size == 1 ? "" : "s");
  if (m.optimizer != optimizer_->name())
    log_->Say("warning: the checkpoint's optimizer is %s but this job uses %s: state it does not use is dropped\n",
              m.optimizer.c_str(), optimizer_->name().c_str());
  if (m.global_batch != global_batch_ || m.seed != t_.seed() || m.steps_per_epoch != steps_per_epoch_)
    log_->Say("warning: the checkpoint was written with data.batch_size %lld, train.seed %llu and %lld steps per "
              "epoch; this job has %lld, %llu and %lld: the data order from here on differs from the original run's\n",
              static_cast<long long>(m.global_batch), static_cast<unsigned long long>(m.seed),
              static_cast<long long>(m.steps_per_epoch), static_cast<long long>(global_batch_),
              static_cast<unsigned long long>(t_.seed()), static_cast<long long>(steps_per_epoch_));
}

// Every rank must start from the same state; then the reducer and the checkpoint writer.
void TrainingRun::JoinRanks() {
  start_step_ = step_;
  if (group_) {
    AgreeOnStep(step_, *group_, timeout_s_, plan_.ckpt_dir);
    dist::BroadcastParameters(*params_, *group_, 0, timeout_s_);
    reducer_ = std::make_unique<dist::Reducer>(*params_, *group_, spec_.parallel().bucket_size_mb(), timeout_s_);
    ckpt_group_ = group_->Split(0, rank_);
  }
  const CheckpointSpec& cs = spec_.checkpoint();
  if (cs.every_steps() > 0 || cs.every_minutes() > 0 || cs.save_final()) {
    CheckpointWriterOptions wo;
    wo.dir = plan_.ckpt_dir;
    wo.keep_last = cs.keep_last();
    wo.group = ckpt_group_.get();
    // The same deadline as training's collectives: a rank that dies during a save is an error
    // on the others within it (they may be waiting for the save, not in a training collective).
    wo.timeout_s = timeout_s_;
    writer_ = std::make_unique<CheckpointWriter>(wo);
  }
  already_complete_ = !resume_path_.empty() && step_ >= total_steps_;
}

void TrainingRun::Announce() {
  if (step_ > 0 && std::abs(schedule_->At(step_ - 1) - resumed_lr_) > 1e-12 * std::max(1.0, std::abs(resumed_lr_)))
    log_->Say("warning: the checkpoint's last learning rate was %.6g but this job's schedule gives %.6g at that step "
              "(a changed optimizer.lr, schedule or train.steps): the run continues on this job's schedule\n",
              resumed_lr_, schedule_->At(step_ - 1));
  if (!plan_.set_aside.empty())
    log_->Say("--no-resume: the checkpoints already in %s were moved to %s\n", plan_.ckpt_dir.c_str(),
              plan_.set_aside.c_str());
  log_->Say("model: %lld parameters\n%s\n", static_cast<long long>(params_->num_parameters()), net_->Summary().c_str());
  log_->Say("train: %lld steps (%lld per epoch), global batch %lld over %d rank%s, %d thread%s per rank, seed %llu\n",
            static_cast<long long>(total_steps_), static_cast<long long>(steps_per_epoch_),
            static_cast<long long>(global_batch_), world_, world_ == 1 ? "" : "s", t_.threads(),
            t_.threads() == 1 ? "" : "s", static_cast<unsigned long long>(t_.seed()));
  if (reducer_)
    log_->Say("data parallel: %zu gradient buckets of up to %.3g MB, collective timeout %.0f s\n",
              reducer_->buckets().size(), spec_.parallel().bucket_size_mb(), timeout_s_);
  if (!spec_.publish().store().empty())
    log_->Say("publish: at the end, the %s weights to %s as model '%s'%s%s\n",
              spec_.publish().when() == PublishSpec::BEST ? ("best (" + spec_.publish().metric() + ")").c_str() : "final",
              spec_.publish().store().c_str(),
              (spec_.publish().model().empty() ? spec_.name() : spec_.publish().model()).c_str(),
              spec_.publish().alias().empty() ? "" : ", alias ", spec_.publish().alias().c_str());
  if (already_complete_)
    log_->Say("the run is complete: its checkpoint is at step %lld of %lld; nothing to train, evaluating it\n",
              static_cast<long long>(step_), static_cast<long long>(total_steps_));
  else if (!resume_path_.empty())
    log_->Emit({{"event", "resume"}, {"step", step_}, {"checkpoint", resume_path_}, {"world_size", world_}});
}

// ---- the loop ---------------------------------------------------------------------------------

// Accumulate over micro-steps, reduce, check, clip, step. Returns the step's global mean loss.
double TrainingRun::TrainStep(const datasets::Batch& batch, double lr) {
  const int64_t n = batch.features.dim(0);
  const int accumulate = t_.accumulate_steps();
  // The examples of this step over all ranks: each rank scales its loss by its share, so that the
  // sum of the ranks' gradients is the gradient of the global mean loss.
  const int64_t in_epoch = (step_ % steps_per_epoch_) * global_batch_;
  const int64_t n_global = std::min<int64_t>(global_batch_, dataset_size_ - in_epoch);
  params_->ZeroGrad();
  double step_loss = 0;
  for (int k = 0; k < accumulate; ++k) {
    int64_t lo = n * k / accumulate, hi = n * (k + 1) / accumulate;
    if (reducer_) reducer_->set_enabled(k == accumulate - 1);
    if (lo == hi) continue;
    Tensor x = batch.features.Slice0(lo, hi), y = batch.labels.Slice0(lo, hi);
    const double w = static_cast<double>(hi - lo) / static_cast<double>(n_global);
    // Dropout masks follow the examples, so they do not depend on the number of ranks.
    net_->SetBatchPosition(
        static_cast<uint64_t>(step_ * global_batch_ + sampler_->LocalOffset(step_ % steps_per_epoch_) + lo));
    step_loss += w * loss_fn_.Forward(net_->Forward(x), y).Item();
    net_->Backward(loss_fn_.Backward(w));
  }
  if (reducer_) reducer_->Finish();
  // After the all-reduce every rank holds the same gradients: checking them (rather than this
  // rank's share of the loss) makes every rank stop at the same step with the same message.
  if (!std::isfinite(step_loss) || (reducer_ && !std::isfinite(ops::SumSquares(params_->grads()))))
    TESSERA_THROW(Error, "the training loss or its gradients became non-finite at step ", step_ + 1,
                  "; lower optimizer.lr or set optimizer.clip_grad_norm");
  const double clip = spec_.optimizer().clip_grad_norm();
  if (clip > 0) optim::ClipGradNorm(params_->grads(), clip);  // gradients are global after the reduce
  optimizer_->Step(lr);
  ++step_;
  window_loss_ += step_loss;
  ++window_steps_;
  window_samples_ += n;
  total_samples_ += n;
  return step_loss;
}

// Every log_every_steps: the job's loss and throughput (summed over ranks), the event and the
// progress line; a time-based checkpoint when one is due.
void TrainingRun::LogWindow(double lr, int epoch) {
  auto now = Clock::now();
  double dt = window_time_ + Seconds(t_window_, now);
  window_time_ = 0;
  train_seconds_ += dt;
  double rank_sps = dt > 0 ? window_samples_ / dt : 0;
  double loss = window_loss_, job_sps = rank_sps;
  // A time-based checkpoint is due by rank 0's clock (so that every rank agrees).
  const double every_minutes = spec_.checkpoint().every_minutes();
  double due = writer_ && every_minutes > 0 && lead_ && Seconds(last_save_, now) >= every_minutes * 60;
  if (group_) {
    Tensor v = Tensor::FromVector({window_loss_, rank_sps, due}, {3}, DType::kF64);
    group_->AllReduce(v, Collective())->Wait();
    loss = v.data<double>()[0];
    job_sps = v.data<double>()[1];
    due = v.data<double>()[2];
    log_->RankEvent({{"event", "train"}, {"step", step_}, {"rank", rank_}, {"samples_per_sec", rank_sps}});
  }
  loss /= static_cast<double>(window_steps_);
  double eta = train_seconds_ / static_cast<double>(step_ - start_step_) * static_cast<double>(total_steps_ - step_);
  json ev = {{"event", "train"}, {"step", step_}, {"epoch", epoch + 1}, {"loss", loss}, {"lr", lr},
             {"samples_per_sec", job_sps}, {"eta_seconds", eta}, {"elapsed_seconds", Seconds(t_start_, now)}};
  if (group_) ev["rank0_samples_per_sec"] = rank_sps;
  log_->Emit(ev);
  char line[256];
  std::snprintf(line, sizeof line, "step %lld/%lld  epoch %d  loss %.4f  lr %.3g  %.0f samples/s  ETA %s",
                static_cast<long long>(step_), static_cast<long long>(total_steps_), epoch + 1, loss, lr, job_sps,
                FormatDuration(eta).c_str());
  log_->StepLine(line);
  last_window_loss_ = loss;
  window_loss_ = 0;
  window_steps_ = 0;
  window_samples_ = 0;
  t_window_ = Clock::now();
  if (due > 0 && step_ < total_steps_) Save(lr);
}

void TrainingRun::CheckpointAfterStep(double lr) {
  if (!writer_) return;
  const CheckpointSpec& cs = spec_.checkpoint();
  if (cs.every_steps() > 0 && step_ % cs.every_steps() == 0) Save(lr);
  if (step_ == total_steps_ && cs.save_final()) Save(lr);
  ReportCheckpoints();
}

void TrainingRun::EvaluateAt(int64_t step, int epoch) {
  auto t0 = Clock::now();
  last_eval_ = Evaluate(*net_, *test_data_, eval_norm_, spec_.data().eval_batch_size(), out_classes_, group_, timeout_s_);
  json j = EvalJson(last_eval_);
  j["event"] = "eval";
  j["step"] = step;
  j["epoch"] = epoch;
  j["eval_seconds"] = Seconds(t0, Clock::now());
  log_->Emit(j);
  log_->Say("eval  step %lld  epoch %d  test loss %.4f  accuracy %.4f  macro F1 %.4f\n", static_cast<long long>(step),
            epoch, last_eval_.loss, last_eval_.cm.Accuracy(), last_eval_.cm.MacroF1());
  if (lead_ && !spec_.publish().store().empty() && spec_.publish().when() == PublishSpec::BEST) {
    bool larger_better = true;
    double v = MetricValue(last_eval_, spec_.publish().metric(), &larger_better);
    if (best_step_ < 0 || (larger_better ? v > best_metric_ : v < best_metric_)) {
      best_metric_ = v;
      best_step_ = step;
      best_eval_ = last_eval_;
      if (!best_values_.defined()) best_values_ = Tensor::Empty({params_->numel()}, params_->values().dtype());
      best_values_.CopyFrom(params_->values());
    }
  }
  t_window_ = Clock::now();  // evaluation time does not count towards throughput
}

// ---- checkpoints ------------------------------------------------------------------------------

// The checkpoint of the state after `at` steps (lr: the rate of the last step).
CheckpointMeta TrainingRun::MetaAt(int64_t at, double lr) const {
  CheckpointMeta m;
  m.tessera_version = TESSERA_VERSION;
  m.step = at;
  m.epoch = at / steps_per_epoch_;
  m.step_in_epoch = at % steps_per_epoch_;
  m.steps_per_epoch = steps_per_epoch_;
  m.global_batch = global_batch_;
  const int64_t per_epoch = spec_.data().drop_last() ? steps_per_epoch_ * global_batch_ : dataset_size_;
  m.samples_seen = m.epoch * per_epoch + std::min(m.step_in_epoch * global_batch_, per_epoch);
  m.seed = t_.seed();
  const int64_t len = std::min<int64_t>(global_batch_, dataset_size_ - m.step_in_epoch * global_batch_);
  for (int r = 0; r < world_; ++r) m.rank_next_example.push_back(at * global_batch_ + len * r / world_);
  m.world_size = world_;
  m.data_parallel = world_;
  m.zero_stage = spec_.parallel().zero_stage();
  m.tensor_parallel = std::max(1, spec_.parallel().tensor());
  m.pipeline_parallel = std::max(1, spec_.parallel().pipeline());
  m.optimizer = optimizer_->name();
  m.optimizer_step = optimizer_->step_count();
  m.lr_schedule = ScheduleDescription(spec_.optimizer(), total_steps_);
  m.lr = lr;
  m.job_spec = ToText(spec_);
  m.dtype = "float32";
  return m;
}

void TrainingRun::Save(double lr) {
  if (step_ == last_saved_step_) return;
  last_saved_step_ = step_;
  double stall = writer_->Save(layout_, MetaAt(step_, lr));
  last_save_ = Clock::now();
  log_->Emit({{"event", "checkpoint_started"}, {"step", step_}, {"stall_seconds", stall}});
}

void TrainingRun::ReportCheckpoints() {
  if (!writer_) return;
  writer_->ThrowIfFailed();
  for (const CheckpointSaveReport& r : writer_->TakeReports()) {
    if (!lead_) continue;
    summary_.checkpoint = r.path;
    double mbs = r.write_seconds > 0 ? r.bytes / r.write_seconds / 1e6 : 0;
    log_->Emit({{"event", "checkpoint"}, {"step", r.step}, {"path", r.path}, {"bytes", r.bytes},
                {"write_seconds", r.write_seconds}, {"mb_per_sec", mbs}});
    log_->Say("checkpoint: step %lld -> %s (%.1f MB in %.2f s, in the background)\n", static_cast<long long>(r.step),
              r.path.c_str(), r.bytes / 1e6, r.write_seconds);
  }
}

// ---- the run ----------------------------------------------------------------------------------

TrainSummary TrainingRun::Run() {
  datasets::Loader loader(*train_data_, *sampler_, LoaderOptionsFor(spec_, true));
  summary_.name = spec_.name();
  t_window_ = Clock::now();
  last_save_ = Clock::now();  // every_minutes counts from the first step, not from the set-up
  int epoch = 0;
  datasets::Batch batch;
  while (step_ < total_steps_) {
    epoch = static_cast<int>(step_ / steps_per_epoch_);
    loader.StartEpoch(epoch, step_ % steps_per_epoch_);
    while (step_ < total_steps_ && loader.Next(&batch)) {
      const double lr = schedule_->At(step_);
      TrainStep(batch, lr);
      if (step_ % t_.log_every_steps() == 0 || step_ == total_steps_) LogWindow(lr, epoch);
      CheckpointAfterStep(lr);
      const bool end_of_epoch = step_ % steps_per_epoch_ == 0;
      const bool eval_now = t_.eval_every_steps() > 0 ? step_ % t_.eval_every_steps() == 0 : end_of_epoch;
      if (eval_now && step_ < total_steps_) {
        if (window_samples_ > 0) window_time_ += Seconds(t_window_, Clock::now());
        log_->EndLine();
        EvaluateAt(step_, epoch + 1);
      }
    }
  }
  log_->EndLine();
  if (window_samples_ > 0) train_seconds_ += window_time_ + Seconds(t_window_, Clock::now());
  FinishCheckpoints();
  log_->set_quiet(already_complete_);
  EvaluateAt(step_, static_cast<int>(std::max<int64_t>(step_ - 1, 0) / steps_per_epoch_) + 1);
  if (writer_) {
    writer_->Wait();
    ReportCheckpoints();
  }
  // The summary first: a publish that fails leaves the run's own record complete (and a run
  // directory evaluated again publishes then).
  WriteSummary();
  PublishIfAsked();
  RecordPublishInSummary();
  return summary_;
}

// Resumed from elsewhere with nothing left to do: keep the state in this run directory too.
void TrainingRun::FinishCheckpoints() {
  if (writer_ && spec_.checkpoint().save_final() && step_ == start_step_ && start_step_ > 0 &&
      FindLatestCheckpoint(plan_.ckpt_dir).empty())
    Save(schedule_->At(step_ - 1));
}

// Rank 0 publishes (or finds the run published already) and every rank learns the version, or
// that it failed, from rank 0: one broadcast on every rank, whatever rank 0 found.
void TrainingRun::PublishIfAsked() {
  const PublishSpec& p = spec_.publish();
  if (p.store().empty()) return;
  summary_.published_model = p.model().empty() ? spec_.name() : p.model();
  std::string error;
  store::PublishResult result;
  bool again = false;  // a finished run evaluated again, already published: nothing new
  if (lead_) {
    try {
      if (already_complete_) {
        std::ifstream in(opt_.run_dir + "/summary.json");
        json s = json::parse(in, nullptr, false);
        if (!s.is_discarded() && s.value("published_version", int64_t{0}) > 0) {
          result.version = s["published_version"].get<int64_t>();
          result.dir = s.value("published_dir", "");
          again = true;
        }
      }
      if (!again) {
        const bool best = p.when() == PublishSpec::BEST && best_step_ >= 0;
        const EvalResult& eval = best ? best_eval_ : last_eval_;
        const int64_t at = best ? best_step_ : step_;
        std::map<std::string, double> metrics;
        const json evaluation = EvalJson(eval);
        for (auto& [name, value] : evaluation.items()) metrics[name] = value.get<double>();
        const std::vector<store::FileDigest> datasets =
            dataset_digests_.valid() ? dataset_digests_.get() : DatasetDigests(spec_);
        store::Lineage lineage =
            LineageOf(spec_, at, world_, opt_.run_dir, best ? "" : summary_.checkpoint, init_.get(), &datasets);
        result = PublishWeights(spec_, *params_, best ? best_values_ : params_->values(),
                                ArchitectureOf(spec_, train_data_->example_shape(), classes_), metrics, lineage);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int64_t version = error.empty() ? result.version : -1;
  if (group_) {
    Tensor v = Tensor::FromVector({static_cast<double>(version)}, {1}, DType::kF64);
    group_->Broadcast(v, 0, Collective())->Wait();
    version = static_cast<int64_t>(v.data<double>()[0]);
  }
  if (version <= 0) {
    if (!error.empty()) TESSERA_THROW(IoError, "publish to ", p.store(), ": ", error);
    TESSERA_THROW(IoError, "publish to ", p.store(), ": rank 0 could not publish (rank 0 reports why)");
  }
  summary_.published_version = version;
  summary_.published_dir = result.dir;
  if (again) {
    log_->Say("publish: already published as version %lld\n", static_cast<long long>(version));
    return;
  }
  log_->set_quiet(false);  // a finished run published only now records it
  log_->Emit({{"event", "publish"}, {"store", p.store()}, {"model", summary_.published_model}, {"version", version},
              {"alias", p.alias()}, {"dir", result.dir}, {"bytes", result.bytes}});
  log_->Say("publish: %s version %lld in %s%s%s\n", summary_.published_model.c_str(), static_cast<long long>(version),
            p.store().c_str(), p.alias().empty() ? "" : ", alias ", p.alias().c_str());
}

// summary.json gains the published version (rank 0).
void TrainingRun::RecordPublishInSummary() {
  if (!lead_ || summary_.published_version <= 0) return;
  const std::string path = opt_.run_dir + "/summary.json";
  std::ifstream in(path);
  json s = json::parse(in, nullptr, false);
  if (s.is_discarded() || !s.is_object()) s = json::object();
  s["published_store"] = spec_.publish().store();
  s["published_model"] = summary_.published_model;
  s["published_version"] = summary_.published_version;
  s["published_dir"] = summary_.published_dir;
  log_->WriteSummary(s);
}

void TrainingRun::WriteSummary() {
  summary_.steps = step_;
  summary_.epochs_completed = static_cast<int>(step_ / steps_per_epoch_);
  summary_.final_train_loss = last_window_loss_;
  summary_.test_loss = last_eval_.loss;
  summary_.test_accuracy = last_eval_.cm.Accuracy();
  summary_.test_precision = last_eval_.cm.MacroPrecision();
  summary_.test_recall = last_eval_.cm.MacroRecall();
  summary_.test_f1 = last_eval_.cm.MacroF1();
  for (int r = 0; r < last_eval_.cm.num_classes(); ++r) {
    std::vector<int64_t> row;
    for (int c = 0; c < last_eval_.cm.num_classes(); ++c) row.push_back(last_eval_.cm.count(r, c));
    summary_.confusion_matrix.push_back(row);
  }
  summary_.train_seconds = train_seconds_;
  double rank_sps = train_seconds_ > 0 ? total_samples_ / train_seconds_ : 0;
  summary_.samples_per_sec = rank_sps;
  if (group_) {
    Tensor v = Tensor::FromVector({rank_sps}, {1}, DType::kF64);
    group_->AllReduce(v, Collective())->Wait();
    summary_.samples_per_sec = v.data<double>()[0];
  }
  summary_.wall_seconds = Seconds(t_start_, Clock::now());
  if (!lead_) return;
  if (already_complete_ && fs::exists(opt_.run_dir + "/summary.json")) return;
  json s = {{"name", summary_.name},
            {"steps", summary_.steps},
            {"epochs_completed", summary_.epochs_completed},
            {"final_train_loss", summary_.final_train_loss},
            {"test_loss", summary_.test_loss},
            {"test_accuracy", summary_.test_accuracy},
            {"test_precision", summary_.test_precision},
            {"test_recall", summary_.test_recall},
            {"test_f1", summary_.test_f1},
            {"confusion_matrix", summary_.confusion_matrix},
            {"samples_per_sec", summary_.samples_per_sec},
            {"train_seconds", summary_.train_seconds},
            {"wall_seconds", summary_.wall_seconds},
            {"threads", t_.threads()},
            {"world_size", world_},
            {"resumed_from_step", summary_.resumed_from_step},
            {"checkpoint", summary_.checkpoint},
            {"tessera_version", TESSERA_VERSION}};
  log_->WriteSummary(s);
}

}  // namespace

TrainSummary Train(const JobSpec& spec, const TrainerOptions& opt) { return TrainingRun(spec, opt).Run(); }

}  // namespace tessera::jobs
