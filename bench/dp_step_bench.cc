// dp_step_bench: data-parallel training-step throughput of W1 and W2 (shared BENCHMARKS.md) under
// mpirun, the tessera side of bench/run_dp_bench.sh (its peer: bench/torch_ddp_step.py).
//
//   mpirun -np N build/bench/dp_step_bench --model w1|w2 [--per-rank-batch 128] [--threads 1]
//                                          [--warmup 20] [--steps 200] [--repeats 3] [--zero-stage 0]
//
// Every rank holds its own batch of `per-rank-batch` random samples, resident in memory (inputs
// uniform in [0, 1) like scaled Fashion-MNIST pixels, labels uniform in [0, 10), a different seed
// per rank). A step is the trainer's own step (dist::DataParallel::Step, also run by the
// data-parallel tests): forward, cross-entropy, backward with the loss scaled by 1 / N (so the sum
// over ranks is the global mean), the Reducer's bucketed all-reduce started from the gradient
// hooks, the finite check of the reduced gradient, Adam(lr 1e-3), and under --zero-stage 1 or 2
// the sharded update and all-gather. Parameters start equal on every rank (Join's broadcast).
// With N = 1 there is no group traffic: the Reducer is not installed (a single-rank run is plain
// training, the baseline for the scaling efficiency).
//
// Timing: each repeat is a barrier, `steps` steps, a barrier; the repeat's time is the slowest
// rank's (MPI_MAX). samples_per_sec is global: N * per-rank-batch * steps / time. The JSON line
// (rank 0) reports the median repeat, min and max.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/models.h"
#include "core/nn/loss.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "dist/mpi/runtime.h"
#include "dist/data_parallel.h"

namespace tessera::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  int per_rank_batch = 128;
  int threads = 1;
  int warmup = 20;
  int steps = 200;
  int repeats = 3;
  double bucket_mb = 25;  // the Reducer's default
  int zero_stage = 0;
};

