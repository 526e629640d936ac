// Shared by the trainer suites (tests/jobs/trainer_test.cc, resume_test.cc; one binary): a CSV
// dataset of Gaussian blobs, a short job over it, and file helpers.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/io/hdf5.h"
#include "core/random.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"

namespace tessera::jobs::blobs_test {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Three Gaussian blobs in 4-D, as CSV with a header and a label column in the middle.
inline void WriteBlobs(const fs::path& path, int n, uint64_t seed) {
  std::ofstream out(path);
  out << "a,b,label,c,d\n";
  PhiloxGenerator g(seed);
  for (int i = 0; i < n; ++i) {
    int c = static_cast<int>(g.Below(3));
    double v[4];
    for (int k = 0; k < 4; ++k) v[k] = (k == c ? 2.0 : 0.0) + 0.5 * g.Normal();
    out << v[0] << "," << v[1] << "," << c << "," << v[2] << "," << v[3] << "\n";
  }
}

// A fresh directory holding train.csv (600 blobs) and test.csv (300).
inline fs::path FreshBlobsDir(const std::string& tag) {
  fs::path dir = fs::temp_directory_path() / ("tessera_trainer_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  WriteBlobs(dir / "train.csv", 600, 1);
  WriteBlobs(dir / "test.csv", 300, 2);
  return dir;
}

inline std::vector<json> ReadJsonLines(const fs::path& p) {
  std::vector<json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

// A blobs job of 60 steps with checkpoints at 30 and 60 (and the given extra spec text).
struct BlobsJob {
  fs::path dir;
  JobSpec spec;
  explicit BlobsJob(const std::string& tag, const std::string& extra = "") {
    dir = FreshBlobsDir(tag);
    std::ofstream(dir / "job.pbtxt") << "name: \"blobs\"\n"
                                        "model { mlp { in_features: 4 hidden: 16 out_features: 3 } }\n"
                                        "data { kind: CSV train_path: \"train.csv\" test_path: \"test.csv\" batch_size: 30 }\n"
                                        "optimizer { kind: ADAM lr: 0.01 }\n"
                                        "train { steps: 60 log_every_steps: 30 eval_every_steps: 20 seed: 3 }\n"
                                        "checkpoint { every_steps: 30 }\n"
                                     << extra;
    spec = LoadJobSpec((dir / "job.pbtxt").string());
  }
  ~BlobsJob() { fs::remove_all(dir); }
  TrainSummary Run(const std::string& run, const JobSpec* other = nullptr) {
    TrainerOptions o;
    o.run_dir = (dir / run).string();
    o.progress = false;
    return Train(other ? *other : spec, o);
  }
};

// Edits the HDF5 file `path` with the lock held.
inline void EditHdf5(const std::string& path, const std::function<void(hid_t)>& edit) {
  io::Hdf5Lock lock;
  io::Hdf5Handle f(TESSERA_H5_CHECK(IoError, H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), path), H5Fclose);
  edit(f.get());
  ASSERT_GE(f.Close(), 0);
}

}  // namespace tessera::jobs::blobs_test
