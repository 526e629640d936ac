// Job specs: parsing, validation messages with field paths and locations, overrides, defaults.
#include "jobs/spec.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/model_spec.h"

namespace tessera::jobs {
namespace {

namespace fs = std::filesystem;

class SpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tessera_spec_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    for (const char* f : {"train-images", "train-labels", "test-images", "test-labels"})
      std::ofstream(dir_ / f) << "x";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& text) {
    std::string p = (dir_ / "job.pbtxt").string();
    std::ofstream(p) << text;
    return p;
  }

  // A valid spec; relative data paths resolve against the spec's folder.
  static std::string Valid(const std::string& extra = "", const std::string& model = "mlp { hidden: 8 }",
                           const std::string& data = "") {
    return "name: \"t\"\n"
           "model { " +
           model +
           " }\n"
           "data {\n"
           "  train_images: \"train-images\" train_labels: \"train-labels\"\n"
           "  test_images: \"test-images\" test_labels: \"test-labels\" " +
           data +
           "\n"
           "}\n" +
           extra;
  }

  std::string ErrorOf(const std::string& text, const std::vector<std::string>& overrides = {}) {
    try {
      LoadJobSpec(Write(text), overrides);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no error)";
  }

  fs::path dir_;
};

TEST_F(SpecTest, ValidSpecResolvesPathsAndDefaults) {
  std::string path = Write(Valid());
  JobSpec s = LoadJobSpec(path);
  EXPECT_EQ(s.data().train_images(), dir_.string() + "/train-images");
  EXPECT_EQ(s.train().epochs(), 1);
  EXPECT_TRUE(s.optimizer().has_lr());  // defaults are written out
  EXPECT_DOUBLE_EQ(s.optimizer().lr(), 0.001);
  EXPECT_EQ(s.model().mlp().hidden_size(), 1);
  std::string text = ToText(s);
  EXPECT_NE(text.find("batch_size: 128"), std::string::npos) << text;
  EXPECT_NE(text.find("collective_timeout_s: 300"), std::string::npos) << text;
  // The resolved text parses back to the same spec.
  EXPECT_EQ(ParseJobSpec(text, "resolved").DebugString(), s.DebugString());
}

TEST_F(SpecTest, ShippedExamplesAreValid) {
  for (const char* f : {"fmnist_mlp.pbtxt", "fmnist_cnn.pbtxt"}) {
    std::string path = std::string(TESSERA_SOURCE_DIR) + "/jobs/examples/" + f;
    JobSpec s = LoadJobSpec(path, {}, /*check_files=*/false);
    EXPECT_EQ(s.data().batch_size(), 128) << f;
  }
  JobSpec gpt = LoadJobSpec(std::string(TESSERA_SOURCE_DIR) + "/jobs/examples/fortunes_gpt.pbtxt", {}, false);
  EXPECT_EQ(gpt.data().kind(), DataSpec::TOKENS);
  EXPECT_EQ(gpt.data().sequence_length(), gpt.model().gpt().context());  // 0 means the model's context
  EXPECT_EQ(gpt.data().eval_batch_size(), gpt.data().batch_size());      // not 1000 windows of logits
}

