#include "jobs/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/metrics.h"
#include "core/models.h"
#include "core/nn/loss.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "core/optim/schedule.h"
#include "core/threads.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "datasets/sampler.h"
#include "dist/reducer.h"
#include "jobs/checkpoint.h"
#include "jobs/spec.h"
#include "tessera/config.h"

namespace tessera::jobs {
namespace {

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

std::unique_ptr<datasets::Dataset> OpenSplit(const DataSpec& d, bool train) {
  switch (d.kind()) {
    case DataSpec::IDX:
      return train ? datasets::OpenIdx(d.train_images(), d.train_labels())
                   : datasets::OpenIdx(d.test_images(), d.test_labels());
    case DataSpec::CSV:
      return datasets::OpenCsv(train ? d.train_path() : d.test_path(), d.label_column());
    case DataSpec::HDF5:
      return datasets::OpenHdf5(train ? d.train_path() : d.test_path(), d.features_dataset(), d.labels_dataset());
  }
  TESSERA_THROW(ConfigError, "data.kind: unknown kind ", static_cast<int>(d.kind()));
}

std::unique_ptr<nn::Sequential> BuildModel(const ModelSpec& m, const Shape& example, int classes) {
  std::string shape = ShapeString(example);
  if (m.has_mlp()) {
    const MlpSpec& s = m.mlp();
    if (s.in_features() != NumElements(example))
      TESSERA_THROW(ConfigError, "model.mlp.in_features is ", s.in_features(), " but the training examples have shape ",
                    shape, " (", NumElements(example), " values)");
    if (classes > s.out_features())
      TESSERA_THROW(ConfigError, "model.mlp.out_features is ", s.out_features(), " but the training labels have ",
                    classes, " classes");
    models::MlpConfig c;
    c.in_features = s.in_features();
    c.hidden.assign(s.hidden().begin(), s.hidden().end());
    c.out_features = s.out_features();
    c.dropout = s.dropout();
    c.gelu = s.activation() == GELU;
    return models::BuildMlp(c);
  }
  const CnnSpec& s = m.cnn();
  Shape want{s.in_channels(), s.height(), s.width()};
  if (want != example)
    TESSERA_THROW(ConfigError, "model.cnn expects examples of shape ", ShapeString(want),
                  " (in_channels, height, width) but the training examples have shape ", shape);
  if (classes > s.out_features())
    TESSERA_THROW(ConfigError, "model.cnn.out_features is ", s.out_features(), " but the training labels have ",
                  classes, " classes");
  models::CnnConfig c;
  c.in_channels = s.in_channels();
  c.height = s.height();
  c.width = s.width();
  c.channels.assign(s.channels().begin(), s.channels().end());
  c.kernel = s.kernel();
  c.hidden.assign(s.hidden().begin(), s.hidden().end());
  c.out_features = s.out_features();
  c.dropout = s.dropout();
  return models::BuildCnn(c);
}

std::unique_ptr<optim::Optimizer> BuildOptimizer(const OptimizerSpec& o, nn::FlatParameters& p) {
  switch (o.kind()) {
    case OptimizerSpec::SGD:
      return std::make_unique<optim::Sgd>(p.values(), p.grads(),
                                          optim::SgdOptions{o.momentum(), o.dampening(), o.weight_decay(), o.nesterov()});
    case OptimizerSpec::RMSPROP: {
      optim::RmspropOptions r;
      r.alpha = o.alpha();
      r.eps = o.eps();
      r.weight_decay = o.weight_decay();
      r.momentum = o.momentum();
      return std::make_unique<optim::Rmsprop>(p.values(), p.grads(), r);
    }
    case OptimizerSpec::ADAM:
    case OptimizerSpec::ADAMW: {
      optim::AdamOptions a;
      a.beta1 = o.beta1();
      a.beta2 = o.beta2();
      a.eps = o.eps();
      a.weight_decay = o.weight_decay();
      if (o.kind() == OptimizerSpec::ADAMW) return std::make_unique<optim::AdamW>(p.values(), p.grads(), a);
      return std::make_unique<optim::Adam>(p.values(), p.grads(), a);
    }
  }
  TESSERA_THROW(ConfigError, "optimizer.kind: unknown kind");
}

std::unique_ptr<optim::LrSchedule> BuildSchedule(const OptimizerSpec& o, int64_t total_steps) {
  const ScheduleSpec& s = o.schedule();
  switch (s.kind()) {
    case ScheduleSpec::CONSTANT: return std::make_unique<optim::ConstantLr>(o.lr());
    case ScheduleSpec::STEP: return std::make_unique<optim::StepLr>(o.lr(), s.step_size(), s.gamma());
    case ScheduleSpec::COSINE:
      if (s.warmup_steps() > total_steps)
        TESSERA_THROW(ConfigError, "optimizer.schedule.warmup_steps (", s.warmup_steps(), ") exceeds the ",
                      total_steps, " steps of the run");
      return std::make_unique<optim::CosineLr>(o.lr(), s.warmup_steps(), total_steps, s.min_lr());
  }
  TESSERA_THROW(ConfigError, "optimizer.schedule.kind: unknown kind");
}

// "cosine(lr=0.001, warmup_steps=100, total_steps=1407, min_lr=0)": what the rate at any step follows.
std::string ScheduleDescription(const OptimizerSpec& o, int64_t total_steps) {
  const ScheduleSpec& s = o.schedule();
  char buf[256];
  switch (s.kind()) {
    case ScheduleSpec::STEP:
      std::snprintf(buf, sizeof buf, "step(lr=%.9g, step_size=%lld, gamma=%.9g)", o.lr(),
                    static_cast<long long>(s.step_size()), s.gamma());
      break;
    case ScheduleSpec::COSINE:
      std::snprintf(buf, sizeof buf, "cosine(lr=%.9g, warmup_steps=%lld, total_steps=%lld, min_lr=%.9g)", o.lr(),
                    static_cast<long long>(s.warmup_steps()), static_cast<long long>(total_steps), s.min_lr());
      break;
    default:
      std::snprintf(buf, sizeof buf, "constant(lr=%.9g)", o.lr());
  }
  return buf;
}

datasets::LoaderOptions LoaderOptionsFor(const JobSpec& spec, bool train) {
  const DataSpec& d = spec.data();
  datasets::LoaderOptions o;
  o.prefetch = d.prefetch();
  o.scale = d.normalize().scale();
  o.mean.assign(d.normalize().mean().begin(), d.normalize().mean().end());
  o.std.assign(d.normalize().std().begin(), d.normalize().std().end());
  o.crop_padding = d.augment().random_crop_padding();
  o.horizontal_flip = d.augment().horizontal_flip();
  o.augment = train;
  o.seed = spec.train().seed();
  return o;
}

struct EvalResult {
  double loss = 0;
  ConfusionMatrix cm{1};
};

EvalResult Evaluate(nn::Module& net, datasets::Dataset& data, const datasets::LoaderOptions& norm,
                    int64_t batch_size, int classes, dist::ProcessGroup* group, double timeout_s) {
  net.SetTraining(false);
  EvalResult r{0, ConfusionMatrix(classes)};
  const int rank = group ? group->rank() : 0, world = group ? group->size() : 1;
  std::vector<int64_t> all = datasets::EvalIndices(data.size(), rank, world);
  Shape ex = data.example_shape();
  double loss_sum = 0;
  nn::CrossEntropyLoss ce;
  for (size_t b = 0; b < all.size(); b += batch_size) {
    size_t e = std::min(all.size(), b + static_cast<size_t>(batch_size));
    std::vector<int64_t> idx(all.begin() + b, all.begin() + e);
    Shape fs{static_cast<int64_t>(idx.size())};
    fs.insert(fs.end(), ex.begin(), ex.end());
    Tensor x = Tensor::Empty(fs), y = Tensor::Empty({static_cast<int64_t>(idx.size())}, DType::kI32);
    data.Get(idx, x, y);
    datasets::Normalize(x, norm);
    Tensor logits = net.Forward(x);
    loss_sum += ce.Forward(logits, y).Item() * static_cast<double>(idx.size());
    r.cm.AddLogits(logits, y);
  }
  double count = static_cast<double>(all.size());
  if (world > 1) {  // sum the counts and the loss over ranks: exactly the single-process result
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    Tensor counts = Tensor::Empty({static_cast<int64_t>(r.cm.raw().size())}, DType::kI64);
    std::copy(r.cm.raw().begin(), r.cm.raw().end(), counts.data<int64_t>());
    Tensor sums = Tensor::FromVector({loss_sum, count}, {2}, DType::kF64);
    auto w1 = group->AllReduce(counts, o);
    auto w2 = group->AllReduce(sums, o);
    w1->Wait();
    w2->Wait();
    std::copy(counts.data<int64_t>(), counts.data<int64_t>() + counts.numel(), r.cm.raw().begin());
    loss_sum = sums.data<double>()[0];
    count = sums.data<double>()[1];
  }
  r.loss = count > 0 ? loss_sum / count : 0;
  net.SetTraining(true);
  return r;
}

json EvalJson(const EvalResult& r) {
  return {{"test_loss", r.loss},
          {"test_accuracy", r.cm.Accuracy()},
          {"test_precision", r.cm.MacroPrecision()},
          {"test_recall", r.cm.MacroRecall()},
          {"test_f1", r.cm.MacroF1()}};
}

}  // namespace

TrainSummary Train(const JobSpec& spec, const TrainerOptions& opt) {
  const auto t_start = Clock::now();
  namespace fs = std::filesystem;
  dist::ProcessGroup* group = opt.group && opt.group->size() > 1 ? opt.group : nullptr;
  const int rank = group ? group->rank() : 0, world = group ? group->size() : 1;
  const bool lead = rank == 0;
  const double timeout_s = spec.parallel().collective_timeout_s();
  if (spec.parallel().data() != 0 && spec.parallel().data() != world)
    TESSERA_THROW(ConfigError, "parallel.data is ", spec.parallel().data(), " but ", world, " rank",
                  world == 1 ? " was" : "s were", " launched; launch ", spec.parallel().data(),
                  " ranks or set parallel.data to ", world, " (0 means: every launched rank)");
  if (spec.data().batch_size() % world != 0)
    TESSERA_THROW(ConfigError, "data.batch_size ", spec.data().batch_size(), " does not divide evenly over the ", world,
                  " data-parallel ranks");

  std::error_code ec;
  fs::create_directories(opt.run_dir, ec);
  if (ec) TESSERA_THROW(IoError, opt.run_dir, ": cannot create the run directory: ", ec.message());
  // Checkpoints: where they go, and whether this run continues from one.
  const CheckpointSpec& cs = spec.checkpoint();
  const std::string ckpt_dir = cs.dir().empty() ? opt.run_dir + "/checkpoints" : cs.dir();
  std::string set_aside;  // --no-resume in a directory with checkpoints: where they were moved
  if (lead) {
    RemovePartialCheckpoints(ckpt_dir);
    if (opt.resume == TrainerOptions::Resume::kNever && !FindLatestCheckpoint(ckpt_dir).empty())
      set_aside = SetAsideCheckpoints(ckpt_dir);
  }
  if (group) {  // every rank looks for checkpoints only once rank 0 has tidied the directory
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    group->Barrier(o)->Wait();
  }
  // Where to continue from, best first. The run directory's own checkpoints come before
  // --resume-from: a requeued job started with --resume-from continues from its own progress.
  std::vector<std::string> candidates;
  bool own_checkpoints = false;
  if (opt.resume != TrainerOptions::Resume::kNever) {
    std::string latest = FindLatestCheckpoint(ckpt_dir);
    if (!latest.empty()) {
      own_checkpoints = true;
      candidates.push_back(latest);
      for (const std::string& c : ListCheckpoints(ckpt_dir))
        if (c != latest) candidates.push_back(c);
    }
  }
  if (candidates.empty() && !opt.resume_from.empty()) candidates.push_back(ResolveCheckpoint(opt.resume_from));
  if (candidates.empty() && opt.resume == TrainerOptions::Resume::kRequire)
    TESSERA_THROW(ConfigError, "--resume: no committed checkpoint in ", ckpt_dir, " to continue from");

  std::ofstream metrics, rank_log;
  if (lead) {
    std::ofstream out(opt.run_dir + "/job.pbtxt");
    out << "# Resolved job spec: every default written out.\n" << ToText(spec);
    if (!out) TESSERA_THROW(IoError, opt.run_dir, "/job.pbtxt: cannot write");
    metrics.open(opt.run_dir + "/metrics.jsonl", candidates.empty() ? std::ios::trunc : std::ios::app);
    if (!metrics) TESSERA_THROW(IoError, opt.run_dir, "/metrics.jsonl: cannot write");
  }
  if (group) {
    std::string path = opt.run_dir + "/rank-" + std::to_string(rank) + ".log";
    rank_log.open(path, candidates.empty() ? std::ios::trunc : std::ios::app);
    if (!rank_log) TESSERA_THROW(IoError, path, ": cannot write");
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    rank_log << json{{"event", "start"}, {"rank", rank}, {"world_size", world}, {"pid", getpid()}, {"host", host}}.dump()
             << "\n" << std::flush;
  }
  bool quiet_metrics = false;  // set when a finished run is only evaluated again
  auto emit = [&](const json& j) {
    if (lead && !quiet_metrics) metrics << j.dump() << "\n" << std::flush;
  };
  const bool progress = opt.progress && lead;
  // mpirun and srun hand each rank a pseudo-terminal whatever their own output is, so under a
  // launcher progress is written as plain lines.
  const bool launched = std::getenv("OMPI_COMM_WORLD_RANK") != nullptr || std::getenv("SLURM_PROCID") != nullptr ||
                        std::getenv("PMI_RANK") != nullptr;
  const bool tty = progress && !launched && isatty(fileno(stdout));
  auto say = [&](const char* fmt, auto... args) {
    if (!progress) return;
    if (tty) std::printf("\r\033[K");
    std::printf(fmt, args...);
    std::fflush(stdout);
  };

  const TrainSpec& t = spec.train();
  SetNumThreads(t.threads());
  std::unique_ptr<datasets::Dataset> train_data = OpenSplit(spec.data(), true);
  std::unique_ptr<datasets::Dataset> test_data = OpenSplit(spec.data(), false);
  if (test_data->example_shape() != train_data->example_shape())
    TESSERA_THROW(DataError, "test examples have shape ", ShapeString(test_data->example_shape()),
                  " but training examples ", ShapeString(train_data->example_shape()));
  int classes = std::max(train_data->num_classes(), test_data->num_classes());
  say("data: train %s\n      test  %s\n", train_data->Describe().c_str(), test_data->Describe().c_str());

  std::unique_ptr<nn::Sequential> net = BuildModel(spec.model(), train_data->example_shape(), classes);
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, t.seed());
  int out_classes = static_cast<int>(spec.model().has_mlp() ? spec.model().mlp().out_features()
                                                             : spec.model().cnn().out_features());
  std::unique_ptr<optim::Optimizer> optimizer = BuildOptimizer(spec.optimizer(), params);
  datasets::DistributedSampler sampler(train_data->size(), spec.data().batch_size(), t.seed(), spec.data().shuffle(),
                                       spec.data().drop_last(), rank, world);
  const int64_t steps_per_epoch = sampler.steps_per_epoch();
  const int64_t total_steps = t.steps() > 0 ? t.steps() : steps_per_epoch * t.epochs();
  const int64_t global_batch = spec.data().batch_size();
  const int64_t dataset_size = train_data->size();