int ParseInt(const std::string& flag, const char* value, int min) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < min)
    TESSERA_THROW(ConfigError, flag, ": expected an integer >= ", min, ", got '", value, "'");
  return static_cast<int>(v);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) TESSERA_THROW(ConfigError, a, " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--per-rank-batch") o.per_rank_batch = ParseInt(a, value(), 1);
    else if (a == "--threads") o.threads = ParseInt(a, value(), 1);
    else if (a == "--warmup") o.warmup = ParseInt(a, value(), 0);
    else if (a == "--steps") o.steps = ParseInt(a, value(), 1);
    else if (a == "--repeats") o.repeats = ParseInt(a, value(), 1);
    else if (a == "--zero-stage") o.zero_stage = ParseInt(a, value(), 0);
    else if (a == "--bucket-mb") {
      const char* v = value();
      char* end = nullptr;
      o.bucket_mb = std::strtod(v, &end);
      if (end == v || *end != '\0' || !(o.bucket_mb > 0))
        TESSERA_THROW(ConfigError, "--bucket-mb: expected a number > 0, got '", v, "'");
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: mpirun -np N dp_step_bench --model w1|w2 [--per-rank-batch 128] [--threads 1]\n"
          "                                  [--warmup 20] [--steps 200] [--repeats 3] [--bucket-mb 25]\n"
          "                                  [--zero-stage 0|1|2]\n");
      std::exit(0);
    } else {
      TESSERA_THROW(ConfigError, "unknown argument '", a, "' (try --help)");
    }
  }
  if (o.model != "w1" && o.model != "w2") TESSERA_THROW(ConfigError, "--model must be w1 or w2, got '", o.model, "'");
  return o;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void Run(const Options& o, dist::ProcessGroup& world) {
  const int n = world.size(), rank = world.rank();
  auto net = o.model == "w1" ? models::BuildMlp(models::MlpConfig{}) : models::BuildCnn(models::CnnConfig{});
  net->set_needs_input_grad(false);
  dist::DataParallel::Options dpo;
  dpo.zero_stage = o.zero_stage;
  dpo.bucket_mb = o.bucket_mb;
  dist::DataParallel dp(*net, /*seed=*/0, &world, dpo,
                        [](const Tensor& v, const Tensor& g) { return std::make_unique<optim::Adam>(v, g); });
  dp.Join();
  nn::FlatParameters& params = dp.params();
  nn::CrossEntropyLoss loss;

  Tensor x = Tensor::Empty({o.per_rank_batch, 1, 28, 28});
  PhiloxGenerator gen(/*seed=*/1234, /*stream=*/static_cast<uint64_t>(rank));
  float* xp = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) xp[i] = static_cast<float>(gen.Uniform());
  Tensor y = Tensor::Empty({o.per_rank_batch}, DType::kI32);
  int32_t* yp = y.data<int32_t>();
  for (int i = 0; i < o.per_rank_batch; ++i) yp[i] = static_cast<int32_t>(gen.Below(10));

  const double scale = 1.0 / n;
  Tensor last;
  int64_t steps_done = 0;
  auto step = [&] {
    dp.Step(
        1,
        [&](int) -> std::optional<double> {
          last = loss.Forward(net->Forward(x), y);
          net->Backward(loss.Backward(scale));
          return scale * last.Item();
        },
        /*clip_grad_norm=*/0, 1e-3, ++steps_done);
  };

  for (int i = 0; i < o.warmup; ++i) step();
  std::vector<double> sps, secs;
  for (int r = 0; r < o.repeats; ++r) {
    world.Barrier()->Wait();
    auto t0 = Clock::now();
    for (int i = 0; i < o.steps; ++i) step();
    world.Barrier()->Wait();
    double t = std::chrono::duration<double>(Clock::now() - t0).count(), worst = t;
    MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    secs.push_back(worst);
    sps.push_back(double(n) * o.per_rank_batch * o.steps / worst);
  }
  const double final_loss = last.Item();
  if (!std::isfinite(final_loss)) TESSERA_THROW(Error, "loss is not finite after training: ", final_loss);
  // The replicas must still agree after training (a cheap check that every step was reduced).
  double sum = 0;
  for (double v : params.values().ToVector()) sum += v;
  double lo = sum, hi = sum;
  MPI_Allreduce(&sum, &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&sum, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (lo != hi) TESSERA_THROW(Error, "replicas diverged: parameter sums range over [", lo, ", ", hi, "]");

  if (rank != 0) return;
  const double med = Median(sps);
  std::string runs;
  for (size_t i = 0; i < sps.size(); ++i) runs += (i ? ", " : "") + std::to_string(sps[i]);
  std::printf(
      "{\"kind\": \"dp_step\", \"impl\": \"tessera\", \"model\": \"%s\", \"ranks\": %d, \"threads\": %d, "
      "\"per_rank_batch\": %d, \"global_batch\": %d, \"warmup\": %d, \"steps\": %d, \"repeats\": %d, "
      "\"zero_stage\": %d, \"buckets\": %zu, \"bucket_mb\": %g, \"samples_per_sec\": %.1f, \"samples_per_sec_min\": %.1f, "
      "\"samples_per_sec_max\": %.1f, \"ms_per_step\": %.3f, \"final_loss\": %.4f, \"runs\": [%s]}\n",
      o.model.c_str(), n, GetNumThreads(), o.per_rank_batch, n * o.per_rank_batch, o.warmup, o.steps, o.repeats,
      dp.zero_stage(), dp.reducer() ? dp.reducer()->buckets().size() : size_t(0), o.bucket_mb, med,
      *std::min_element(sps.begin(), sps.end()), *std::max_element(sps.begin(), sps.end()),
      1e3 * n * o.per_rank_batch / med, final_loss, runs.c_str());
  std::fflush(stdout);
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  using namespace tessera;
  int status = 0;
  try {
    bench::Options o = bench::Parse(argc, argv);
    SetNumThreads(o.threads);
    dist::InitMpi(&argc, &argv);
    {
      auto world = dist::WorldGroup();
      bench::Run(o, *world);
    }
    dist::FinalizeMpi();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_step_bench: %s\n", e.what());
    status = 1;
    dist::AbortMpi(1);  // other ranks may wait in a collective; returns when MPI is not initialised
  }
  return status;
}