// A GPT reads token files: the two go together, and what does not apply to token ids is refused.
TEST_F(SpecTest, GptSpecsAreValidated) {
  for (const char* f : {"train.bin", "test.bin"}) std::ofstream(dir_ / f) << "x";
  const std::string tokens =
      "name: \"g\"\nmodel { gpt { layers: 2 heads: 2 width: 8 context: 16 vocab: 256 } }\n"
      "data { kind: TOKENS train_path: \"train.bin\" test_path: \"test.bin\" ";
  JobSpec ok = LoadJobSpec(Write(tokens + "}\n"));
  EXPECT_EQ(ok.data().sequence_length(), 16);
  EXPECT_EQ(ok.model().gpt().dropout(), 0);
  std::string msg =
      ErrorOf(tokens + "sequence_length: 17 normalize { scale: 0.5 } }\n", {"model.gpt.heads=3"});
  EXPECT_NE(msg.find("data.sequence_length: must be at most model.gpt.context (16), got 17"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("data.normalize: does not apply to token ids"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.gpt.width: must be a multiple of model.gpt.heads (3), got 8"), std::string::npos)
      << msg;
  msg = ErrorOf(tokens + "}\nparallel { zero_stage: 3 }\n", {"model.gpt.vocab=0"});
  EXPECT_NE(msg.find("parallel.zero_stage: stage 3 does not take model.gpt yet"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.gpt.vocab: must be >= 1, got 0"), std::string::npos) << msg;
  msg = ErrorOf(Valid("", "gpt {}"));
  EXPECT_NE(msg.find("data.kind: model.gpt reads token ids"), std::string::npos) << msg;
  msg = ErrorOf(tokens + "}\n", {"model={}", "model.mlp={}"});
  EXPECT_NE(msg.find("data.kind: TOKENS feeds a language model"), std::string::npos) << msg;
  msg = ErrorOf(tokens + "}\npublish { store: \"s\" metric: \"test_f1\" }\n");
  EXPECT_NE(msg.find("publish.metric: must be test_accuracy (next token), test_perplexity or test_loss"),
            std::string::npos)
      << msg;
  msg = ErrorOf(tokens + "}\n", {"model.gpt.vocab=3000000000", "model.gpt.layers=5000"});
  EXPECT_NE(msg.find("model.gpt.vocab: must be at most 16777216, got 3000000000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.gpt.layers: must be at most 4096, got 5000"), std::string::npos) << msg;
}

TEST_F(SpecTest, SyntaxErrorsAndUnknownFieldsNameLineAndColumn) {
  std::string msg = ErrorOf(Valid("train { epochz: 3 }\n"));
  EXPECT_NE(msg.find("job.pbtxt:7:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("epochz"), std::string::npos) << msg;
  msg = ErrorOf(Valid("train { epochs: \"five\" }\n"));
  EXPECT_NE(msg.find("job.pbtxt:7:17: train.epochs: Expected integer"), std::string::npos) << msg;
  msg = ErrorOf(Valid("optimizer {\n  schedule { kind: COSINE\n warmup_steps: 1.5 }\n}\n"));
  EXPECT_NE(msg.find("job.pbtxt:9:16: optimizer.schedule.warmup_steps:"), std::string::npos) << msg;
  msg = ErrorOf(Valid("train { epochs: 3 \n"));
  EXPECT_NE(msg.find("job.pbtxt:8:"), std::string::npos) << msg;
  msg = ErrorOf(Valid("optimizer { lr: 0.1 lrr: 0.2 }\n"));
  EXPECT_NE(msg.find("job.pbtxt:7:"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("optimizer.lr:"), std::string::npos) << "the unknown field is lrr, not lr: " << msg;
  msg = ErrorOf(Valid("train { epochs: 2 }\ntrain { seed: \"x\" }\n"));
  EXPECT_NE(msg.find("job.pbtxt:8:7: Non-repeated field \"train\" is specified multiple times"),
            std::string::npos)
      << "an error at the second train block: " << msg;
  EXPECT_EQ(msg.find("epochs"), std::string::npos) << "nothing is wrong with epochs: " << msg;
  msg = ErrorOf(Valid("optimizer {\n\tschedule {\n\t\twarmup_steps: 1.5\n\t}\n}\n"));
  EXPECT_NE(msg.find("optimizer.schedule.warmup_steps:"), std::string::npos) << "tabs: " << msg;
  msg = ErrorOf(Valid("optimizer { kind: ADAMM }\n"));
  EXPECT_NE(msg.find("ADAMM"), std::string::npos) << msg;
}

TEST_F(SpecTest, OutOfRangeValuesNameTheFieldPathAndLine) {
  std::string msg = ErrorOf(Valid("optimizer {\n  lr: -1\n}\n"));
  EXPECT_NE(msg.find("job.pbtxt:8:3: optimizer.lr: must be > 0, got -1"), std::string::npos) << msg;
  msg = ErrorOf(Valid("", "mlp { dropout: 1.5 }"));
  EXPECT_NE(msg.find("model.mlp.dropout"), std::string::npos) << msg;
}

// The C++ API: a spec built or changed in code gets the same defaults and checks, named by source.
TEST_F(SpecTest, ValidateJobSpecFillsDefaultsAndNamesTheSource) {
  JobSpec s = ParseJobSpec(Valid(), "in code");
  s.mutable_data()->set_train_images((dir_ / "train-images").string());
  s.mutable_data()->set_train_labels((dir_ / "train-labels").string());
  s.mutable_data()->set_test_images((dir_ / "test-images").string());
  s.mutable_data()->set_test_labels((dir_ / "test-labels").string());
  JobSpec good = s;
  ValidateJobSpec(good, "in code");
  EXPECT_TRUE(good.optimizer().has_lr());
  EXPECT_EQ(good.data().batch_size(), 128);
  s.mutable_optimizer()->set_lr(-1);
  s.mutable_data()->set_test_labels((dir_ / "missing").string());
  try {
    ValidateJobSpec(s, "my_program");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("my_program: optimizer.lr: must be > 0, got -1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("data.test_labels"), std::string::npos) << msg;
  }
}

TEST_F(SpecTest, AllProblemsAreReportedTogether) {
  std::string msg =
      ErrorOf(Valid("train { threads: 0 log_every_steps: 0 }\noptimizer { kind: ADAM nesterov: true }\n"));
  EXPECT_NE(msg.find("train.threads"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.log_every_steps"), std::string::npos) << msg;
  EXPECT_NE(msg.find("optimizer.nesterov"), std::string::npos) << msg;
}

TEST_F(SpecTest, MissingFilesAndMissingModelAreErrors) {
  fs::remove(dir_ / "test-labels");
  std::string msg = ErrorOf(Valid());
  EXPECT_NE(msg.find("data.test_labels: file not found"), std::string::npos) << msg;
  msg = ErrorOf("data { kind: CSV }\n");
  EXPECT_NE(msg.find("model: choose a model family"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.train_path: is required for kind CSV"), std::string::npos) << msg;
}

TEST_F(SpecTest, InconsistentSettings) {
  std::string msg = ErrorOf(Valid("parallel { data: 3 }\n", "mlp {}", "batch_size: 10"));
  EXPECT_NE(msg.find("must divide evenly over parallel.data = 3"), std::string::npos) << msg;
  msg = ErrorOf(Valid("", "mlp {}", "normalize { mean: 0.5 }"));
  EXPECT_NE(msg.find("data.normalize.mean: mean has 1 values but std has 0"), std::string::npos) << msg;
  msg = ErrorOf(Valid("", "cnn { height: 4 width: 4 channels: 8 channels: 8 channels: 8 }"));
  EXPECT_NE(msg.find("pooling stages"), std::string::npos) << msg;
}

// Sizes that multiply past what any process could hold, or past 64 bits, are refused by validate
// (they used to pass it, then wrap the parameter count and crash in FlatParameters).
TEST_F(SpecTest, SizesThatMultiplyPastAnyMemoryAreRefused) {
  std::string msg = ErrorOf(Valid(), {"model.mlp.hidden=23203451665043462"});
  EXPECT_NE(msg.find("model.mlp: the layer sizes multiply past 2^63 parameters"), std::string::npos) << msg;
  msg = ErrorOf(Valid(), {"model.mlp.hidden=2000000,2000000"});
  EXPECT_NE(msg.find("model.mlp: the layer sizes give 4001592000010 parameters"), std::string::npos) << msg;
  msg = ErrorOf(Valid("", "cnn { channels: 4000000000 channels: 4000000000 }"));
  EXPECT_NE(msg.find("model.cnn: the layer sizes multiply past 2^63"), std::string::npos) << msg;
  msg = ErrorOf(Valid(), {"data.batch_size=9223372036854775807"});
  EXPECT_NE(msg.find("data.batch_size: must be in [1, 2147483648], got 9223372036854775807"),
            std::string::npos)
      << msg;
  msg = ErrorOf(Valid(), {"data.eval_batch_size=4294967296"});
  EXPECT_NE(msg.find("data.eval_batch_size: must be in [1, 2147483648]"), std::string::npos) << msg;
  EXPECT_EQ(ErrorOf(Valid(), {"model.mlp.hidden=100000,10000"}), "(no error)");  // large, but possible
}

// ParameterCount is what BuildModel builds.
TEST_F(SpecTest, ParameterCountMatchesTheBuiltModel) {
  for (const char* example : {"fmnist_mlp.pbtxt", "fmnist_cnn.pbtxt", "fortunes_gpt.pbtxt"}) {
    JobSpec spec = LoadJobSpec(std::string(TESSERA_SOURCE_DIR) + "/jobs/examples/" + example, {}, false);
    auto net = models::BuildModel(spec.model(), models::ImpliedExampleShape(spec.model()), 10);
    EXPECT_EQ(models::ParameterCount(spec.model()), net->NumParameters()) << example;
  }
}

// --set model.mlp.hidden=5 on a cnn spec once turned the model into an MLP without a word.
TEST_F(SpecTest, OverrideOfAnotherModelFamilyIsRefusedUnlessChosen) {
  const std::string cnn = Valid("", "cnn { channels: 4 }");
  std::string msg = ErrorOf(cnn, {"model.mlp.hidden=5"});
  EXPECT_NE(
      msg.find(
          "--set model.mlp.hidden=5: the spec's family is model.cnn; setting model.mlp would replace it"),
      std::string::npos)
      << msg;
  EXPECT_NE(msg.find("give --set model.mlp={} first"), std::string::npos) << msg;
  JobSpec spec = LoadJobSpec(Write(cnn), {"model.mlp={}", "model.mlp.hidden=5"});
  ASSERT_TRUE(spec.model().has_mlp());
  EXPECT_EQ(spec.model().mlp().hidden_size(), 1);
  EXPECT_EQ(spec.model().mlp().in_features(), 784);  // the defaults of the chosen family
  // Within the chosen family, and outside oneofs, nothing changes.
  EXPECT_EQ(LoadJobSpec(Write(cnn), {"model.cnn.hidden=7"}).model().cnn().hidden(0), 7);
  EXPECT_EQ(LoadJobSpec(Write(Valid()), {"optimizer.schedule={}"}).optimizer().schedule().kind(),
            JobSpec().optimizer().schedule().kind());
}

// The name becomes runs/NAME-STAMP: it must not climb out of runs/.
TEST_F(SpecTest, NameThatLeavesTheRunsFolderIsRefused) {
  for (const char* bad : {"name=../../etc", "name=a/b", "name=.hidden", "name=", "name=-rf"}) {
    std::string msg = ErrorOf(Valid(), {bad});
    EXPECT_NE(msg.find("cannot name a run directory"), std::string::npos) << bad << ": " << msg;
  }
  EXPECT_EQ(ErrorOf(Valid(), {"name=my run 2"}), "(no error)");
}

// A directory or a device given as data once said "file not found"; eps = 0 once reached training
// and ended in a NaN with the hint "lower optimizer.lr".
TEST_F(SpecTest, DataThatIsNotAFileAndAZeroEpsAreNamed) {
  std::string msg = ErrorOf(Valid(), {"data.train_images=" + dir_.string(), "data.test_labels=/dev/null"});
  EXPECT_NE(msg.find("data.train_images: is a directory, not a data file: " + dir_.string()),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("data.test_labels: is not a regular file (a device, FIFO or socket): /dev/null"),
            std::string::npos)
      << msg;
  msg = ErrorOf(Valid(), {"data.test_images=" + (dir_ / "nope").string()});
  EXPECT_NE(msg.find("data.test_images: file not found: "), std::string::npos) << msg;
  for (const char* kind : {"ADAM", "ADAMW", "RMSPROP"}) {
    msg = ErrorOf(Valid(), {std::string("optimizer.kind=") + kind, "optimizer.eps=0"});
    EXPECT_NE(msg.find("optimizer.eps: must be > 0"), std::string::npos) << kind << ": " << msg;
  }
  EXPECT_EQ(ErrorOf(Valid(), {"optimizer.kind=SGD", "optimizer.eps=0"}), "(no error)");
}

TEST_F(SpecTest, OverridesApplyByFieldPath) {
  JobSpec s = LoadJobSpec(Write(Valid()), {"train.epochs=7", "optimizer.lr=0.01", "optimizer.kind=SGD",
                                           "model.mlp.hidden=64,32", "name=renamed", "data.shuffle=false"});
  EXPECT_EQ(s.train().epochs(), 7);
  EXPECT_DOUBLE_EQ(s.optimizer().lr(), 0.01);
  EXPECT_EQ(s.optimizer().kind(), OptimizerSpec::SGD);
  ASSERT_EQ(s.model().mlp().hidden_size(), 2);
  EXPECT_EQ(s.model().mlp().hidden(1), 32);
  EXPECT_EQ(s.name(), "renamed");
  EXPECT_FALSE(s.data().shuffle());
}

TEST_F(SpecTest, BadOverridesAreClearErrors) {
  std::string msg = ErrorOf(Valid(), {"train.epochz=1"});
  EXPECT_NE(msg.find("--set train.epochz=1: no field 'epochz' in train"), std::string::npos) << msg;
  EXPECT_NE(msg.find("epochs"), std::string::npos) << msg;  // lists the valid names
  msg = ErrorOf(Valid(), {"train.epochs=abc"});
  EXPECT_NE(msg.find("'abc' is not a valid int32 for train.epochs"), std::string::npos) << msg;
  msg = ErrorOf(Valid(), {"optimizer.kind=LION"});
  EXPECT_NE(msg.find("ADAMW"), std::string::npos) << msg;
  msg = ErrorOf(Valid(), {"train"});
  EXPECT_NE(msg.find("expected FIELD.PATH=VALUE"), std::string::npos) << msg;
  msg = ErrorOf(Valid(), {"train=1"});
  EXPECT_NE(msg.find("train is a message"), std::string::npos) << msg;
  // Range errors of overridden values point at the override.
  msg = ErrorOf(Valid("train { epochs: 2 }\n"), {"train.epochs=0"});
  EXPECT_NE(msg.find("--set train.epochs=0: train.epochs: must be >= 1"), std::string::npos) << msg;
}

TEST_F(SpecTest, UnimplementedFeaturesAreRefusedNotIgnored) {
  std::string msg = ErrorOf(Valid("parallel { tensor: 2 }\ncheckpoint { every_steps: 100 }\n"));
  EXPECT_NE(msg.find("parallel.tensor: tensor parallelism is not available"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("checkpoint.every_steps"), std::string::npos) << msg;  // checkpoints are implemented
  for (int stage = 0; stage <= 3; ++stage)                                  // every ZeRO stage is
    EXPECT_EQ(ErrorOf(Valid("parallel { zero_stage: " + std::to_string(stage) + " }\n")), "(no error)")
        << stage;
  msg = ErrorOf(Valid("parallel { zero_stage: 4 }\n"));
  EXPECT_NE(msg.find("parallel.zero_stage: must be 0, 1, 2 or 3"), std::string::npos) << msg;
}

TEST_F(SpecTest, CheckpointPolicyIsValidated) {
  std::string msg =
      ErrorOf(Valid("checkpoint { every_steps: -1 every_minutes: -2 keep_last: 0 min_io_mb_per_s: 0 }\n"));
  EXPECT_NE(msg.find("checkpoint.every_steps: must be >= 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint.every_minutes: must be >= 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint.keep_last: must be >= 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint.min_io_mb_per_s: must be a rate > 0 MB/s, got 0"), std::string::npos) << msg;
}

}  // namespace
}  // namespace tessera::jobs