  // Every rank reads the checkpoint; they must all have found the same one.
  const CheckpointLayout layout = MakeCheckpointLayout(params, optimizer.get());
  int64_t step = 0;
  TrainSummary summary;
  std::string resume_path;
  double resumed_lr = 0;
  if (!candidates.empty()) {
    if (own_checkpoints && !opt.resume_from.empty())
      say("resume: %s already holds checkpoints of this run; continuing from its newest, not from --resume-from "
          "%s\n", ckpt_dir.c_str(), opt.resume_from.c_str());
    CheckpointInfo info;
    for (size_t i = 0; i < candidates.size(); ++i) {
      try {
        if (ReadCheckpointInfo(candidates[i]).kind != "checkpoint")
          TESSERA_THROW(CheckpointFormatError, candidates[i], ": is an exported model (no optimizer state, step or "
                        "sampler position); training resumes from a checkpoint");
        info = LoadCheckpoint(candidates[i], layout);
        resume_path = candidates[i];
        break;
      } catch (const CheckpointFormatError&) {
        throw;  // a newer format or not a checkpoint: an older one is not the answer
      } catch (const IoError& e) {
        // Corrupt or unreadable: an older committed checkpoint of this run still gets it going.
        if (!own_checkpoints || i + 1 == candidates.size()) throw;
        std::fprintf(stderr, "tessera: warning: rank %d cannot resume from the newest checkpoint: %s; trying %s\n",
                     rank, e.what(), candidates[i + 1].c_str());
      }
    }
    optimizer->set_step_count(info.meta.optimizer_step);
    resumed_lr = info.meta.lr;
    step = info.meta.step;
    summary.resumed_from_step = step;
    summary.checkpoint = resume_path;
    say("resume: %s (step %lld, epoch %lld, written by %d rank%s)\n", resume_path.c_str(),
        static_cast<long long>(step), static_cast<long long>(info.meta.epoch), info.meta.world_size,
        info.meta.world_size == 1 ? "" : "s");
    if (info.meta.optimizer != optimizer->name())
      say("warning: the checkpoint's optimizer is %s but this job uses %s: state it does not use is dropped\n",
          info.meta.optimizer.c_str(), optimizer->name().c_str());
    if (info.meta.global_batch != global_batch || info.meta.seed != t.seed() ||
        info.meta.steps_per_epoch != steps_per_epoch)
      say("warning: the checkpoint was written with data.batch_size %lld, train.seed %llu and %lld steps per epoch; "
          "this job has %lld, %llu and %lld: the data order from here on differs from the original run's\n",
          static_cast<long long>(info.meta.global_batch), static_cast<unsigned long long>(info.meta.seed),
          static_cast<long long>(info.meta.steps_per_epoch), static_cast<long long>(global_batch),
          static_cast<unsigned long long>(t.seed()), static_cast<long long>(steps_per_epoch));
  }
  std::unique_ptr<dist::Reducer> reducer;
  std::unique_ptr<dist::ProcessGroup> ckpt_group;  // the checkpoint writer's own collectives
  if (group) {
    Tensor v = Tensor::FromVector({static_cast<double>(step), -static_cast<double>(step)}, {2}, DType::kF64);
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    o.op = dist::ReduceOp::kMax;
    group->AllReduce(v, o)->Wait();
    if (v.data<double>()[0] != -v.data<double>()[1])
      TESSERA_THROW(IoError, "the ranks found different checkpoints to resume from (steps ", -v.data<double>()[1],
                    " to ", v.data<double>()[0], "); is ", ckpt_dir, " on a file system all ranks share?");
    dist::BroadcastParameters(params, *group, 0, timeout_s);
    reducer = std::make_unique<dist::Reducer>(params, *group, spec.parallel().bucket_size_mb(), timeout_s);
    ckpt_group = group->Split(0, rank);
  }
  const bool checkpointing = cs.every_steps() > 0 || cs.every_minutes() > 0 || cs.save_final();
  std::unique_ptr<CheckpointWriter> writer;
  if (checkpointing) {
    CheckpointWriterOptions wo;
    wo.dir = ckpt_dir;
    wo.keep_last = cs.keep_last();
    wo.group = ckpt_group.get();
    // The same deadline as training's collectives: a rank that dies during a save is an error
    // on the others within it (they may be waiting for the save, not in a training collective).
    wo.timeout_s = timeout_s;
    writer = std::make_unique<CheckpointWriter>(wo);
  }
  std::unique_ptr<optim::LrSchedule> schedule = BuildSchedule(spec.optimizer(), total_steps);
  if (step > 0 && std::abs(schedule->At(step - 1) - resumed_lr) > 1e-12 * std::max(1.0, std::abs(resumed_lr)))
    say("warning: the checkpoint's last learning rate was %.6g but this job's schedule gives %.6g at that step "
        "(a changed optimizer.lr, schedule or train.steps): the run continues on this job's schedule\n",
        resumed_lr, schedule->At(step - 1));
  if (!set_aside.empty())
    say("--no-resume: the checkpoints already in %s were moved to %s\n", ckpt_dir.c_str(), set_aside.c_str());
  say("model: %lld parameters\n%s\n", static_cast<long long>(params.num_parameters()), net->Summary().c_str());
  say("train: %lld steps (%lld per epoch), global batch %lld over %d rank%s, %d thread%s per rank, seed %llu\n",
      static_cast<long long>(total_steps), static_cast<long long>(steps_per_epoch),
      static_cast<long long>(spec.data().batch_size()), world, world == 1 ? "" : "s", t.threads(),
      t.threads() == 1 ? "" : "s", static_cast<unsigned long long>(t.seed()));
  if (reducer)
    say("data parallel: %zu gradient buckets of up to %.3g MB, collective timeout %.0f s\n", reducer->buckets().size(),
        spec.parallel().bucket_size_mb(), timeout_s);

