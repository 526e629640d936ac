// step_bench: training-step throughput of W1 and W2 (see shared BENCHMARKS.md) and the sgemm
// ceilings of W4 (OpenBLAS, and oneDNN where tessera is built with it), so that the driver
// (bench/run_core_bench.sh) measures throughput and ceilings on the same machine state.
//
//   step_bench --model w1|w2 [--threads N] [--warmup 20] [--steps 200] [--repeats 3]
//              [--breakdown]
//   step_bench --sgemm-peak [--threads N]
//
// Each measurement prints one JSON line on stdout; --breakdown adds a per-phase, per-layer line
// (and a readable table on stderr). A step is ZeroGrad, forward, cross-entropy forward and
// backward, model backward and Adam(lr 1e-3), on one batch resident in memory.
//
// FLOPs per step count only the matrix products, analytically from the layer shapes: forward
// 2*M*N*K per Linear/Conv2d, backward twice that (weight and input gradients) minus the input
// gradient of the first parametric layer, which a data input does not need. Bias, activation,
// pooling, loss and optimizer work is not counted.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/models.h"
#include "core/nn/layers.h"
#include "core/nn/loss.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace tessera::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Options {
  std::string model;  // "w1" or "w2"; empty with --sgemm-peak only
  int threads = 1;
  int warmup = 20;
  int steps = 200;
  int repeats = 3;
  int batch = 128;
  bool sgemm_peak = false;
  bool breakdown = false;
};

int ParseInt(const char* flag, const char* value, int min) {
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
    else if (a == "--threads") o.threads = ParseInt("--threads", value(), 1);
    else if (a == "--warmup") o.warmup = ParseInt("--warmup", value(), 0);
    else if (a == "--steps") o.steps = ParseInt("--steps", value(), 1);
    else if (a == "--repeats") o.repeats = ParseInt("--repeats", value(), 1);
    else if (a == "--batch") o.batch = ParseInt("--batch", value(), 1);
    else if (a == "--sgemm-peak") o.sgemm_peak = true;
    else if (a == "--breakdown") o.breakdown = true;
    else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: step_bench --model w1|w2 [--threads N] [--warmup 20] [--steps 200] [--repeats 3]\n"
          "                  [--batch 128] [--breakdown]\n"
          "       step_bench --sgemm-peak [--threads N]\n");
      std::exit(0);
    } else {
      TESSERA_THROW(ConfigError, "unknown argument '", a, "' (try --help)");
    }
  }
  if (!o.sgemm_peak && o.model != "w1" && o.model != "w2")
    TESSERA_THROW(ConfigError, "--model must be w1 or w2 (or pass --sgemm-peak), got '", o.model, "'");
  return o;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---- sgemm ceiling ------------------------------------------------------------------------------

// Times `call` (one n x n x n sgemm) after one warm-up call; prints best and median GFLOP/s.
template <typename Call>
void TimeSgemm(const char* impl, int threads, int n, Call call) {
  call();  // warm-up: thread start, page faults, packing buffers, JIT
  const int reps = n <= 1024 ? 10 : 5;
  std::vector<double> gflops;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    call();
    auto t1 = Clock::now();
    gflops.push_back(2.0 * n * double(n) * n / Seconds(t0, t1) / 1e9);
  }
  std::printf(
      "{\"kind\": \"sgemm\", \"impl\": \"%s\", \"threads\": %d, \"n\": %d, \"reps\": %d, "
      "\"gflops_best\": %.2f, \"gflops_median\": %.2f}\n",
      impl, threads, n, reps, *std::max_element(gflops.begin(), gflops.end()), Median(gflops));
  std::fflush(stdout);
}

// The machine's ceilings at `threads` threads: OpenBLAS with that many threads of its own (tessera
// keeps OpenBLAS on one thread and splits GEMMs over its pool, so OpenBLAS's count is set here for
// the measurement and restored after it), and oneDNN's sgemm on tessera's thread count.
void SgemmPeak(int threads) {
  for (int n : {1024, 2048}) {
    std::vector<float> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n, 0.f);
    PhiloxGenerator gen(7, n);
    for (auto& e : a) e = static_cast<float>(gen.Uniform(-1, 1));
    for (auto& e : b) e = static_cast<float>(gen.Uniform(-1, 1));
    const int saved = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    TimeSgemm("openblas", threads, n, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                  0.0f, c.data(), n);
    });
    openblas_set_num_threads(saved);
#if TESSERA_USE_ONEDNN
    TimeSgemm("onednn", threads, n, [&] {
      if (dnnl_sgemm('N', 'N', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n) != dnnl_success)
        TESSERA_THROW(Error, "dnnl_sgemm failed for n=", n);
    });
#endif
  }
}

// ---- training step ------------------------------------------------------------------------------

struct LayerCost {
  std::string name;      // "3:Linear(in=512, out=256, bias=true)"
  double fwd_flops = 0;  // matrix-product FLOPs of the forward
  double dw_flops = 0;   // weight gradient
  double dx_flops = 0;   // input gradient (0 for the first parametric layer, by the rule above)
  bool first_param = false;
};

