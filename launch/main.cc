// The `tessera` command.
//
//   tessera train JOB [--run-dir DIR] [--set FIELD=VALUE]...   run a job spec
//   tessera validate JOB [--set FIELD=VALUE]...                check a job spec, run nothing
//   tessera example [mlp|cnn]   train W1 / W2 on Fashion-MNIST straight through the C++ API
//   tessera --version
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>

#include "core/metrics.h"
#include "core/models.h"
#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"
#include "datasets/idx.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "tessera/config.h"

namespace tessera {
namespace {

struct ExampleOptions {
  std::string model = "cnn";
  std::string data_dir = datasets::kDefaultFashionMnistDir;
  int epochs = 3;
  int batch_size = 128;
  double lr = 1e-3;
  uint64_t seed = 0;
  int threads = 2;
  int64_t limit = 0;  // 0: the whole training set
  int log_every = 50;
};

std::string FormatDuration(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, t / 60 % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ds", t);
  return buf;
}

// Copies rows `order[begin, end)` of `src` (first dimension) into `dst`.
void Gather(const Tensor& src, const std::vector<int64_t>& order, int64_t begin, int64_t end, Tensor& dst) {
  int64_t row = src.numel() / src.dim(0);
  size_t bytes = static_cast<size_t>(row) * SizeOf(src.dtype());
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(dst.raw_data());
  for (int64_t i = begin; i < end; ++i) std::memcpy(d + (i - begin) * bytes, s + order[i] * bytes, bytes);
}

int RunExample(const ExampleOptions& o) {
  SetNumThreads(o.threads);
  auto t_load = std::chrono::steady_clock::now();
  datasets::ImageClassification train = datasets::LoadFashionMnist(o.data_dir, "train");
  datasets::ImageClassification test = datasets::LoadFashionMnist(o.data_dir, "t10k");
  int64_t n = train.images.dim(0);
  if (o.limit > 0 && o.limit < n) n = o.limit;
  std::printf("data: %lld training and %lld test images from %s (%.1f s)\n", static_cast<long long>(n),
              static_cast<long long>(test.images.dim(0)), o.data_dir.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());

  std::unique_ptr<nn::Sequential> net =
      o.model == "mlp" ? models::BuildMlp({}) : models::BuildCnn({});
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, o.seed);
  optim::Adam adam(params.values(), params.grads());
  nn::CrossEntropyLoss loss_fn;
  std::printf("model: %s, %lld parameters\n%s\n", o.model == "mlp" ? "W1 fmnist-mlp" : "W2 fmnist-cnn",
              static_cast<long long>(params.num_parameters()), net->Summary().c_str());
  std::printf("optimizer: adam lr=%g, batch %d, %d epochs, %d threads, seed %llu\n", o.lr, o.batch_size,
              o.epochs, o.threads, static_cast<unsigned long long>(o.seed));

  const bool tty = isatty(fileno(stdout));
  const int64_t steps_per_epoch = (n + o.batch_size - 1) / o.batch_size;
  const int64_t total_steps = steps_per_epoch * o.epochs;
  std::vector<int64_t> order(static_cast<size_t>(n));
  Shape img_shape = train.images.shape();
  auto t0 = std::chrono::steady_clock::now();
  auto t_window = t0;
  int64_t step = 0, window_samples = 0;
  MeanMetric window_loss;
  double last_loss = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    PhiloxGenerator shuffle(o.seed, 1000 + epoch);
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[shuffle.Below(i + 1)]);
    net->SetTraining(true);
    for (int64_t b = 0; b < n; b += o.batch_size) {
      int64_t e = std::min<int64_t>(n, b + o.batch_size);
      Tensor x = Tensor::Empty({e - b, img_shape[1], img_shape[2], img_shape[3]});
      Tensor y = Tensor::Empty({e - b}, DType::kI32);
      Gather(train.images, order, b, e, x);
      Gather(train.labels, order, b, e, y);
      params.ZeroGrad();
      Tensor loss = loss_fn.Forward(net->Forward(x), y);
      net->Backward(loss_fn.Backward());
      adam.Step(o.lr);
      ++step;
      window_samples += e - b;
      last_loss = loss.Item();
      window_loss.Add(last_loss);
      if (step % o.log_every == 0 || step == total_steps) {
        auto now = std::chrono::steady_clock::now();
        double dt = std::chrono::duration<double>(now - t_window).count();
        double elapsed = std::chrono::duration<double>(now - t0).count();
        double eta = elapsed / step * (total_steps - step);
        std::printf("%sstep %lld/%lld  epoch %d  loss %.4f  lr %.2g  %.0f samples/s  ETA %s%s",
                    tty ? "\r\033[K" : "", static_cast<long long>(step), static_cast<long long>(total_steps),
                    epoch + 1, window_loss.Mean(), o.lr, window_samples / dt, FormatDuration(eta).c_str(),
                    tty ? "" : "\n");
        std::fflush(stdout);
        t_window = now;
        window_samples = 0;
        window_loss.Clear();
      }
    }
  }
  double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tty) std::printf("\n");

  net->SetTraining(false);
  ConfusionMatrix cm(10);
  int64_t nt = test.images.dim(0);
  for (int64_t b = 0; b < nt; b += 1000) {
    int64_t e = std::min<int64_t>(nt, b + 1000);
    cm.AddLogits(net->Forward(test.images.Slice0(b, e)), test.labels.Slice0(b, e));
  }
  std::printf("trained %lld steps in %.1f s (%.0f samples/s); final train loss %.4f\n",
              static_cast<long long>(step), train_s, step ? (static_cast<double>(n) * o.epochs) / train_s : 0.0,
              last_loss);
  std::printf("test accuracy %.4f  macro precision %.4f  recall %.4f  F1 %.4f\n", cm.Accuracy(),
              cm.MacroPrecision(), cm.MacroRecall(), cm.MacroF1());
  return 0;
}

