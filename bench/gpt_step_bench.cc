// GPT training-step throughput on the CPU (bench/run_gpt_bench.sh; peer: bench/torch_gpt_step.py).
//
// A step: zero the gradients, forward over a resident batch of token windows, cross-entropy over
// every position, backward, AdamW. Prints one JSON line with the median step time and tokens/s.
//
//   gpt_step_bench [--threads N] [--warmup 10] [--steps 50] [--layers 4] [--heads 4] [--width 128]
//                  [--context 128] [--vocab 256] [--batch 32]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/models.h"
#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"

namespace tessera::bench {
namespace {

struct Options {
  int threads = 1, warmup = 10, steps = 50;
  models::GptConfig gpt;
  int64_t batch = 32;
};

Options Parse(int argc, char** argv) {
  Options o;
  o.gpt.layers = 4;
  o.gpt.heads = 4;
  o.gpt.width = 128;
  o.gpt.context = 128;
  o.gpt.vocab = 256;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) TESSERA_THROW(ConfigError, "gpt_step_bench: ", a, " needs a value");
    const long long v = std::atoll(argv[++i]);
    if (a == "--threads")
      o.threads = static_cast<int>(v);
    else if (a == "--warmup")
      o.warmup = static_cast<int>(v);
    else if (a == "--steps")
      o.steps = static_cast<int>(v);
    else if (a == "--layers")
      o.gpt.layers = v;
    else if (a == "--heads")
      o.gpt.heads = v;
    else if (a == "--width")
      o.gpt.width = v;
    else if (a == "--context")
      o.gpt.context = v;
    else if (a == "--vocab")
      o.gpt.vocab = v;
    else if (a == "--batch")
      o.batch = v;
    else
      TESSERA_THROW(ConfigError, "gpt_step_bench: unknown option ", a);
  }
  if (o.threads < 1 || o.steps < 1 || o.warmup < 0 || o.batch < 1)
    TESSERA_THROW(ConfigError, "gpt_step_bench: threads, steps and batch must be >= 1");
  return o;
}

void Run(const Options& o) {
  SetNumThreads(o.threads);
  auto net = models::BuildGpt(o.gpt);
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 1);
  optim::AdamOptions ao;
  ao.weight_decay = 0.1;
  optim::AdamW opt(params.values(), params.grads(), ao);
  nn::CrossEntropyLoss loss;
  // One resident batch of random windows and their next tokens.
  const int64_t t = o.gpt.context, n = o.batch * t;
  PhiloxGenerator gen(3);
  std::vector<double> stream(static_cast<size_t>(n + 1));
  for (double& v : stream) v = static_cast<double>(gen.Below(static_cast<uint64_t>(o.gpt.vocab)));
  const Tensor x = Tensor::FromVector({stream.begin(), stream.end() - 1}, {o.batch, t}, DType::kI32);
  const Tensor y = Tensor::FromVector({stream.begin() + 1, stream.end()}, {o.batch, t}, DType::kI32);
  std::vector<double> seconds;
  double last = 0;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    auto t0 = Clock::now();
    params.ZeroGrad();
    last = loss.Forward(net->Forward(x), y).Item();
    net->Backward(loss.Backward());
    opt.Step(3e-4);
    if (s >= o.warmup) seconds.push_back(Seconds(t0, Clock::now()));
  }
  const double median = Median(seconds);
  std::printf(
      "{\"impl\": \"tessera\", \"threads\": %d, \"layers\": %lld, \"heads\": %lld, \"width\": %lld, "
      "\"context\": "
      "%lld, \"vocab\": %lld, \"batch\": %lld, \"parameters\": %lld, \"steps\": %d, \"step_ms_median\": "
      "%.3f, "
      "\"step_ms_min\": %.3f, \"tokens_per_sec\": %.1f, \"final_loss\": %.5f}\n",
      o.threads, static_cast<long long>(o.gpt.layers), static_cast<long long>(o.gpt.heads),
      static_cast<long long>(o.gpt.width), static_cast<long long>(t), static_cast<long long>(o.gpt.vocab),
      static_cast<long long>(o.batch), static_cast<long long>(net->NumParameters()), o.steps, 1e3 * median,
      1e3 * Min(seconds), static_cast<double>(n) / median, last);
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  try {
    tessera::bench::Run(tessera::bench::Parse(argc, argv));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_step_bench: %s\n", e.what());
    return 1;
  }
}
