// End-to-end: a short training run through jobs::Train writes a complete run directory and the
// loss falls.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/random.h"
#include "jobs/checkpoint.h"
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

// The checkpoint policy: every_steps, every_minutes (checked at log lines) and the final step; a
// run resumed from a mid-run checkpoint ends with bitwise the same state as the uninterrupted run.
TEST(Trainer, CheckpointPolicyAndExactResumeFromAMidRunCheckpoint) {
  fs::path dir = fs::temp_directory_path() / ("tessera_trainer_ckpt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  WriteBlobs(dir / "train.csv", 600, 1);
  WriteBlobs(dir / "test.csv", 300, 2);
  std::ofstream(dir / "job.pbtxt")
      << "name: \"blobs\"\n"
         "model { mlp { in_features: 4 hidden: 16 out_features: 3 dropout: 0.2 } }\n"
         "data { kind: CSV train_path: \"train.csv\" test_path: \"test.csv\" batch_size: 32 shuffle: true }\n"
         "optimizer { kind: ADAMW lr: 0.01 schedule { kind: COSINE warmup_steps: 10 } }\n"
         "train { steps: 100 log_every_steps: 25 seed: 3 }\n"
         // every_minutes this small is due at every log line
         "checkpoint { every_steps: 30 every_minutes: 1e-9 keep_last: 10 }\n";
  JobSpec spec = LoadJobSpec((dir / "job.pbtxt").string());
  TrainerOptions o;
  o.run_dir = (dir / "a").string();
  o.progress = false;
  TrainSummary a = Train(spec, o);
  EXPECT_EQ(a.checkpoint, (dir / "a" / "checkpoints" / "step-00000100" / "checkpoint.h5").string());
  std::vector<int64_t> committed;
  for (const json& e : ReadJsonLines(dir / "a" / "metrics.jsonl"))
    if (e["event"] == "checkpoint") committed.push_back(e["step"].get<int64_t>());
  EXPECT_EQ(committed, (std::vector<int64_t>{25, 30, 50, 60, 75, 90, 100}));
  for (int64_t step : committed) {
    char name[32];
    std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
    EXPECT_TRUE(fs::exists(dir / "a" / "checkpoints" / name / "checkpoint.h5")) << name;
  }

  // From step 50 in a new run directory: the same final state, bit for bit.
  o.run_dir = (dir / "b").string();
  o.resume_from = (dir / "a" / "checkpoints" / "step-00000050").string();
  TrainSummary b = Train(spec, o);
  EXPECT_EQ(b.resumed_from_step, 50);
  EXPECT_EQ(b.steps, 100);
  EXPECT_EQ(b.test_loss, a.test_loss);
  for (const std::string& path : {a.checkpoint, b.checkpoint}) EXPECT_TRUE(VerifyCheckpoint(path).empty()) << path;
  CheckpointInfo ia = ReadCheckpointInfo(a.checkpoint), ib = ReadCheckpointInfo(b.checkpoint);
  ASSERT_EQ(ia.tensors.size(), ib.tensors.size());
  for (size_t i = 0; i < ia.tensors.size(); ++i) {
    EXPECT_EQ(ia.tensors[i].path, ib.tensors[i].path);
    EXPECT_EQ(ia.tensors[i].crc32, ib.tensors[i].crc32) << ia.tensors[i].path << " differs after the resume";
  }
  EXPECT_EQ(ib.meta.optimizer_step, 100);

  // Run again with the same --resume-from (a requeued job): it continues from its own newest
  // checkpoint (here: already complete), not from step 50 again.
  TrainSummary b2 = Train(spec, o);
  EXPECT_EQ(b2.resumed_from_step, 100);
  // A damaged newest checkpoint: the run continues from the one before it.
  fs::resize_file(b.checkpoint, fs::file_size(b.checkpoint) / 2);
  o.resume_from.clear();
  TrainSummary b3 = Train(spec, o);
  EXPECT_EQ(b3.resumed_from_step, 90);
  EXPECT_EQ(b3.test_loss, a.test_loss);

  // --resume with nothing to resume is an error; kNever starts over in a directory that has some.
  o.resume_from.clear();
  o.run_dir = (dir / "c").string();
  o.resume = TrainerOptions::Resume::kRequire;
  EXPECT_THROW(Train(spec, o), ConfigError);
  o.run_dir = (dir / "a").string();
  o.resume = TrainerOptions::Resume::kNever;
  TrainSummary again = Train(spec, o);
  EXPECT_EQ(again.resumed_from_step, -1);
  EXPECT_EQ(again.test_loss, a.test_loss);
  // The earlier run's checkpoints were moved aside, not mixed with the new run's or deleted.
  int aside = 0;
  for (const auto& e : fs::directory_iterator(dir / "a"))
    if (e.path().filename().string().rfind("checkpoints.earlier-", 0) == 0) {
      ++aside;
      EXPECT_TRUE(fs::exists(e.path() / "step-00000100" / "checkpoint.h5"));
      EXPECT_TRUE(fs::is_symlink(e.path() / "latest"));
    }
  EXPECT_EQ(aside, 1);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::jobs
