// TrainingRun (jobs/training_run.h): the loop -- the step, its log window, checkpoints and
// evaluations.
#include "jobs/training_run.h"

namespace tessera::jobs::internal {
namespace {

namespace fs = std::filesystem;

std::string FormatDuration(double s) {
  if (s < 0 || !std::isfinite(s)) return "?";
  char buf[32];
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ds", t);
  return buf;
}

}  // namespace

// ---- the loop ---------------------------------------------------------------------------------

// One step of this rank's batch, in `accumulate` micro-batches (dist::DataParallel::Step: reduce,
// check, clip, step, gather). Returns this rank's share of the step's global mean loss.
double TrainingRun::TrainStep(const datasets::Batch& batch, double lr) {
  const int64_t n = batch.features.dim(0);
  const int accumulate = t_.accumulate_steps();
  // The examples of this step over all ranks: each rank scales its loss by its share, so that the
  // sum of the ranks' gradients is the gradient of the global mean loss.
  const int64_t n_global = sampler_->GlobalBatchSize(step_);
  const auto micro_batch = [&](int k) -> std::optional<double> {
    const int64_t lo = n * k / accumulate, hi = n * (k + 1) / accumulate;
    if (lo == hi) return std::nullopt;
    Tensor x = batch.features.Slice0(lo, hi), y = batch.labels.Slice0(lo, hi);
    const double w = static_cast<double>(hi - lo) / static_cast<double>(n_global);
    // Dropout masks follow the examples, so they do not depend on the number of ranks.
    net_->SetBatchPosition(sampler_->RunPosition(step_) + static_cast<uint64_t>(lo));
    const double loss = w * loss_fn_.Forward(net_->Forward(x), y).Item();
    net_->Backward(loss_fn_.Backward(w));
    return loss;
  };
  const int64_t next = step_ + 1;  // a log line follows this step: measure its gradient norm
  dp_->set_measure_grad_norm(next % t_.log_every_steps() == 0 || next == total_steps_);
  const double step_loss = dp_->Step(accumulate, micro_batch, spec_.optimizer().clip_grad_norm(), lr, next);
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
  between_steps_rss_ = std::max(between_steps_rss_, ProcessMemoryBytes("VmRSS:"));
  CheckWeightsFiniteOnEveryRank(detail::StrCat("after step ", step_));
  auto now = Clock::now();
  double dt = window_time_ + Seconds(t_window_, now);
  window_time_ = 0;
  train_seconds_ += dt;
  double rank_sps = dt > 0 ? window_samples_ / dt : 0;
  double loss = window_loss_, job_sps = rank_sps;
  // A time-based checkpoint is due by rank 0's clock (so that every rank agrees).
  const double every_minutes = spec_.checkpoint().every_minutes();
  double due = writer_ && every_minutes > 0 && lead_ && Seconds(last_save_, now) >= every_minutes * 60;
  // Each rank's mean step time over the window, every rank's in one list after the all-reduce
  // (each fills its own slot), beside the summed loss and throughput.
  std::vector<double> rank_step(world_, 0.0);
  rank_step[rank_] = window_steps_ > 0 ? dt / static_cast<double>(window_steps_) : 0;
  if (group_) {
    std::vector<double> values = {window_loss_, rank_sps, due};
    values.insert(values.end(), rank_step.begin(), rank_step.end());
    Tensor v = Tensor::FromVector(values, {static_cast<int64_t>(values.size())}, DType::kF64);
    group_->AllReduce(v, Collective())->Wait();
    loss = v.data<double>()[0];
    job_sps = v.data<double>()[1];
    due = v.data<double>()[2];
    rank_step.assign(v.data<double>() + 3, v.data<double>() + 3 + world_);
    log_->RankEvent({{"event", "train"}, {"step", step_}, {"rank", rank_}, {"samples_per_sec", rank_sps}});
  }
  loss /= static_cast<double>(window_steps_);
  double eta = train_seconds_ / static_cast<double>(step_ - start_step_) * static_cast<double>(total_steps_ - step_);
  json ev = {{"event", "train"}, {"step", step_}, {"epoch", epoch + 1}, {"loss", loss}, {"lr", lr},
             {"grad_norm", dp_->last_grad_norm()}, {"samples_per_sec", job_sps}, {"rank_step_seconds", rank_step},
             {"eta_seconds", eta}, {"elapsed_seconds", Seconds(t_start_, now)}};
  if (group_) ev["rank0_samples_per_sec"] = rank_sps;
  if (tokens_per_example_ > 0) ev["tokens_per_sec"] = job_sps * static_cast<double>(tokens_per_example_);
  log_->Emit(ev);
  char line[256];
  const bool lm = tokens_per_example_ > 0;
  std::snprintf(line, sizeof line, "step %lld/%lld  epoch %d  loss %.4f  lr %.3g  %.0f %s/s  ETA %s",
                static_cast<long long>(step_), static_cast<long long>(total_steps_), epoch + 1, loss, lr,
                lm ? job_sps * static_cast<double>(tokens_per_example_) : job_sps, lm ? "tokens" : "samples",
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
  if (dp_->zero_stage() == 3) {  // layer by layer, as in training: a rank holds its shard and two layers
    last_eval_ = Evaluate(*net_, *test_data_, eval_norm_, spec_.data().eval_batch_size(), out_classes_, group_,
                          timeout_s_, [this] { dp_->WalkForward(); });
    dp_->ReleaseParameters();
  } else {
    last_eval_ = Evaluate(*net_, *test_data_, eval_norm_, spec_.data().eval_batch_size(), out_classes_, group_, timeout_s_);
  }
  json j = EvalJson(last_eval_);
  j["event"] = "eval";
  j["step"] = step;
  j["epoch"] = epoch;
  j["eval_seconds"] = Seconds(t0, Clock::now());
  log_->Emit(j);
  if (last_eval_.language_model)
    log_->Say("eval  step %lld  epoch %d  test loss %.4f  perplexity %.3f  next-token accuracy %.4f\n",
              static_cast<long long>(step), epoch, last_eval_.loss, last_eval_.Perplexity(), last_eval_.Accuracy());
  else
    log_->Say("eval  step %lld  epoch %d  test loss %.4f  accuracy %.4f  macro F1 %.4f\n", static_cast<long long>(step),
              epoch, last_eval_.loss, last_eval_.cm.Accuracy(), last_eval_.cm.MacroF1());
  // Every rank keeps the bookkeeping, so that at stage 3 they all gather for rank 0's copy of the
  // best weights; rank 0's decision is the one taken (a float summed over ranks need not be
  // bit-identical everywhere, and a gather some ranks skip would hang the others).
  if (!spec_.publish().store().empty() && spec_.publish().when() == PublishSpec::BEST) {
    bool larger_better = true;
    double v = MetricValue(last_eval_, spec_.publish().metric(), &larger_better);
    double improved = best_step_ < 0 || (larger_better ? v > best_metric_ : v < best_metric_) ? 1 : 0;
    if (group_ && dp_->zero_stage() == 3) {
      Tensor flag = Tensor::FromVector({improved}, {1}, DType::kF64);
      dist::CollectiveOptions o;
      o.timeout_s = timeout_s_;
      group_->Broadcast(flag, 0, o)->Wait();
      improved = flag.data<double>()[0];
    }
    if (improved != 0) {
      best_metric_ = v;
      best_step_ = step;
      best_eval_ = last_eval_;
      WholeParameters whole(*dp_);
      if (lead_) {
        if (!best_values_.defined()) best_values_ = Tensor::Empty({params_->numel()}, params_->values().dtype());
        best_values_.CopyFrom(params_->values());
      }
    }
  }
  t_window_ = Clock::now();  // evaluation time does not count towards throughput
}

// ---- preemption (jobs/preemption.h) -------------------------------------------------------------

// Whether any rank has received a preemption signal: one all-reduce of the signal number per step.
bool TrainingRun::PreemptionAgreed() {
  double sig = PreemptSignalReceived();
  if (group_) {
    Tensor v = Tensor::FromVector({sig}, {1}, DType::kF64);
    group_->AllReduce(v, Collective(dist::ReduceOp::kMax))->Wait();
    sig = v.data<double>()[0];
  }
  summary_.preempted_by = static_cast<int>(sig);
  return sig != 0;
}

// Save the state after this step (or wait for the save of it already in flight), commit it, say so.
void TrainingRun::StopForPreemption(double lr) {
  stop_digests_ = true;  // the lineage's dataset checksums are not needed: do not wait for them
  log_->EndLine();
  const std::string sig = SignalName(summary_.preempted_by);
  log_->Say("%s: stopping after step %lld of %lld to checkpoint\n", sig.c_str(), static_cast<long long>(step_),
            static_cast<long long>(total_steps_));
  const bool save_in_flight = writer_->busy();  // the signal came while a checkpoint was being written
  Save(lr);
  writer_->Wait();
  ReportCheckpoints();
  log_->Emit({{"event", "preempted"}, {"step", step_}, {"signal", sig}, {"checkpoint", summary_.checkpoint},
              {"save_in_flight", save_in_flight}});
  log_->Say("preempted: the checkpoint of step %lld is committed (%s); the run resumes from it when started again "
            "with the same run directory\n",
            static_cast<long long>(step_), summary_.checkpoint.c_str());
  summary_.steps = step_;
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
  m.zero_stage = dp_->zero_stage();  // the stage in effect (0 on one rank, whatever the spec says)
  m.tensor_parallel = std::max(1, spec_.parallel().tensor());
  m.pipeline_parallel = std::max(1, spec_.parallel().pipeline());
  m.optimizer = optimizer_->name();
  m.optimizer_step = optimizer_->step_count();
  m.lr_schedule = ScheduleDescription(spec_.optimizer(), total_steps_);
  m.lr = lr;
  m.job_spec = ToText(spec_);
  return m;
}

// NaN weights do not show in the loss (ReLU maps NaN to 0): check the weights themselves, one pass
// over them, at each log window, before each save and publish, and when they are loaded.
void TrainingRun::CheckWeightsFinite(const Tensor& values, const std::string& where, const char* hint) const {
  if (std::isfinite(ops::SumSquares(values))) return;
  std::string name = "(padding)";
  for (const nn::FlatParameters::Entry& e : params_->entries())
    if (!std::isfinite(ops::SumSquares(values.Slice0(e.offset, e.offset + e.numel)))) {
      name = e.name;
      break;
    }
  TESSERA_THROW(Error, "the weights hold NaN or Inf values (first in ", name, ") ", where, "; nothing is saved or published. ",
                hint ? hint
                     : "Lower optimizer.lr, set optimizer.clip_grad_norm, or check data.normalize (features scaled too "
                       "far overflow float32)");
}

// The same check of the parameters as they are during training, every rank agreeing (at stage 3
// each checks its shard; the whole model is gathered only to name the tensor).
void TrainingRun::CheckWeightsFiniteOnEveryRank(const std::string& where) {
  if (dp_->ParametersFinite()) return;
  WholeParameters whole(*dp_);
  CheckWeightsFinite(params_->values(), where);
}

void TrainingRun::Save(double lr) {
  if (step_ == last_saved_step_) return;
  CheckWeightsFiniteOnEveryRank(detail::StrCat("after step ", step_));
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
      if (opt_.preemptible && step_ < total_steps_ && PreemptionAgreed()) {
        StopForPreemption(lr);
        return summary_;
      }
      const bool end_of_epoch = step_ % steps_per_epoch_ == 0;
      const bool eval_now = t_.eval_every_steps() > 0 ? step_ % t_.eval_every_steps() == 0 : end_of_epoch;
      if (eval_now && step_ < total_steps_) {
        if (window_samples_ > 0) window_time_ += Seconds(t_window_, Clock::now());
        log_->EndLine();
        EvaluateAt(step_, epoch + 1);
      }
    }
  }
  if (opt_.preemptible) StopWatchingPreemptSignals();  // the last step is done: nothing to resume
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
}  // namespace tessera::jobs::internal