  datasets::Loader loader(*train_data, sampler, LoaderOptionsFor(spec, true));
  const datasets::LoaderOptions eval_norm = LoaderOptionsFor(spec, false);
  nn::CrossEntropyLoss loss_fn;
  const int accumulate = t.accumulate_steps();
  const double clip = spec.optimizer().clip_grad_norm();

  summary.name = spec.name();
  double window_loss = 0, last_window_loss = 0;  // sums of per-step global mean losses
  int64_t window_steps = 0, window_samples = 0, total_samples = 0;  // samples: this rank's
  double train_seconds = 0;  // excludes evaluation
  double window_time = 0;    // training time of the current log window before an evaluation
  auto t_window = Clock::now();
  EvalResult last_eval;
  auto run_eval = [&](int64_t step, int epoch) {
    auto t0 = Clock::now();
    last_eval = Evaluate(*net, *test_data, eval_norm, spec.data().eval_batch_size(), out_classes, group, timeout_s);
    json j = EvalJson(last_eval);
    j["event"] = "eval";
    j["step"] = step;
    j["epoch"] = epoch;
    j["eval_seconds"] = Seconds(t0, Clock::now());
    emit(j);
    say("eval  step %lld  epoch %d  test loss %.4f  accuracy %.4f  macro F1 %.4f\n", static_cast<long long>(step),
        epoch, last_eval.loss, last_eval.cm.Accuracy(), last_eval.cm.MacroF1());
    t_window = Clock::now();  // evaluation time does not count towards throughput
  };

