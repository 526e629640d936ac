// gpt_layout_bench: step time of the same GPT on one layout, under mpirun (bench/run_gpt_layout_bench.sh).
//
//   mpirun -np N build/bench/gpt_layout_bench --layout data|tensor [--threads 1] [--warmup 5] [--steps 20]
//
// The GPT of the fortunes example (4 layers, 4 heads, width 128, context 128, vocabulary 256) on a
// global batch of 32 windows of 128 random tokens, resident in memory, with Adam:
//   data:   each of N ranks takes 32 / N windows; the trainer's step (dist::DataParallel: the
//           Reducer's bucketed all-reduce during backward). N = 1 is one process.
//   tensor: every rank takes all 32 windows; the GPT is split across the N ranks
//           (dist/tensor_parallel_gpt.h: heads, MLP features and vocabulary), two all-reduces a
//           block each way and the vocabulary-parallel loss.
// The step time is the slowest rank's median over the timed steps (each step ends with a barrier).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"
#include "dist/data_parallel.h"
#include "dist/mpi/runtime.h"
#include "dist/tensor_parallel_gpt.h"

namespace tessera::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kBatch = 32;

struct Options {
  std::string layout;
  int threads = 1, warmup = 5, steps = 20;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--layout") o.layout = argv[i + 1];
    else if (a == "--threads") o.threads = std::atoi(argv[i + 1]);
    else if (a == "--warmup") o.warmup = std::atoi(argv[i + 1]);
    else if (a == "--steps") o.steps = std::atoi(argv[i + 1]);
    else TESSERA_THROW(ConfigError, "gpt_layout_bench: unknown option ", a);
  }
  if (o.layout != "data" && o.layout != "tensor") TESSERA_THROW(ConfigError, "gpt_layout_bench: --layout data|tensor");
  if (o.threads < 1 || o.steps < 1 || o.warmup < 0) TESSERA_THROW(ConfigError, "gpt_layout_bench: bad counts");
  return o;
}

models::GptConfig Gpt() {
  models::GptConfig c;
  c.layers = 4;
  c.heads = 4;
  c.width = 128;
  c.context = 128;
  c.vocab = 256;
  return c;
}

// Windows [first, first + n) of one random global batch and their next tokens.
std::pair<Tensor, Tensor> Windows(int64_t first, int64_t n, int64_t t, int64_t vocab) {
  PhiloxGenerator g(3);
  std::vector<double> v(static_cast<size_t>(kBatch * t + 1));
  for (double& x : v) x = static_cast<double>(g.Below(static_cast<uint64_t>(vocab)));
  auto slice = [&](int64_t shift) {
    return Tensor::FromVector({v.begin() + first * t + shift, v.begin() + (first + n) * t + shift}, {n, t},
                              DType::kI32);
  };
  return {slice(0), slice(1)};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Times `step` (each ending with a barrier): the slowest rank's median step.
template <typename Step>
double Time(const Options& o, dist::ProcessGroup& world, Step step) {
  std::vector<double> secs;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    auto t0 = Clock::now();
    step();
    world.Barrier()->Wait();
    if (s >= o.warmup) secs.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  double mine = Median(secs), worst = mine;
  MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

double RunData(const Options& o, dist::ProcessGroup& world) {
  const models::GptConfig c = Gpt();
  const int n = world.size();
  auto net = models::BuildGpt(c);
  net->set_needs_input_grad(false);
  dist::DataParallel dp(*net, 1, n > 1 ? &world : nullptr, dist::DataParallel::Options{},
                        [](const Tensor& v, const Tensor& g) { return std::make_unique<optim::Adam>(v, g); });
  dp.Join();
  const int64_t first = kBatch * world.rank() / n, local = kBatch * (world.rank() + 1) / n - first;
  const std::pair<Tensor, Tensor> xy = Windows(first, local, c.context, c.vocab);  // captured below: no bindings
  const Tensor &x = xy.first, &y = xy.second;
  nn::CrossEntropyLoss ce;
  int64_t step = 0;
  const double share = static_cast<double>(local) / kBatch;
  return Time(o, world, [&] {
    dp.Step(
        1,
        [&](int) -> std::optional<double> {
          const double l = share * ce.Forward(net->Forward(x), y).Item();
          net->Backward(ce.Backward(share));
          return l;
        },
        0, 3e-4, ++step);
  });
}

double RunTensor(const Options& o, dist::ProcessGroup& world) {
  const models::GptConfig c = Gpt();
  const dist::TensorGroup tg{&world, 300};
  auto net = dist::BuildTensorParallelGpt(c, tg);
  net->set_needs_input_grad(false);
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, 1);
  optim::Adam opt(p.values(), p.grads());
  dist::VocabParallelCrossEntropy ce(tg);
  const std::pair<Tensor, Tensor> xy = Windows(0, kBatch, c.context, c.vocab);
  const Tensor &x = xy.first, &y = xy.second;
  return Time(o, world, [&] {
    p.ZeroGrad();
    ce.Forward(net->Forward(x), y);
    net->Backward(ce.Backward());
    opt.Step(3e-4);
  });
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
      const double s = o.layout == "data" ? bench::RunData(o, *world) : bench::RunTensor(o, *world);
      if (world->rank() == 0)
        std::printf("{\"layout\": \"%s\", \"ranks\": %d, \"threads\": %d, \"step_ms\": %.2f, \"tokens_per_sec\": %.0f}\n",
                    o.layout.c_str(), world->size(), o.threads, 1e3 * s, bench::kBatch * 128 / s);
    }
    dist::FinalizeMpi();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_layout_bench: %s\n", e.what());
    status = 1;
    dist::AbortMpi(1);
  }
  return status;
}
