// End-to-end: a short training run through jobs::Train writes a complete run directory and the
// loss falls.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/random.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"

namespace tessera::jobs {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Three Gaussian blobs in 4-D, as CSV with a header and a label column in the middle.
void WriteBlobs(const fs::path& path, int n, uint64_t seed) {
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

std::vector<json> ReadJsonLines(const fs::path& p) {
  std::vector<json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

TEST(Trainer, CsvRunWritesACompleteRunDirectoryAndLearns) {
  fs::path dir = fs::temp_directory_path() / ("tessera_trainer_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  WriteBlobs(dir / "train.csv", 600, 1);
  WriteBlobs(dir / "test.csv", 300, 2);
  std::ofstream(dir / "job.pbtxt") << "name: \"blobs\"\n"
                                      "model { mlp { in_features: 4 hidden: 16 out_features: 3 } }\n"
                                      "data { kind: CSV train_path: \"train.csv\" test_path: \"test.csv\" batch_size: 30 }\n"
                                      "optimizer { kind: ADAM lr: 0.01 }\n"
                                      "train { epochs: 4 log_every_steps: 10 seed: 3 }\n";
  JobSpec spec = LoadJobSpec((dir / "job.pbtxt").string(), {"train.epochs=5"});
  TrainerOptions o;
  o.run_dir = (dir / "run").string();
  o.progress = false;
  TrainSummary s = Train(spec, o);
  EXPECT_EQ(s.steps, 100);
  EXPECT_GT(s.test_accuracy, 0.8);

  // The resolved spec parses and carries the override.
  std::ifstream js(dir / "run" / "job.pbtxt");
  std::string text((std::istreambuf_iterator<char>(js)), std::istreambuf_iterator<char>());
  EXPECT_EQ(ParseJobSpec(text, "job.pbtxt").train().epochs(), 5);

  std::vector<json> events = ReadJsonLines(dir / "run" / "metrics.jsonl");
  std::vector<double> losses;
  int evals = 0;
  for (const json& e : events) {
    if (e["event"] == "train") {
      losses.push_back(e["loss"].get<double>());
      for (const char* k : {"step", "epoch", "lr", "samples_per_sec", "eta_seconds"}) EXPECT_TRUE(e.contains(k)) << k;
    }
    if (e["event"] == "eval") ++evals;
  }
  ASSERT_EQ(losses.size(), 10u);
  EXPECT_LT(losses.back(), 0.5 * losses.front());
  EXPECT_EQ(evals, 5);  // once per epoch

  std::ifstream ss(dir / "run" / "summary.json");
  json summary = json::parse(ss);
  for (const char* k : {"final_train_loss", "test_accuracy", "test_precision", "test_recall", "test_f1",
                        "confusion_matrix", "samples_per_sec", "steps", "wall_seconds"})
    EXPECT_TRUE(summary.contains(k)) << "summary.json lacks " << k;
  EXPECT_EQ(summary["confusion_matrix"].size(), 3u);
  EXPECT_EQ(summary["steps"].get<int64_t>(), 100);
  EXPECT_FALSE(fs::exists(dir / "run" / "summary.json.tmp"));
  fs::remove_all(dir);
}

TEST(Trainer, ModelAndDataShapeMismatchIsAClearError) {
  fs::path dir = fs::temp_directory_path() / ("tessera_trainer_mm_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  WriteBlobs(dir / "train.csv", 50, 1);
  std::ofstream(dir / "job.pbtxt") << "model { mlp { in_features: 5 hidden: 4 out_features: 3 } }\n"
                                      "data { kind: CSV train_path: \"train.csv\" test_path: \"train.csv\" }\n";
  JobSpec spec = LoadJobSpec((dir / "job.pbtxt").string());
  TrainerOptions o;
  o.run_dir = (dir / "run").string();
  o.progress = false;
  try {
    Train(spec, o);
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.mlp.in_features is 5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4]"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::jobs