  // The checkpoint of the state after `step` steps (lr: the rate of the last step).
  const int64_t start_step = step;
  auto checkpoint_meta = [&](int64_t at, double lr) {
    CheckpointMeta m;
    m.tessera_version = TESSERA_VERSION;
    m.step = at;
    m.epoch = at / steps_per_epoch;
    m.step_in_epoch = at % steps_per_epoch;
    m.steps_per_epoch = steps_per_epoch;
    m.global_batch = global_batch;
    const int64_t per_epoch = spec.data().drop_last() ? steps_per_epoch * global_batch : dataset_size;
    m.samples_seen = m.epoch * per_epoch + std::min(m.step_in_epoch * global_batch, per_epoch);
    m.seed = t.seed();
    const int64_t len = std::min<int64_t>(global_batch, dataset_size - m.step_in_epoch * global_batch);
    for (int r = 0; r < world; ++r) m.rank_next_example.push_back(at * global_batch + len * r / world);
    m.world_size = world;
    m.data_parallel = world;
    m.zero_stage = spec.parallel().zero_stage();
    m.tensor_parallel = std::max(1, spec.parallel().tensor());
    m.pipeline_parallel = std::max(1, spec.parallel().pipeline());
    m.optimizer = optimizer->name();
    m.optimizer_step = optimizer->step_count();
    m.lr_schedule = ScheduleDescription(spec.optimizer(), total_steps);
    m.lr = lr;
    m.job_spec = ToText(spec);
    m.dtype = "float32";
    return m;
  };
  auto report_checkpoints = [&]() {
    if (!writer) return;
    writer->ThrowIfFailed();
    for (const CheckpointSaveReport& r : writer->TakeReports()) {
      if (!lead) continue;
      summary.checkpoint = r.path;
      double mbs = r.write_seconds > 0 ? r.bytes / r.write_seconds / 1e6 : 0;
      emit({{"event", "checkpoint"}, {"step", r.step}, {"path", r.path}, {"bytes", r.bytes},
            {"write_seconds", r.write_seconds}, {"mb_per_sec", mbs}});
      if (tty) std::printf("\r\033[K");
      say("checkpoint: step %lld -> %s (%.1f MB in %.2f s, in the background)\n", static_cast<long long>(r.step),
          r.path.c_str(), r.bytes / 1e6, r.write_seconds);
    }
  };
  auto last_save = Clock::now();
  int64_t last_saved_step = -1;
  auto save = [&](double lr) {
    if (step == last_saved_step) return;
    last_saved_step = step;
    double stall = writer->Save(layout, checkpoint_meta(step, lr));
    last_save = Clock::now();
    emit({{"event", "checkpoint_started"}, {"step", step}, {"stall_seconds", stall}});
  };
  // A run directory whose checkpoint is already at the last step: report it, change nothing.
  const bool already_complete = !resume_path.empty() && step >= total_steps;
  if (already_complete)
    say("the run is complete: its checkpoint is at step %lld of %lld; nothing to train, evaluating it\n",
        static_cast<long long>(step), static_cast<long long>(total_steps));
  else if (!resume_path.empty())
    emit({{"event", "resume"}, {"step", step}, {"checkpoint", resume_path}, {"world_size", world}});