std::string DefaultRunDir(const std::string& name) {
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + name + "-" + stamp;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  using namespace tessera;
  CLI::App app{"tessera: train neural networks on one machine or a cluster (CPU and CUDA)"};
  app.set_version_flag("--version", std::string("tessera ") + TESSERA_VERSION +
                                        " (CUDA " + (TESSERA_USE_CUDA ? "on" : "off") + ", MPI " +
                                        (TESSERA_USE_MPI ? "on" : "off") + ")");
  app.require_subcommand(1);

  ExampleOptions ex;
  CLI::App* example = app.add_subcommand(
      "example", "Train a reference model on Fashion-MNIST through the C++ API and print test metrics");
  example->add_option("model", ex.model, "mlp (W1: 784-512-256-10) or cnn (W2: two conv blocks, 128 hidden)")
      ->check(CLI::IsMember({"mlp", "cnn"}))
      ->capture_default_str();
  example->add_option("--data-dir", ex.data_dir, "Directory with the Fashion-MNIST IDX files (.gz)")
      ->capture_default_str();
  example->add_option("--epochs", ex.epochs, "Passes over the training set")->check(CLI::PositiveNumber)->capture_default_str();
  example->add_option("--batch-size", ex.batch_size, "Samples per step")->check(CLI::PositiveNumber)->capture_default_str();
  example->add_option("--lr", ex.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  example->add_option("--seed", ex.seed, "Seed for initialisation and shuffling")->capture_default_str();
  example->add_option("--threads", ex.threads, "Intra-op threads (bounds every pool, OpenBLAS's included)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  example->add_option("--limit", ex.limit, "Use only the first N training images (0: all)")->capture_default_str();
  example->add_option("--log-every", ex.log_every, "Steps between progress lines")->check(CLI::PositiveNumber)->capture_default_str();

  std::string job_path, run_dir;
  std::vector<std::string> overrides;
  CLI::App* train = app.add_subcommand("train", "Run a job spec (protobuf text) and write a run directory");
  train->add_option("job", job_path, "Job spec file, e.g. jobs/examples/fmnist_cnn.pbtxt")->required();
  train->add_option("--run-dir", run_dir,
                    "Where job.pbtxt, metrics.jsonl and summary.json go (default: runs/NAME-YYYYmmdd-HHMMSS)");
  train->add_option("--set", overrides, "Override a field of the spec: --set train.epochs=1 --set optimizer.lr=0.01")
      ->type_name("FIELD=VALUE");
  bool no_file_check = false;
  CLI::App* validate = app.add_subcommand("validate", "Check a job spec (and overrides) without running it");
  validate->add_option("job", job_path, "Job spec file")->required();
  validate->add_option("--set", overrides, "Override a field of the spec, as for train")->type_name("FIELD=VALUE");
  validate->add_flag("--no-file-check", no_file_check, "Do not require the data files to exist");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*example) return RunExample(ex);
    if (*validate) {
      jobs::JobSpec spec = jobs::LoadJobSpec(job_path, overrides, !no_file_check);
      std::printf("%s: valid\n%s", job_path.c_str(), jobs::ToText(spec).c_str());
      return 0;
    }
    if (*train) {
      jobs::JobSpec spec = jobs::LoadJobSpec(job_path, overrides);
      jobs::TrainerOptions o;
      o.run_dir = run_dir.empty() ? DefaultRunDir(spec.name()) : run_dir;
      std::printf("tessera %s: job '%s', run directory %s\n", TESSERA_VERSION, spec.name().c_str(), o.run_dir.c_str());
      jobs::TrainSummary s = jobs::Train(spec, o);
      std::printf("done: %lld steps in %.1f s (%.0f samples/s); test accuracy %.4f, macro F1 %.4f\n",
                  static_cast<long long>(s.steps), s.wall_seconds, s.samples_per_sec, s.test_accuracy, s.test_f1);
      std::printf("summary: %s/summary.json\n", o.run_dir.c_str());
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "tessera: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
