// ckpt_bench: checkpoint write and read throughput against dd on the same disk, in one run.
//
//   ckpt_bench --model w2|synthetic --dir DIR [--repeats 3] [--threads 1]
//
// w2 is the Fashion-MNIST CNN of BENCHMARKS.md with Adam (parameters, exp_avg, exp_avg_sq: about
// 5 MB); synthetic is an MLP of ten 2048x2048 Linear layers with Adam (about 500 MB in 60
// tensors). Each repeat, interleaved so both see the same disk state:
//   write  tessera: CheckpointWriter::Save + Wait -- the copy to host memory, the pwrite of every
//          byte, fdatasync, CRCs, attributes and manifest, fsync, reading everything back
//          through HDF5 to verify it, rename and directory fsyncs: a whole committed checkpoint.
//          dd: `dd if=/dev/zero of=DIR/dd.bin bs=4M count=BYTES iflag=count_bytes conv=fsync`.
//   read   tessera: LoadCheckpoint (every tensor read through HDF5 and its CRC checked) into a
//          fresh model, from a cold page cache (posix_fadvise DONTNEED after fsync).
//          dd: `dd if=DIR/dd.bin of=/dev/null bs=4M`, cold the same way.
// Prints one JSON line per model with the medians and the ratios, and the same for the best (fastest)
// repeat of each side: dd on this VM is bimodal (a page-cache effect), so its median can flatter.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/models.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"
#include "jobs/checkpoint.h"

namespace tessera::bench {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<nn::Sequential> Build(const std::string& model) {
  if (model == "w2") return models::BuildCnn({});
  if (model == "synthetic") {
    models::MlpConfig c;
    c.in_features = 2048;
    c.hidden.assign(9, 2048);
    c.out_features = 2048;
    return models::BuildMlp(c);
  }
  TESSERA_THROW(ValueError, "--model must be w2 or synthetic, got '", model, "'");
}

// A model with Adam state that is not all zeros: random gradients, a few steps.
struct State {
  std::unique_ptr<nn::Sequential> net;
  std::unique_ptr<nn::FlatParameters> params;
  std::unique_ptr<optim::Adam> adam;
  jobs::CheckpointLayout layout;
};
State MakeState(const std::string& model, uint64_t seed, int steps) {
  State s;
  s.net = Build(model);
  s.params = std::make_unique<nn::FlatParameters>(*s.net, Device::CPU(), DType::kF32, seed);
  s.adam = std::make_unique<optim::Adam>(s.params->values(), s.params->grads());
  PhiloxGenerator g(seed, 7);
  float* grad = s.params->grads().data<float>();
  for (int k = 0; k < steps; ++k) {
    for (const auto& e : s.params->entries())  // not the padding between parameters: it stays zero
      for (int64_t i = e.offset; i < e.offset + e.numel; ++i) grad[i] = static_cast<float>(g.Uniform() - 0.5);
    s.adam->Step(1e-3);
  }
  s.layout = jobs::MakeCheckpointLayout(*s.params, s.adam.get());
  return s;
}

int Run(int argc, char** argv) {
  std::string model = "w2", dir;
  int repeats = 3, threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) TESSERA_THROW(ValueError, a, " needs a value");
      return argv[++i];
    };
    if (a == "--model") model = next();
    else if (a == "--dir") dir = next();
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else TESSERA_THROW(ValueError, "unknown argument ", a, " (see the comment at the top of bench/ckpt_bench.cc)");
  }
  if (dir.empty()) TESSERA_THROW(ValueError, "--dir DIR is required (a directory on the disk to measure)");
  SetNumThreads(threads);
  fs::create_directories(dir);
  State src = MakeState(model, 1, 3);
  const std::string ckpt_dir = dir + "/checkpoints", dd_file = dir + "/dd.bin";
  std::vector<double> w_tessera, w_dd, r_tessera, r_dd, stall;
  int64_t bytes = 0;
  jobs::CheckpointMeta meta;
  meta.optimizer = "adam";
  meta.dtype = "float32";
  for (int rep = 0; rep < repeats; ++rep) {
    fs::remove_all(ckpt_dir);
    jobs::CheckpointWriterOptions wo;
    wo.dir = ckpt_dir;
    wo.keep_last = 1;
    jobs::CheckpointWriter writer(wo);
    meta.step = rep + 1;
    auto t0 = Clock::now();
    stall.push_back(writer.Save(src.layout, meta));
    writer.Wait();
    w_tessera.push_back(Seconds(t0, Clock::now()));
    auto reports = writer.TakeReports();
    if (reports.size() != 1) TESSERA_THROW(Error, "expected one save report, got ", reports.size());
    bytes = reports[0].bytes;
    const std::string file = reports[0].path;

    w_dd.push_back(TimeCommand("dd if=/dev/zero of=" + dd_file + " bs=4M count=" + std::to_string(bytes) +
                               " iflag=count_bytes conv=fsync status=none"));

    State dst = MakeState(model, 2, 0);
    DropCache(file);
    t0 = Clock::now();
    jobs::LoadCheckpoint(file, dst.layout);
    r_tessera.push_back(Seconds(t0, Clock::now()));
    if (std::memcmp(dst.params->values().raw_data(), src.params->values().raw_data(), src.params->values().nbytes()))
      TESSERA_THROW(Error, "the loaded parameters differ from the saved ones");
    DropCache(dd_file);
    r_dd.push_back(TimeCommand("dd if=" + dd_file + " of=/dev/null bs=4M status=none"));
    fs::remove(dd_file);
  }
  fs::remove_all(ckpt_dir);
  const double mb = bytes / 1e6;
  std::printf(
      "{\"model\": \"%s\", \"bytes\": %lld, \"tensors\": %zu, \"repeats\": %d, "
      "\"write_seconds\": %.4f, \"dd_write_seconds\": %.4f, \"write_mb_per_s\": %.1f, \"dd_write_mb_per_s\": %.1f, "
      "\"write_ratio\": %.3f, \"read_seconds\": %.4f, \"dd_read_seconds\": %.4f, \"read_mb_per_s\": %.1f, "
      "\"dd_read_mb_per_s\": %.1f, \"read_ratio\": %.3f, \"save_stall_seconds\": %.5f, "
      "\"best_write_seconds\": %.4f, \"best_dd_write_seconds\": %.4f, \"best_write_ratio\": %.3f, "
      "\"best_read_seconds\": %.4f, \"best_dd_read_seconds\": %.4f, \"best_read_ratio\": %.3f}\n",
      model.c_str(), static_cast<long long>(bytes), src.layout.entries.size(), repeats, Median(w_tessera), Median(w_dd),
      mb / Median(w_tessera), mb / Median(w_dd), Median(w_dd) / Median(w_tessera), Median(r_tessera), Median(r_dd),
      mb / Median(r_tessera), mb / Median(r_dd), Median(r_dd) / Median(r_tessera), Median(stall), Min(w_tessera),
      Min(w_dd), Min(w_dd) / Min(w_tessera), Min(r_tessera), Min(r_dd), Min(r_dd) / Min(r_tessera));
  auto list = [](const std::vector<double>& v) {
    std::string out;
    for (double x : v) out += (out.empty() ? "" : ", ") + std::to_string(x);
    return "[" + out + "]";
  };
  std::fprintf(stderr, "%s every repeat (s): write %s, dd write %s, read %s, dd read %s\n", model.c_str(),
               list(w_tessera).c_str(), list(w_dd).c_str(), list(r_tessera).c_str(), list(r_dd).c_str());
  return 0;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  try {
    return tessera::bench::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ckpt_bench: %s\n", e.what());
    return 1;
  }
}