  int epoch = 0;
  datasets::Batch batch;
  while (step < total_steps) {
    epoch = static_cast<int>(step / steps_per_epoch);
    loader.StartEpoch(epoch, step % steps_per_epoch);
    while (step < total_steps && loader.Next(&batch)) {
      const double lr = schedule->At(step);
      const int64_t n = batch.features.dim(0);
      // The examples of this step over all ranks: each rank scales its loss by its share, so that
      // the sum of the ranks' gradients is the gradient of the global mean loss.
      const int64_t in_epoch = (step % steps_per_epoch) * global_batch;
      const int64_t n_global = std::min<int64_t>(global_batch, dataset_size - in_epoch);
      params.ZeroGrad();
      double step_loss = 0;
      for (int k = 0; k < accumulate; ++k) {
        int64_t lo = n * k / accumulate, hi = n * (k + 1) / accumulate;
        if (reducer) reducer->set_enabled(k == accumulate - 1);
        if (lo == hi) continue;
        Tensor x = batch.features.Slice0(lo, hi), y = batch.labels.Slice0(lo, hi);
        const double w = static_cast<double>(hi - lo) / static_cast<double>(n_global);
        // Dropout masks follow the examples, so they do not depend on the number of ranks.
        net->SetBatchPosition(static_cast<uint64_t>(step * global_batch + sampler.LocalOffset(step % steps_per_epoch) + lo));
        step_loss += w * loss_fn.Forward(net->Forward(x), y).Item();
        net->Backward(loss_fn.Backward(w));
      }
      if (reducer) reducer->Finish();
      // After the all-reduce every rank holds the same gradients: checking them (rather than this
      // rank's share of the loss) makes every rank stop at the same step with the same message.
      if (!std::isfinite(step_loss) || (reducer && !std::isfinite(ops::SumSquares(params.grads()))))
        TESSERA_THROW(Error, "the training loss or its gradients became non-finite at step ", step + 1,
                      "; lower optimizer.lr or set optimizer.clip_grad_norm");
      if (clip > 0) optim::ClipGradNorm(params.grads(), clip);  // gradients are global after the reduce
      optimizer->Step(lr);
      ++step;
      window_loss += step_loss;
      ++window_steps;
      window_samples += n;
      total_samples += n;
      const bool end_of_epoch = step % steps_per_epoch == 0;
      if (step % t.log_every_steps() == 0 || step == total_steps) {
        auto now = Clock::now();
        double dt = window_time + Seconds(t_window, now);
        window_time = 0;
        train_seconds += dt;
        double rank_sps = dt > 0 ? window_samples / dt : 0;
        double loss = window_loss, job_sps = rank_sps;
        // A time-based checkpoint is due by rank 0's clock (so that every rank agrees).
        double due = writer && cs.every_minutes() > 0 && lead && Seconds(last_save, now) >= cs.every_minutes() * 60;
        if (group) {  // the job's loss (sum of the ranks' shares) and throughput (sum of the ranks')
          Tensor v = Tensor::FromVector({window_loss, rank_sps, due}, {3}, DType::kF64);
          dist::CollectiveOptions o;
          o.timeout_s = timeout_s;
          group->AllReduce(v, o)->Wait();
          loss = v.data<double>()[0];
          job_sps = v.data<double>()[1];
          due = v.data<double>()[2];
          rank_log << json{{"event", "train"}, {"step", step}, {"rank", rank}, {"samples_per_sec", rank_sps}}.dump()
                   << "\n" << std::flush;
        }
        loss /= static_cast<double>(window_steps);
        double eta = train_seconds / static_cast<double>(step - start_step) * static_cast<double>(total_steps - step);
        json ev = {{"event", "train"}, {"step", step}, {"epoch", epoch + 1}, {"loss", loss}, {"lr", lr},
                   {"samples_per_sec", job_sps}, {"eta_seconds", eta}, {"elapsed_seconds", Seconds(t_start, now)}};
        if (group) ev["rank0_samples_per_sec"] = rank_sps;
        emit(ev);
        if (progress) {
          if (tty) std::printf("\r\033[K");
          std::printf("step %lld/%lld  epoch %d  loss %.4f  lr %.3g  %.0f samples/s  ETA %s%s",
                      static_cast<long long>(step), static_cast<long long>(total_steps), epoch + 1, loss, lr, job_sps,
                      FormatDuration(eta).c_str(), tty ? "" : "\n");
          std::fflush(stdout);
        }
        last_window_loss = loss;
        window_loss = 0;
        window_steps = 0;
        window_samples = 0;
        t_window = Clock::now();
        if (due > 0 && step < total_steps) save(lr);
      }
      if (writer) {
        if (cs.every_steps() > 0 && step % cs.every_steps() == 0) save(lr);
        if (step == total_steps && cs.save_final()) save(lr);
        report_checkpoints();
      }
      const bool eval_now = t.eval_every_steps() > 0 ? step % t.eval_every_steps() == 0 : end_of_epoch;
      if (eval_now && step < total_steps) {
        if (window_samples > 0) window_time += Seconds(t_window, Clock::now());
        if (tty) std::printf("\n");
        run_eval(step, epoch + 1);
      }
    }
  }
  if (tty) std::printf("\n");
  if (window_samples > 0) train_seconds += window_time + Seconds(t_window, Clock::now());
  if (writer && cs.save_final() && step == start_step && start_step > 0 && FindLatestCheckpoint(ckpt_dir).empty())
    save(schedule->At(step - 1));  // resumed from elsewhere with nothing left to do: keep the state here too
  quiet_metrics = already_complete;  run_eval(step, static_cast<int>(std::max<int64_t>(step - 1, 0) / steps_per_epoch) + 1);
  if (writer) {
    writer->Wait();
    report_checkpoints();
  }

