// Train(): one run of a job spec, as a TrainingRun (jobs/training_run.h). This file: the set-up, in
// named steps (launch checks, data, model and optimizer, where to start from, joining the ranks).
#include "jobs/trainer.h"

#include <unistd.h>

#include "datasets/tokens.h"
#include "jobs/training_run.h"

namespace tessera::jobs {
namespace internal {

namespace fs = std::filesystem;

// ---- set-up -----------------------------------------------------------------------------------

TrainingRun::TrainingRun(const JobSpec& spec, const TrainerOptions& opt)
    : spec_(spec), opt_(opt), t_(spec.train()), timeout_s_(spec.parallel().collective_timeout_s()) {
  group_ = opt.group && opt.group->size() > 1 ? opt.group : nullptr;
  TakePlacement();
  lead_ = rank_ == 0;
  CheckLaunch();
  std::error_code ec;
  fs::create_directories(opt.run_dir, ec);
  if (ec) TESSERA_THROW(IoError, opt.run_dir, ": cannot create the run directory: ", ec.message());
  if (lead_) lock_ = std::make_unique<RunDirLock>(opt.run_dir);  // before any clean-up of the directory
  const CheckpointSpec& cs = spec.checkpoint();
  plan_ = PlanResume(cs.dir().empty() ? opt.run_dir + "/checkpoints" : cs.dir(), opt, group_, timeout_s_);
  log_ = std::make_unique<RunLog>(opt.run_dir, spec, rank_, world_, opt.progress, !plan_.candidates.empty());
  log_->RankEvent({{"event", "placement"},
                   {"launcher", placement_.launcher},
                   {"local_rank", placement_.local_rank},
                   {"local_size", placement_.local_size}});
  SetNumThreads(t_.threads());
  if (lead_ && !spec.publish().store().empty())
    dataset_digests_ =
        std::async(std::launch::async, [&spec, this] { return DatasetDigests(spec, &stop_digests_); });
  OpenData();
  BuildModelAndOptimizer();
  StartFromCheckpointOrWeights();
  JoinRanks();
  Announce();
}

// Rank and world from the launcher, checked against the group that carries the collectives.
void TrainingRun::TakePlacement() {
  const int group_rank = group_ ? group_->rank() : 0, group_world = group_ ? group_->size() : 1;
  placement_ = opt_.placement;
  if (placement_.world == 0) {  // not given: the group's
    placement_.rank = group_rank;
    placement_.world = group_world;
  }
  if (placement_.rank != group_rank || placement_.world != group_world)
    TESSERA_THROW(
        ConfigError, "the launcher (", placement_.launcher, ") placed this process as rank ", placement_.rank,
        " of ", placement_.world, " but its process group is rank ", group_rank, " of ", group_world,
        ": the launcher's variables and the communicator disagree (a process started outside mpirun or "
        "srun, or an MPI other than the one tessera was built with?)");
  if (placement_.local_rank < 0 || placement_.local_rank >= std::max(1, placement_.local_size))
    TESSERA_THROW(ConfigError, "local rank ", placement_.local_rank, " is outside [0, ",
                  placement_.local_size, ") (", placement_.launcher, ")");
  rank_ = placement_.rank;
  world_ = placement_.world;
}

// The layout asked for must match what was launched.
void TrainingRun::CheckLaunch() {
  const int want = spec_.parallel().data();
  if (want != 0 && want != world_)
    TESSERA_THROW(ConfigError, "parallel.data is ", want, " but ", world_, " rank",
                  world_ == 1 ? " was" : "s were", " launched; launch ", want,
                  " ranks or set parallel.data to ", world_, " (0 means: every launched rank)");
  if (spec_.data().batch_size() % world_ != 0)
    TESSERA_THROW(ConfigError, "data.batch_size ", spec_.data().batch_size(),
                  " does not divide evenly over the ", world_, " data-parallel ranks");
}

void TrainingRun::OpenData() {
  train_data_ = OpenSplit(spec_.data(), true);
  test_data_ = OpenSplit(spec_.data(), false, train_data_.get());
  if (test_data_->example_shape() != train_data_->example_shape())
    TESSERA_THROW(DataError, "test examples have shape ", ShapeString(test_data_->example_shape()),
                  " but training examples ", ShapeString(train_data_->example_shape()));
  // Name the split whose labels do not fit the model (a bad test label was once blamed on the
  // training labels).
  const int64_t out = models::OutFeatures(spec_.model());
  for (const auto& [data, which] :
       {std::pair{train_data_.get(), "training"}, std::pair{test_data_.get(), "test"}})
    if (data->num_classes() > out)
      TESSERA_THROW(DataError, "the ", which, " labels of ", data->Describe(), " go up to class ",
                    data->num_classes() - 1, " but ", models::OutFeaturesField(spec_.model()), " is ", out,
                    " (classes 0 to ", out - 1, ")");
  classes_ = std::max(train_data_->num_classes(), test_data_->num_classes());
  if (!train_data_->label_shape().empty()) tokens_per_example_ = NumElements(train_data_->label_shape());
  dataset_size_ = train_data_->size();
  eval_norm_ = LoaderOptionsFor(spec_, false);
  log_->Say("data: train %s\n      test  %s\n", train_data_->Describe().c_str(),
            test_data_->Describe().c_str());
  if (tokens_per_example_ > 0 && lead_)  // the number a language model has to beat
    log_->Say("      unigram perplexity of the test split: %.2f\n",
              datasets::UnigramPerplexity(datasets::TokenFile(spec_.data().train_path()),
                                          datasets::TokenFile(spec_.data().test_path())));
}

// Weights and gradients alone take 8 bytes a parameter: refuse a model this machine cannot hold
// before allocating it, rather than die of std::bad_alloc inside a layer's constructor.
void CheckModelFitsInMemory(const ModelSpec& m) {
  const int64_t n = models::ParameterCount(m);
  const double need = 8.0 * static_cast<double>(n);
  const double have =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (n < 0 || (have > 0 && need > have))
    TESSERA_THROW(ConfigError, "model.", models::FamilyName(m), ": ", n, " parameters need ", need / 1e9,
                  " GB for their weights and gradients alone; this machine has ", have / 1e9,
                  " GB of memory");
}

void TrainingRun::BuildModelAndOptimizer() {
  CheckModelFitsInMemory(spec_.model());
  net_ = models::BuildModel(spec_.model(), train_data_->example_shape(), classes_);
  net_->set_needs_input_grad(false);
  dist::DataParallel::Options dpo;
  dpo.zero_stage = spec_.parallel().zero_stage();
  dpo.bucket_mb = spec_.parallel().bucket_size_mb();
  dpo.timeout_s = timeout_s_;
  const OptimizerSpec& os = spec_.optimizer();
  dp_ = std::make_unique<dist::DataParallel>(
      *net_, t_.seed(), group_, dpo,
      [&os](const Tensor& v, const Tensor& g) { return BuildOptimizer(os, v, g); });
  params_ = &dp_->params();
  optimizer_ = &dp_->optimizer();
  out_classes_ = static_cast<int>(models::OutFeatures(spec_.model()));
  sampler_ = std::make_unique<datasets::DistributedSampler>(dataset_size_, spec_.data().batch_size(),
                                                            t_.seed(), spec_.data().shuffle(),
                                                            spec_.data().drop_last(), rank_, world_);
  steps_per_epoch_ = sampler_->steps_per_epoch();
  total_steps_ = t_.steps() > 0 ? t_.steps() : steps_per_epoch_ * t_.epochs();
  global_batch_ = spec_.data().batch_size();
  schedule_ = BuildSchedule(spec_.optimizer(), total_steps_);
  // Each rank's optimizer state covers its shard, the slice the checkpoint writer has it write.
  layout_ = MakeCheckpointLayout(*params_, optimizer_, dp_->partition() ? dp_->partition()->begin() : 0);
}

// What this rank holds, by ZeRO stage (for the log and summary.json).
void TrainingRun::RecordMemoryHeld() {
  const dist::DataParallel::Memory m = dp_->Held();
  summary_.zero_stage = dp_->zero_stage();
  summary_.parameter_bytes = m.parameter_bytes;
  summary_.gradient_bytes = m.gradient_bytes;
  summary_.optimizer_state_bytes = m.optimizer_state_bytes;
  summary_.gathered_unit_bytes = m.gathered_unit_bytes;
}

// A checkpoint to continue from wins; otherwise train.init_from's weights, if any. A resumed run
// takes its parent from the record its first start left (the reference may resolve differently
// by now, or not at all).
void TrainingRun::StartFromCheckpointOrWeights() {
  if (!plan_.candidates.empty())
    init_ = ReadInitRecord(opt_.run_dir);
  else if (!t_.init_from().empty())
    init_ = std::make_unique<InitSource>(ResolveInitFrom(t_.init_from()));
  if (plan_.candidates.empty()) {
    if (init_) {
      std::vector<std::string> lines = InitFromWeights(*init_, *params_);
      CheckWeightsFinite(
          params_->values(), "in train.init_from " + init_->weights_path,
          "The file is intact (its checksums match) but its weights cannot be trained from: choose "
          "other weights for train.init_from");
      if (lead_) WriteInitRecord(opt_.run_dir, *init_);
      log_->Say("init_from: %s (%s)\n", init_->reference.c_str(), init_->weights_path.c_str());
      for (const std::string& l : lines) log_->Say("  %s\n", l.c_str());
      log_->Emit({{"event", "init_from"},
                  {"reference", init_->reference},
                  {"weights", init_->weights_path},
                  {"tensors", lines}});
    }
    return;
  }
  if (plan_.own_checkpoints && !opt_.resume_from.empty())
    log_->Say(
        "resume: %s already holds checkpoints of this run; continuing from its newest, not from "
        "--resume-from "
        "%s\n",
        plan_.ckpt_dir.c_str(), opt_.resume_from.c_str());
  Resumed r = LoadFirstUsable(plan_, layout_, rank_);
  const CheckpointMeta& m = r.info.meta;
  optimizer_->set_step_count(m.optimizer_step);
  resume_path_ = r.path;
  CheckWeightsFinite(
      params_->values(), "in the checkpoint to resume from, " + resume_path_,
      "The file is intact (its checksums match) but its weights cannot be trained from: continue from "
      "an earlier checkpoint (--resume-from) or start afresh (--no-resume)");
  resumed_lr_ = m.lr;
  step_ = m.step;
  summary_.resumed_from_step = step_;
  log_->Resumed(step_);
  summary_.checkpoint = resume_path_;
  log_->Say("resume: %s (step %lld, epoch %lld, written by %d rank%s)\n", resume_path_.c_str(),
            static_cast<long long>(step_), static_cast<long long>(m.epoch), m.world_size,
            m.world_size == 1 ? "" : "s");
  if (m.optimizer != optimizer_->name())
    log_->Warn("the checkpoint's optimizer is %s but this job uses %s: state it does not use is dropped\n",
               m.optimizer.c_str(), optimizer_->name().c_str());
  if (m.global_batch != global_batch_ || m.seed != t_.seed() || m.steps_per_epoch != steps_per_epoch_)
    log_->Warn(
        "the checkpoint was written with data.batch_size %lld, train.seed %llu and %lld steps per "
        "epoch; this job has %lld, %llu and %lld: the data order from here on differs from the original "
        "run's\n",
        static_cast<long long>(m.global_batch), static_cast<unsigned long long>(m.seed),
        static_cast<long long>(m.steps_per_epoch), static_cast<long long>(global_batch_),
        static_cast<unsigned long long>(t_.seed()), static_cast<long long>(steps_per_epoch_));
}

// Every rank must start from the same state; then the reducer and the checkpoint writer.
void TrainingRun::JoinRanks() {
  start_step_ = step_;
  if (group_) {
    AgreeOnStep(step_, *group_, timeout_s_, plan_.ckpt_dir);
    dp_->Join();
    ckpt_group_ = group_->Split(0, rank_, timeout_s_);
  }
  const CheckpointSpec& cs = spec_.checkpoint();
  // A preemptible run can always checkpoint, whatever the spec asks for otherwise.
  if (cs.every_steps() > 0 || cs.every_minutes() > 0 || cs.save_final() || opt_.preemptible) {
    CheckpointWriterOptions wo;
    wo.dir = plan_.ckpt_dir;
    wo.keep_last = cs.keep_last();
    wo.group = ckpt_group_.get();
    // Training's deadline plus the save's bytes at the slowest rate we wait for: a rank that dies
    // during a save is an error on the others (they may be waiting for the save, not in a
    // training collective), and a large save on slow storage is not.
    wo.timeout_s = timeout_s_;
    wo.min_io_bytes_per_s = cs.min_io_mb_per_s() * 1e6;
    writer_ = std::make_unique<CheckpointWriter>(wo);
  }
  already_complete_ = !resume_path_.empty() && step_ >= total_steps_;
  RecordMemoryHeld();
}

void TrainingRun::Announce() {
  if (step_ > 0 &&
      std::abs(schedule_->At(step_ - 1) - resumed_lr_) > 1e-12 * std::max(1.0, std::abs(resumed_lr_)))
    log_->Warn(
        "the checkpoint's last learning rate was %.6g but this job's schedule gives %.6g at that step "
        "(a changed optimizer.lr, schedule or train.steps): the run continues on this job's schedule\n",
        resumed_lr_, schedule_->At(step_ - 1));
  if (!plan_.set_aside.empty())
    log_->Say("--no-resume: the checkpoints already in %s were moved to %s\n", plan_.ckpt_dir.c_str(),
              plan_.set_aside.c_str());
  log_->Say("model: %lld parameters\n%s\n", static_cast<long long>(params_->num_parameters()),
            net_->Summary().c_str());
  log_->Say(
      "train: %lld steps (%lld per epoch), global batch %lld over %d rank%s, %d thread%s per rank, seed "
      "%llu\n",
      static_cast<long long>(total_steps_), static_cast<long long>(steps_per_epoch_),
      static_cast<long long>(global_batch_), world_, world_ == 1 ? "" : "s", t_.threads(),
      t_.threads() == 1 ? "" : "s", static_cast<unsigned long long>(t_.seed()));
  if (dp_->reducer())
    log_->Say("data parallel: %zu gradient buckets of up to %.3g MB, collective timeout %.0f s\n",
              dp_->reducer()->buckets().size(), spec_.parallel().bucket_size_mb(), timeout_s_);
  const int zero_stage = dp_->zero_stage();
  if (spec_.parallel().zero_stage() > 0 && !group_)
    log_->Say(
        "parallel.zero_stage %d shards over data-parallel ranks; with one rank there is nothing to shard "
        "(stage 0)\n",
        spec_.parallel().zero_stage());
  log_->Say(
      "memory per rank: parameters %.1f MB%s, gradients %.1f MB%s, optimizer state %.1f MB (ZeRO stage "
      "%d%s)\n",
      summary_.parameter_bytes / 1e6,
      zero_stage >= 3 ? detail::StrCat(" (its shard; up to two layers of at most ",
                                       summary_.gathered_unit_bytes / 1e6, " MB gathered at a time)")
                            .c_str()
                      : "",
      summary_.gradient_bytes / 1e6, zero_stage >= 2 ? " (its shard; buckets in flight come on top)" : "",
      summary_.optimizer_state_bytes / 1e6, zero_stage,
      zero_stage > 0 ? detail::StrCat(", shard of ", dp_->partition()->shard_size(), " of ", params_->numel(),
                                      " elements")
                           .c_str()
                     : "");
  if (!already_complete_)  // a finished run directory is left as it was
    log_->Emit({{"event", "memory"},
                {"zero_stage", zero_stage},
                {"parameter_bytes", summary_.parameter_bytes},
                {"gradient_bytes", summary_.gradient_bytes},
                {"optimizer_state_bytes", summary_.optimizer_state_bytes},
                {"gathered_unit_bytes", summary_.gathered_unit_bytes}});
  if (!spec_.publish().store().empty())
    log_->Say("publish: at the end, the %s weights to %s as model '%s'%s%s\n",
              spec_.publish().when() == PublishSpec::BEST
                  ? ("best (" + spec_.publish().metric() + ")").c_str()
                  : "final",
              spec_.publish().store().c_str(),
              (spec_.publish().model().empty() ? spec_.name() : spec_.publish().model()).c_str(),
              spec_.publish().alias().empty() ? "" : ", alias ", spec_.publish().alias().c_str());
  if (already_complete_)
    log_->Say(
        "the run is complete: its checkpoint is at step %lld of %lld; nothing to train, evaluating it\n",
        static_cast<long long>(step_), static_cast<long long>(total_steps_));
  else if (!resume_path_.empty())
    log_->Emit({{"event", "resume"}, {"step", step_}, {"checkpoint", resume_path_}, {"world_size", world_}});
}

}  // namespace internal

std::string DefaultRunDir(const std::string& name, std::time_t when) {
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&when));
  return "runs/" + name + "-" + stamp;
}

TrainSummary Train(const JobSpec& spec, const TrainerOptions& opt) {
  return internal::TrainingRun(spec, opt).Run();
}

}  // namespace tessera::jobs
