// End-to-end: a short training run through jobs::Train writes a complete run directory and the
// loss falls.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/hdf5.h"
#include "core/io/tensor_file.h"
#include "core/random.h"
#include "jobs/checkpoint.h"
#include "store/store.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "tests/jobs/blobs_job.h"

namespace tessera::jobs {
namespace {

using namespace blobs_test;  // NOLINT: the fixtures of this suite

TEST(Trainer, CsvRunWritesACompleteRunDirectoryAndLearns) {
  fs::path dir = FreshBlobsDir("csv");
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
  fs::path dir = FreshBlobsDir("ckpt");
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

// publish { ... }: the final weights become version 1 with the run's metrics and lineage; a job
// with train.init_from that version and a different head loads every tensor but the head,
// publishes version 2, and its lineage names version 1 and the sha256 of its weights.
TEST(Trainer, PublishesAndFineTunesFromTheStore) {
  BlobsJob job("publish");
  const std::string root = (job.dir / "store").string();
  JobSpec first = job.spec;
  first.mutable_publish()->set_store(root);
  first.mutable_publish()->set_alias("production");
  first.mutable_parallel()->set_zero_stage(2);  // on one rank there is nothing to shard: stage 0 in effect
  TrainSummary a = job.Run("a", &first);
  ASSERT_EQ(a.published_version, 1);
  store::Store st(root);
  EXPECT_EQ(st.Resolve("blobs", "production"), 1);
  EXPECT_TRUE(st.Verify("blobs", 1).empty());
  store::VersionManifest m1 = st.ReadManifest("blobs", 1);
  EXPECT_EQ(m1.metrics().at("test_accuracy"), a.test_accuracy);
  EXPECT_EQ(m1.lineage().step(), 60);
  EXPECT_EQ(m1.lineage().job_name(), "blobs");
  EXPECT_EQ(m1.lineage().zero_stage(), 0);
  EXPECT_EQ(m1.lineage().datasets_size(), 2);
  EXPECT_EQ(m1.lineage().checkpoint(), a.checkpoint.empty() ? "" : fs::absolute(a.checkpoint).string());
  store::Architecture arch = st.ReadArchitecture("blobs", 1);
  EXPECT_EQ(arch.input_dtype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(arch.input_shape().begin(), arch.input_shape().end()), (std::vector<int64_t>{4}));
  // The published weights are the final checkpoint's model, bit for bit.
  CheckpointInfo final_ckpt = ReadCheckpointInfo(a.checkpoint);
  io::WeightsInfo w = io::ReadWeightsInfo(st.VersionDir("blobs", 1) + "/weights.h5");
  for (const io::TensorRecord& t : w.tensors)
    for (const CheckpointTensor& c : final_ckpt.tensors)
      if (c.path == t.path) {
        EXPECT_EQ(c.crc32, t.crc32) << t.path;
      }

  JobSpec tune = job.spec;
  tune.mutable_model()->mutable_mlp()->set_out_features(4);  // a new head
  tune.mutable_train()->set_init_from("store://" + root + "/blobs@production");
  tune.mutable_train()->set_steps(20);
  tune.mutable_publish()->set_store(root);
  ::testing::internal::CaptureStdout();
  TrainerOptions o;
  o.run_dir = (job.dir / "tune").string();
  TrainSummary b = Train(tune, o);
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("1.weight: loaded from store://"), std::string::npos) << out;
  EXPECT_NE(out.find("3.weight: re-initialised (store://" + root + "/blobs@production has shape [3, 16], the model [4, 16])"),
            std::string::npos)
      << out;
  ASSERT_EQ(b.published_version, 2);
  store::Lineage l2 = st.ReadManifest("blobs", 2).lineage();
  EXPECT_EQ(l2.parent().model(), "blobs");
  EXPECT_EQ(l2.parent().version(), 1);
  EXPECT_EQ(l2.parent().weights_sha256(), m1.files(0).sha256());
  EXPECT_EQ(st.Resolve("blobs", "production"), 1) << "a publish without an alias moves none";
  EXPECT_EQ(st.Resolve("blobs", "latest"), 2);

  // Resumed later (more steps), after the alias has moved: the parent is still the version the
  // run started from, as its run directory recorded it; the reference is not resolved again.
  st.SetAlias("blobs", "production", 2);
  tune.mutable_train()->set_steps(30);
  o.progress = false;
  TrainSummary c = Train(tune, o);
  EXPECT_EQ(c.resumed_from_step, 20);
  ASSERT_EQ(c.published_version, 3);
  EXPECT_EQ(st.ReadManifest("blobs", 3).lineage().parent().version(), 1);
  // Evaluated again once complete: not published again.
  TrainSummary d = Train(tune, o);
  EXPECT_EQ(d.published_version, 3);
  EXPECT_EQ(st.Versions("blobs").size(), 3u);
}

// publish.when: BEST publishes the weights of the best evaluation, not the last one.
TEST(Trainer, PublishBestPublishesTheBestEvaluation) {
  BlobsJob job("best", "publish { when: BEST metric: \"test_loss\" }\n");
  JobSpec spec = job.spec;
  spec.mutable_publish()->set_store((job.dir / "store").string());
  spec.mutable_optimizer()->set_lr(0.3);  // large enough that the loss goes up and down
  TrainSummary s = job.Run("a", &spec);
  ASSERT_EQ(s.published_version, 1);
  double best = 1e300;
  int64_t best_step = -1;
  for (const json& e : ReadJsonLines(job.dir / "a" / "metrics.jsonl"))
    if (e["event"] == "eval" && e["test_loss"].get<double>() < best) {
      best = e["test_loss"].get<double>();
      best_step = e["step"].get<int64_t>();
    }
  ASSERT_NE(best_step, 60) << "the job's last evaluation is its best: the test shows nothing";
  store::VersionManifest m = store::Store((job.dir / "store").string()).ReadManifest("blobs", 1);
  EXPECT_EQ(m.metrics().at("test_loss"), best);
  EXPECT_EQ(m.lineage().step(), best_step);
}

}  // namespace
}  // namespace tessera::jobs
