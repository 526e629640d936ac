#include "jobs/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
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
                    int64_t batch_size, int classes) {
  net.SetTraining(false);
  EvalResult r{0, ConfusionMatrix(classes)};
  std::vector<int64_t> all = datasets::EvalIndices(data.size(), 0, 1);
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
  r.loss = all.empty() ? 0 : loss_sum / static_cast<double>(all.size());
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
  std::error_code ec;
  fs::create_directories(opt.run_dir, ec);
  if (ec) TESSERA_THROW(IoError, opt.run_dir, ": cannot create the run directory: ", ec.message());
  {
    std::ofstream out(opt.run_dir + "/job.pbtxt");
    out << "# Resolved job spec: every default written out.\n" << ToText(spec);
    if (!out) TESSERA_THROW(IoError, opt.run_dir, "/job.pbtxt: cannot write");
  }
  std::ofstream metrics(opt.run_dir + "/metrics.jsonl");
  if (!metrics) TESSERA_THROW(IoError, opt.run_dir, "/metrics.jsonl: cannot write");
  auto emit = [&](const json& j) { metrics << j.dump() << "\n" << std::flush; };
  const bool tty = opt.progress && isatty(fileno(stdout));
  auto say = [&](const char* fmt, auto... args) {
    if (!opt.progress) return;
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
                                       spec.data().drop_last(), /*rank=*/0, /*world=*/1);
  const int64_t steps_per_epoch = sampler.steps_per_epoch();
  if (steps_per_epoch < 1)
    TESSERA_THROW(ConfigError, "data.batch_size ", spec.data().batch_size(), " with drop_last leaves no step in an epoch of ",
                  train_data->size(), " examples");
  const int64_t total_steps = t.steps() > 0 ? t.steps() : steps_per_epoch * t.epochs();
  std::unique_ptr<optim::LrSchedule> schedule = BuildSchedule(spec.optimizer(), total_steps);
  say("model: %lld parameters\n%s\n", static_cast<long long>(params.num_parameters()), net->Summary().c_str());
  say("train: %lld steps (%lld per epoch), global batch %lld, %d thread%s, seed %llu\n",
      static_cast<long long>(total_steps), static_cast<long long>(steps_per_epoch),
      static_cast<long long>(spec.data().batch_size()), t.threads(), t.threads() == 1 ? "" : "s",
      static_cast<unsigned long long>(t.seed()));

  datasets::Loader loader(*train_data, sampler, LoaderOptionsFor(spec, true));
  const datasets::LoaderOptions eval_norm = LoaderOptionsFor(spec, false);
  nn::CrossEntropyLoss loss_fn;
  const int accumulate = t.accumulate_steps();
  const double clip = spec.optimizer().clip_grad_norm();

  TrainSummary summary;
  summary.name = spec.name();
  MeanMetric window_loss, last_window;
  int64_t window_samples = 0, total_samples = 0;
  double train_seconds = 0;  // excludes evaluation
  auto t_window = Clock::now();
  EvalResult last_eval;
  auto run_eval = [&](int64_t step, int epoch) {
    auto t0 = Clock::now();
    last_eval = Evaluate(*net, *test_data, eval_norm, spec.data().eval_batch_size(), out_classes);
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

  int64_t step = 0;
  int epoch = 0;
  datasets::Batch batch;
  while (step < total_steps) {
    epoch = static_cast<int>(step / steps_per_epoch);
    loader.StartEpoch(epoch, step % steps_per_epoch);
    while (step < total_steps && loader.Next(&batch)) {
      const double lr = schedule->At(step);
      const int64_t n = batch.features.dim(0);
      params.ZeroGrad();
      double step_loss = 0;
      for (int k = 0; k < accumulate; ++k) {
        int64_t lo = n * k / accumulate, hi = n * (k + 1) / accumulate;
        if (lo == hi) continue;
        Tensor x = batch.features.Slice0(lo, hi), y = batch.labels.Slice0(lo, hi);
        const double w = static_cast<double>(hi - lo) / static_cast<double>(n);
        step_loss += w * loss_fn.Forward(net->Forward(x), y).Item();
        net->Backward(loss_fn.Backward(w));
      }
      if (!std::isfinite(step_loss))
        TESSERA_THROW(Error, "the training loss became ", step_loss, " at step ", step + 1,
                      "; lower optimizer.lr or set optimizer.clip_grad_norm");
      if (clip > 0) optim::ClipGradNorm(params.grads(), clip);
      optimizer->Step(lr);
      ++step;
      window_loss.Add(step_loss);
      window_samples += n;
      total_samples += n;
      const bool end_of_epoch = step % steps_per_epoch == 0;
      if (step % t.log_every_steps() == 0 || step == total_steps) {
        auto now = Clock::now();
        double dt = Seconds(t_window, now);
        train_seconds += dt;
        double sps = dt > 0 ? window_samples / dt : 0;
        double eta = train_seconds / step * (total_steps - step);
        emit({{"event", "train"}, {"step", step}, {"epoch", epoch + 1}, {"loss", window_loss.Mean()}, {"lr", lr},
              {"samples_per_sec", sps}, {"eta_seconds", eta}, {"elapsed_seconds", Seconds(t_start, now)}});
        if (opt.progress) {
          if (tty) std::printf("\r\033[K");
          std::printf("step %lld/%lld  epoch %d  loss %.4f  lr %.3g  %.0f samples/s  ETA %s%s",
                      static_cast<long long>(step), static_cast<long long>(total_steps), epoch + 1,
                      window_loss.Mean(), lr, sps, FormatDuration(eta).c_str(), tty ? "" : "\n");
          std::fflush(stdout);
        }
        last_window = window_loss;
        window_loss.Clear();
        window_samples = 0;
        t_window = Clock::now();
      }
      const bool eval_now = t.eval_every_steps() > 0 ? step % t.eval_every_steps() == 0 : end_of_epoch;
      if (eval_now && step < total_steps) {
        if (window_samples > 0) train_seconds += Seconds(t_window, Clock::now());
        if (tty) std::printf("\n");
        run_eval(step, epoch + 1);
      }
    }
  }
  if (tty) std::printf("\n");
  if (window_samples > 0) train_seconds += Seconds(t_window, Clock::now());
  run_eval(step, static_cast<int>((step - 1) / steps_per_epoch) + 1);

  summary.steps = step;
  summary.epochs_completed = static_cast<int>(step / steps_per_epoch);
  summary.final_train_loss = last_window.Mean();
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
  summary.samples_per_sec = train_seconds > 0 ? total_samples / train_seconds : 0;
  summary.wall_seconds = Seconds(t_start, Clock::now());

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
            {"world_size", 1},
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