// Walks the children once in eval mode (nothing saved) to read the shapes each layer sees.
std::vector<LayerCost> CountFlops(nn::Sequential& model, const Tensor& x) {
  std::vector<LayerCost> costs;
  model.SetTraining(false);
  Tensor h = x;
  bool seen_param = false;
  for (size_t i = 0; i < model.size(); ++i) {
    nn::Module& m = model[i];
    Tensor y = m.Forward(h);
    LayerCost c;
    c.name = std::to_string(i) + ":" + m.Describe();
    double mac = 0;
    if (auto* lin = dynamic_cast<nn::Linear*>(&m)) {
      const Shape& w = lin->weight().shape;  // [out, in]
      double rows = double(y.numel()) / w[0];
      mac = rows * w[0] * w[1];
    } else if (auto* conv = dynamic_cast<nn::Conv2d*>(&m)) {
      const Shape& w = conv->weight().shape;  // [K, C, R, S]; y [N, K, P, Q]
      mac = double(y.numel()) * w[1] * w[2] * w[3];
    }
    if (mac > 0) {
      c.fwd_flops = c.dw_flops = 2 * mac;
      c.first_param = !seen_param;
      c.dx_flops = seen_param ? 2 * mac : 0;
      seen_param = true;
    }
    costs.push_back(c);
    h = y;
  }
  model.SetTraining(true);
  return costs;
}

// Index of the first Linear or Conv2d (model.size() if none).
size_t FirstParametricLayer(nn::Sequential& model) {
  for (size_t i = 0; i < model.size(); ++i)
    if (dynamic_cast<nn::Linear*>(&model[i]) || dynamic_cast<nn::Conv2d*>(&model[i])) return i;
  return model.size();
}

struct Bench {
  std::unique_ptr<nn::Sequential> model;
  std::unique_ptr<nn::FlatParameters> params;
  std::unique_ptr<optim::Adam> adam;
  nn::CrossEntropyLoss loss;
  Tensor x, labels;
  double last_loss = 0;

  void Step() {
    params->ZeroGrad();
    Tensor logits = model->Forward(x);
    last_loss = loss.Forward(logits, labels).Item();
    model->Backward(loss.Backward());
    adam->Step(1e-3);
  }
};

// Same step as Bench::Step, with a clock read between phases and around every layer. Like
// Sequential::Backward without an input gradient, backward stops at the first parametric layer.
struct Breakdown {
  size_t stop = 0;
  double zero = 0, loss = 0, optim = 0;
  std::vector<double> fwd, bwd;  // per child
  int steps = 0;

  void Step(Bench& b) {
    nn::Sequential& m = *b.model;
    if (fwd.empty()) fwd.assign(m.size(), 0), bwd.assign(m.size(), 0);
    auto t = Clock::now();
    auto lap = [&t] {
      auto now = Clock::now();
      double s = Seconds(t, now);
      t = now;
      return s;
    };
    b.params->ZeroGrad();
    zero += lap();
    Tensor h = b.x;
    for (size_t i = 0; i < m.size(); ++i) {
      h = m[i].Forward(h);
      fwd[i] += lap();
    }
    b.last_loss = b.loss.Forward(h, b.labels).Item();
    Tensor g = b.loss.Backward();
    loss += lap();
    for (size_t i = m.size(); i-- > stop;) {
      g = m[i].Backward(g);
      bwd[i] += lap();
    }
    b.adam->Step(1e-3);
    optim += lap();
    ++steps;
  }
};