  summary.steps = step;
  summary.epochs_completed = static_cast<int>(step / steps_per_epoch);
  summary.final_train_loss = last_window_loss;
  summary.test_loss = last_eval.loss;
  summary.test_accuracy = last_eval.cm.Accuracy();
  summary.test_precision = last_eval.cm.MacroPrecision();
  summary.test_recall = last_eval.cm.MacroRecall();
  summary.test_f1 = last_eval.cm.MacroF1();
  for (int r = 0; r < last_eval.cm.num_classes(); ++r) {
    std::vector<int64_t> row;
    for (int c = 0; c < last_eval.cm.num_classes(); ++c) row.push_back(last_eval.cm.count(r, c));
    summary.confusion_matrix.push_back(row);
  }
  summary.train_seconds = train_seconds;
  double rank_sps = train_seconds > 0 ? total_samples / train_seconds : 0;
  summary.samples_per_sec = rank_sps;
  if (group) {
    Tensor v = Tensor::FromVector({rank_sps}, {1}, DType::kF64);
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    group->AllReduce(v, o)->Wait();
    summary.samples_per_sec = v.data<double>()[0];
  }
  summary.wall_seconds = Seconds(t_start, Clock::now());
  if (!lead) return summary;
  if (already_complete && fs::exists(opt.run_dir + "/summary.json")) return summary;

