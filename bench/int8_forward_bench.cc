// The forward pass of a store version, in process: what one batch costs the server's worker with
// HTTP left out (bench/run_quantize_bench.sh runs it on an f32 version and its int8 copy).
//
//   int8_forward_bench --store ROOT --model M --version V [--batch 1,64] [--reps 200] [--threads 1]
//
// The network is built from the version's architecture and its weights read as the server reads
// them; inputs are Fashion-MNIST-shaped noise in [0, 1] (timing does not depend on the values).
// Prints one JSON line per batch size: the median, p10 and p90 of `reps` timed forwards after
// `reps / 10` untimed ones.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/nn/quantized.h"
#include "core/ops/cpu/int8.h"
#include "core/threads.h"
#include "store/store.h"

using namespace tessera;

namespace {

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return fallback;
}

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string root = Arg(argc, argv, "--store", ""), model = Arg(argc, argv, "--model", "");
  const int64_t version = std::stoll(Arg(argc, argv, "--version", "1"));
  const int reps = std::stoi(Arg(argc, argv, "--reps", "200"));
  SetNumThreads(std::stoi(Arg(argc, argv, "--threads", "1")));
  std::vector<int64_t> batches;
  for (std::string s = Arg(argc, argv, "--batch", "1,64"); !s.empty();) {
    size_t comma = s.find(',');
    batches.push_back(std::stoll(s.substr(0, comma)));
    s = comma == std::string::npos ? "" : s.substr(comma + 1);
  }
  store::Store st(root);
  const store::Architecture arch = st.ReadArchitecture(model, version);
  std::unique_ptr<nn::Sequential> net = store::BuildNetwork(arch);
  st.LoadInto(model, version, *net);
  net->SetTraining(false);
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(0, 1);
  for (int64_t b : batches) {
    Shape shape{b};
    shape.insert(shape.end(), arch.input_shape().begin(), arch.input_shape().end());
    Tensor x = Tensor::Empty(shape);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = u(gen);
    std::vector<double> ms;
    for (int r = 0; r < reps + reps / 10; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      Tensor y = net->Forward(x);
      double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (r >= reps / 10) ms.push_back(t);
    }
    nlohmann::json j = {{"model", model},
                        {"version", version},
                        {"quantization", store::Quantization_Name(arch.quantization())},
                        {"int8_backend", cpu::int8::Backend()},
                        {"batch", b},
                        {"threads", GetNumThreads()},
                        {"median_ms", Percentile(ms, 0.5)},
                        {"p10_ms", Percentile(ms, 0.1)},
                        {"p90_ms", Percentile(ms, 0.9)},
                        {"examples_per_s", static_cast<double>(b) * 1e3 / Percentile(ms, 0.5)}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "int8_forward_bench: %s\n", e.what());
  return 1;
}
