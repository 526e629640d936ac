// store_bench: publishing and loading a model store version against plain copies of the same
// bytes on the same disk, in one run.
//
//   store_bench --dir DIR [--repeats 5] [--warmup 1] [--width 4096] [--layers 8]
//
// The model is an MLP of `layers` Linear layers of width x width (8 x 4096^2 floats: 537 MB of
// weights). Each repeat, interleaved so both sides see the same disk state:
//   publish  tessera: Store::Publish from the weights in memory (what the trainer does at the end
//            of a job): the weights file written and fsynced, its sha256 read back, the
//            architecture and manifest written and fsynced, the staged version re-read and
//            checked, the rename to the next number and the directory fsyncs.
//            cp: `cp weights.h5 DIR/copy.h5 && sync DIR/copy.h5` of the published file.
//   load     tessera: Store::Load into fresh buffers (what a server does): manifest and
//            architecture parsed and checked, every tensor read through HDF5 and its CRC-32
//            checked, and the whole file's sha256 checked against the manifest, from a cold page
//            cache (posix_fadvise DONTNEED after fsync).
//            dd: `dd if=weights.h5 of=/dev/null bs=4M`, cold the same way; and cp + sync as above.
// The first `warmup` repeats are not counted: the first write into fresh page-cache pages runs at
// first-touch speed on these VMs (1.1 s instead of 0.2 s for the same pwrite). Prints one JSON
// line with every counted repeat, the medians and the ratios (peer time / tessera time: above 1
// means tessera is faster).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/random.h"
#include "store/store.h"

namespace tessera::bench {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

int Run(int argc, char** argv) {
  std::string dir;
  int repeats = 5, warmup = 1, layers = 8;
  int64_t width = 4096;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) TESSERA_THROW(ValueError, a, " needs a value");
      return argv[++i];
    };
    if (a == "--dir") dir = next();
    else if (a == "--repeats") repeats = std::stoi(next());
    else if (a == "--warmup") warmup = std::stoi(next());
    else if (a == "--width") width = std::stoll(next());
    else if (a == "--layers") layers = std::stoi(next());
    else TESSERA_THROW(ValueError, "unknown argument ", a, " (see the comment at the top of bench/store_bench.cc)");
  }
  if (dir.empty()) TESSERA_THROW(ValueError, "--dir DIR is required (a directory on the disk to measure)");
  fs::create_directories(dir);
  // The weights: random values (compressible data would flatter nothing here, but be honest).
  std::vector<std::vector<float>> tensors;
  store::PublishRequest req;
  req.model = "bench";
  PhiloxGenerator g(1, 2);
  for (int l = 0; l < layers; ++l) {
    tensors.emplace_back(static_cast<size_t>(width * width));
    for (float& v : tensors.back()) v = static_cast<float>(g.Uniform() - 0.5);
    req.weights.push_back({std::to_string(2 * l + 1) + ".weight", {width, width}, DType::kF32, tensors.back().data()});
    tensors.emplace_back(static_cast<size_t>(width), 0.0f);
    req.weights.push_back({std::to_string(2 * l + 1) + ".bias", {width}, DType::kF32, tensors.back().data()});
  }
  models::MlpSpec* mlp = req.architecture.mutable_model()->mutable_mlp();
  mlp->set_in_features(width);
  for (int l = 0; l + 1 < layers; ++l) mlp->add_hidden(width);
  mlp->set_out_features(width);
  req.architecture.add_input_shape(width);
  store::Store st((fs::path(dir) / "store").string());
  std::vector<std::vector<char>> into(req.weights.size());
  const std::string copy = (fs::path(dir) / "copy.h5").string();
  std::vector<double> publish, cp, load, dd, cp_load;
  int64_t bytes = 0;
  for (int r = 0; r < warmup + repeats; ++r) {
    if (r == warmup) publish.clear(), cp.clear(), load.clear(), dd.clear(), cp_load.clear();
    auto t0 = Clock::now();
    store::PublishResult p = st.Publish(req);
    publish.push_back(Seconds(t0, Clock::now()));
    const std::string weights = p.dir + "/weights.h5";
    bytes = static_cast<int64_t>(fs::file_size(weights));
    fs::remove(copy);
    cp.push_back(TimeCommand("cp " + weights + " " + copy + " && sync " + copy));
    DropCache(weights);
    t0 = Clock::now();
    st.Load("bench", p.version, [&](const io::TensorRecord& t) -> void* {
      size_t i = 0;
      while (i < req.weights.size() && "/model/" + req.weights[i].name != t.path) ++i;
      into[i].resize(static_cast<size_t>(t.bytes));
      return into[i].data();
    });
    load.push_back(Seconds(t0, Clock::now()));
    if (std::memcmp(into[0].data(), tensors[0].data(), into[0].size()) != 0) TESSERA_THROW(Error, "loaded weights differ");
    DropCache(weights);
    dd.push_back(TimeCommand("dd if=" + weights + " of=/dev/null bs=4M status=none"));
    DropCache(weights);
    fs::remove(copy);
    cp_load.push_back(TimeCommand("cp " + weights + " " + copy + " && sync " + copy));
    fs::remove(copy);
    st.Gc("bench", 1);
    std::fprintf(stderr, "%s %d: publish %.3f s (cp+sync %.3f), load %.3f s (cold dd %.3f, cold cp+sync %.3f)\n", r < warmup ? "warm-up" : "repeat", r,
                 publish.back(), cp.back(), load.back(), dd.back(), cp_load.back());
  }
  json out = {{"bytes", bytes},
              {"tensors", req.weights.size()},
              {"repeats", repeats},
              {"publish_s", publish},
              {"cp_sync_s", cp},
              {"load_s", load},
              {"cold_dd_read_s", dd},
              {"cold_cp_sync_s", cp_load},
              {"median", {{"publish_s", Median(publish)}, {"cp_sync_s", Median(cp)}, {"load_s", Median(load)},
                          {"cold_dd_read_s", Median(dd)}, {"cold_cp_sync_s", Median(cp_load)}}},
              {"ratio", {{"publish_vs_cp_sync", Median(cp) / Median(publish)},
                         {"load_vs_cold_dd_read", Median(dd) / Median(load)},
                         {"load_vs_cold_cp_sync", Median(cp_load) / Median(load)}}}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  try {
    return tessera::bench::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store_bench: %s\n", e.what());
    return 1;
  }
}
