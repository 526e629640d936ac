// Evaluation under ZeRO stage 3 (jobs/training_loop.cc EvaluateAt): the trainer on 2 ranks of the
// thread process group gathers each layer for its forward, as training does, instead of the whole
// model. Test examples do not split evenly (151 and 150 a rank, in batches of 50: 4 and 3), so
// the rank with fewer batches must walk the gathers of the missing one; the evaluations, the
// confusion matrix and the final weights equal stage 0's bit for bit (with 2 ranks a reduce adds
// as the all-reduce does), and the best evaluation's weights are published from the same step.
#include <gtest/gtest.h>

#include <mutex>

#include "core/threads.h"
#include "store/store.h"
#include "tests/dist/thread_ranks.h"
#include "tests/jobs/blobs_job.h"

namespace tessera::jobs {
namespace {

using blobs_test::BlobsJob;
using json = nlohmann::json;

struct RankZero {
  TrainSummary summary;
  std::vector<json> evals;
};

RankZero TrainOnTwoRanks(BlobsJob& job, int stage) {
  JobSpec spec = job.spec;
  spec.mutable_parallel()->set_zero_stage(stage);
  // Publishing the best evaluation: at stage 3 every rank gathers for rank 0's copy of it.
  spec.mutable_publish()->set_store((job.dir / ("store" + std::to_string(stage))).string());
  spec.mutable_publish()->set_when(PublishSpec::BEST);
  spec.mutable_publish()->set_metric("test_loss");
  const std::string run = (job.dir / ("stage" + std::to_string(stage))).string();
  RankZero out;
  std::vector<std::string> errors = dist::thread_test::RunRanks(2, [&](dist::ProcessGroup& g) {
    TrainerOptions o;
    o.run_dir = run;
    o.progress = false;
    o.group = &g;
    TrainSummary s = Train(spec, o);
    if (g.rank() == 0) out.summary = s;
  });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(errors[r], "") << "stage " << stage << ", rank " << r;
  for (const json& e : blobs_test::ReadJsonLines(run + "/metrics.jsonl"))
    if (e["event"] == "eval") out.evals.push_back(e);
  return out;
}

TEST(ZeroEvaluation, Stage3EvaluatesLayerByLayerExactlyAsStage0WithUnequalShares) {
  SetNumThreads(1);
  BlobsJob job("zero_eval");
  job.spec.mutable_model()->mutable_mlp()->add_hidden(8);  // three layers: three units to gather
  job.spec.mutable_data()->set_eval_batch_size(50);
  job.spec.mutable_parallel()->set_collective_timeout_s(10);  // unmatched gathers fail in seconds, not minutes
  blobs_test::WriteBlobs(job.dir / "test.csv", 301, 2);
  const RankZero z0 = TrainOnTwoRanks(job, 0), z3 = TrainOnTwoRanks(job, 3);
  ASSERT_EQ(z3.summary.zero_stage, 3);
  ASSERT_EQ(z0.evals.size(), 3u);  // every 20 steps of 60 (the last is the final one)
  ASSERT_EQ(z3.evals.size(), z0.evals.size());
  for (size_t i = 0; i < z0.evals.size(); ++i) {
    EXPECT_EQ(z3.evals[i]["test_loss"], z0.evals[i]["test_loss"]) << "evaluation " << i;
    EXPECT_EQ(z3.evals[i]["test_accuracy"], z0.evals[i]["test_accuracy"]) << "evaluation " << i;
  }
  EXPECT_EQ(z3.summary.test_loss, z0.summary.test_loss);
  EXPECT_EQ(z3.summary.confusion_matrix, z0.summary.confusion_matrix);
  int64_t counted = 0;
  for (const auto& row : z3.summary.confusion_matrix)
    for (int64_t v : row) counted += v;
  EXPECT_EQ(counted, 301);  // every test example, once
  EXPECT_GT(z3.summary.test_accuracy, 0.8);
  ASSERT_EQ(z0.summary.published_version, 1);
  ASSERT_EQ(z3.summary.published_version, 1);
  const int64_t best0 = store::Store((job.dir / "store0").string()).ReadManifest("blobs", 1).lineage().step();
  const store::Lineage l3 = store::Store((job.dir / "store3").string()).ReadManifest("blobs", 1).lineage();
  EXPECT_EQ(l3.step(), best0);
  EXPECT_EQ(l3.zero_stage(), 3);
}

}  // namespace
}  // namespace tessera::jobs