void Run(const Options& o) {
  Bench b;
  b.model = o.model == "w1" ? models::BuildMlp(models::MlpConfig{}) : models::BuildCnn(models::CnnConfig{});
  b.params = std::make_unique<nn::FlatParameters>(*b.model, Device::CPU(), DType::kF32, /*seed=*/0);
  b.params->ZeroGrad();
  b.model->set_needs_input_grad(false);
  const size_t first_index = FirstParametricLayer(*b.model);
  TESSERA_CHECK(first_index < b.model->size());
  nn::Module* first = &(*b.model)[first_index];
  // Whether tessera actually skips the first layer's input gradient with the API as used above.
  const bool first_dx_skipped = !first->needs_input_grad();
  b.adam = std::make_unique<optim::Adam>(b.params->values(), b.params->grads());

  // Inputs in [0, 1) like scaled Fashion-MNIST pixels; labels uniform in [0, 10).
  b.x = Tensor::Empty({o.batch, 1, 28, 28});
  PhiloxGenerator gen(/*seed=*/1234);
  float* xp = b.x.data<float>();
  for (int64_t i = 0; i < b.x.numel(); ++i) xp[i] = static_cast<float>(gen.Uniform());
  b.labels = Tensor::Empty({o.batch}, DType::kI32);
  int32_t* lp = b.labels.data<int32_t>();
  for (int i = 0; i < o.batch; ++i) lp[i] = static_cast<int32_t>(gen.Below(10));

  std::vector<LayerCost> costs = CountFlops(*b.model, b.x);
  double flops = 0, first_dx_flops = 0;
  for (const auto& c : costs) {
    flops += c.fwd_flops + c.dw_flops + c.dx_flops;
    if (c.first_param) first_dx_flops = c.fwd_flops;
  }
  // FLOPs tessera executes: the first layer's input gradient too, unless it skips it.
  const double executed = flops + (first_dx_skipped ? 0 : first_dx_flops);

  for (int i = 0; i < o.warmup; ++i) b.Step();
  std::vector<double> sps;  // samples per second, one per repeat
  for (int r = 0; r < o.repeats; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < o.steps; ++i) b.Step();
    auto t1 = Clock::now();
    sps.push_back(double(o.batch) * o.steps / Seconds(t0, t1));
  }
  if (!std::isfinite(b.last_loss)) TESSERA_THROW(Error, "loss is not finite after training: ", b.last_loss);
  const double med = Median(sps);
  const double steps_per_s = med / o.batch;
  std::string runs;
  for (size_t i = 0; i < sps.size(); ++i) runs += (i ? ", " : "") + std::to_string(sps[i]);
  std::printf(
      "{\"kind\": \"step\", \"impl\": \"tessera\", \"model\": \"%s\", \"threads\": %d, \"batch\": %d, "
      "\"warmup\": %d, \"steps\": %d, \"repeats\": %d, \"samples_per_sec\": %.1f, "
      "\"samples_per_sec_min\": %.1f, \"samples_per_sec_max\": %.1f, \"ms_per_step\": %.3f, "
      "\"flops_per_step\": %.0f, \"gflops\": %.2f, \"first_dx_skipped\": %s, "
      "\"flops_executed_per_step\": %.0f, \"final_loss\": %.4f, \"runs\": [%s]}\n",
      o.model.c_str(), o.threads, o.batch, o.warmup, o.steps, o.repeats, med,
      *std::min_element(sps.begin(), sps.end()), *std::max_element(sps.begin(), sps.end()),
      1e3 / steps_per_s, flops, flops * steps_per_s / 1e9, first_dx_skipped ? "true" : "false",
      executed, b.last_loss, runs.c_str());
  std::fflush(stdout);

  if (!o.breakdown) return;
  Breakdown bd;
  bd.stop = first_index;
  for (int i = 0; i < o.steps; ++i) bd.Step(b);
  const double per = 1e3 / bd.steps;  // seconds total -> ms per step
  double fwd = 0, bwd = 0;
  for (double s : bd.fwd) fwd += s;
  for (double s : bd.bwd) bwd += s;
  const double total = bd.zero + fwd + bd.loss + bwd + bd.optim;
  std::string layers;
  std::fprintf(stderr, "\n%s, %d thread(s): %.3f ms/step with per-layer clocks\n", o.model.c_str(),
               o.threads, total * per);
  std::fprintf(stderr, "  %-52s %9s %9s %8s %8s\n", "layer", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s");
  for (size_t i = 0; i < costs.size(); ++i) {
    const LayerCost& c = costs[i];
    double bwd_flops = c.dw_flops + (first_dx_skipped || !c.first_param ? c.dx_flops : c.fwd_flops);
    double fg = c.fwd_flops > 0 ? c.fwd_flops / (bd.fwd[i] / bd.steps) / 1e9 : 0;
    double bg = bwd_flops > 0 ? bwd_flops / (bd.bwd[i] / bd.steps) / 1e9 : 0;
    std::fprintf(stderr, "  %-52s %9.3f %9.3f %8.1f %8.1f\n", c.name.c_str(), bd.fwd[i] * per,
                 bd.bwd[i] * per, fg, bg);
    layers += detail::StrCat(i ? ", " : "", "{\"layer\": \"", c.name, "\", \"fwd_ms\": ", bd.fwd[i] * per,
                             ", \"bwd_ms\": ", bd.bwd[i] * per, ", \"fwd_flops\": ", c.fwd_flops,
                             ", \"bwd_flops_executed\": ", bwd_flops, "}");
  }
  std::fprintf(stderr, "  zero_grad %.3f  forward %.3f  loss %.3f  backward %.3f  adam %.3f (ms)\n",
               bd.zero * per, fwd * per, bd.loss * per, bwd * per, bd.optim * per);
  std::printf(
      "{\"kind\": \"breakdown\", \"impl\": \"tessera\", \"model\": \"%s\", \"threads\": %d, \"steps\": %d, "
      "\"ms_per_step\": %.3f, \"zero_grad_ms\": %.3f, \"forward_ms\": %.3f, \"loss_ms\": %.3f, "
      "\"backward_ms\": %.3f, \"optimizer_ms\": %.3f, \"layers\": [%s]}\n",
      o.model.c_str(), o.threads, bd.steps, total * per, bd.zero * per, fwd * per, bd.loss * per,
      bwd * per, bd.optim * per, layers.c_str());
  std::fflush(stdout);
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  try {
    tessera::bench::Options o = tessera::bench::Parse(argc, argv);
    tessera::SetNumThreads(o.threads);
    if (o.sgemm_peak) tessera::bench::SgemmPeak(o.threads);
    if (!o.model.empty()) tessera::bench::Run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "step_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