  json s = {{"name", summary.name},
            {"steps", summary.steps},
            {"epochs_completed", summary.epochs_completed},
            {"final_train_loss", summary.final_train_loss},
            {"test_loss", summary.test_loss},
            {"test_accuracy", summary.test_accuracy},
            {"test_precision", summary.test_precision},
            {"test_recall", summary.test_recall},
            {"test_f1", summary.test_f1},
            {"confusion_matrix", summary.confusion_matrix},
            {"samples_per_sec", summary.samples_per_sec},
            {"train_seconds", summary.train_seconds},
            {"wall_seconds", summary.wall_seconds},
            {"threads", t.threads()},
            {"world_size", world},
            {"resumed_from_step", summary.resumed_from_step},
            {"checkpoint", summary.checkpoint},
            {"tessera_version", TESSERA_VERSION}};
  std::string tmp = opt.run_dir + "/summary.json.tmp";
  {
    std::ofstream out(tmp);
    out << s.dump(2) << "\n";
    if (!out) TESSERA_THROW(IoError, tmp, ": cannot write");
  }
  fs::rename(tmp, opt.run_dir + "/summary.json", ec);
  if (ec) TESSERA_THROW(IoError, opt.run_dir, "/summary.json: cannot write: ", ec.message());
  return summary;
}

}  // namespace tessera::jobs
