// The Reducer and BroadcastParameters (dist/reducer.h) on the thread process group: N ranks
// reproduce one process with several buckets, with and without gradient accumulation, and ranks
// that built another model are named. Milliseconds per case, and run under ThreadSanitizer
// (scripts/sanitize.sh tsan); data_parallel_test runs the same training under mpirun.
#include <gtest/gtest.h>

#include "core/threads.h"
#include "tests/dist/dp_train.h"
#include "tests/dist/thread_ranks.h"

namespace tessera::dist {
namespace {

using thread_test::RunRanks;

TEST(Reducer, ThreadRanksReproduceOneProcess) {
  SetNumThreads(1);  // the ranks share this process's thread pool
  const int steps = 8;
  for (int n : {2, 3}) {
    for (int accumulate : {1, 2}) {
      SCOPED_TRACE(std::to_string(n) + " ranks, " + std::to_string(accumulate) + " micro-batches");
      const int64_t global = 8 * n;
      const dp_test::Data data = dp_test::MakeData(steps, global);
      dp_test::TrainConfig c;
      c.accumulate = accumulate;
      const std::vector<double> single = dp_test::Train(data, global, steps, nullptr, c);
      std::vector<std::vector<double>> ranks(n);
      std::vector<size_t> buckets(n);
      std::vector<std::string> errors = RunRanks(n, [&](ProcessGroup& g) {
        dp_test::TrainConfig rc = c;
        rc.buckets = &buckets[g.rank()];
        ranks[g.rank()] = dp_test::Train(data, global, steps, &g, rc);
      });
      for (int r = 0; r < n; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
      EXPECT_GE(buckets[0], 2u) << "the test must exercise several buckets";
      for (int r = 1; r < n; ++r) EXPECT_TRUE(ranks[r] == ranks[0]) << "rank " << r << " ended elsewhere than rank 0";
      std::string worst;
      EXPECT_LE(dp_test::RelativeDifference(single, ranks[0], &worst), 1e-5) << worst;
    }
  }
}

TEST(Reducer, BroadcastParametersNamesRanksThatBuiltAnotherModel) {
  std::vector<std::string> errors = RunRanks(3, [](ProcessGroup& g) {
    models::MlpConfig c;
    c.in_features = 8;
    c.hidden = {g.rank() == 1 ? 20 : 16};
    c.out_features = 3;
    auto net = models::BuildMlp(c);
    nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 1);
    BroadcastParameters(params, g, 0, 30);
  });
  for (int r = 0; r < 3; ++r)
    EXPECT_NE(errors[r].find("the ranks built different models: rank 1 differs from rank 0 (here, on rank " +
                             std::to_string(r) + ": 4 parameters"),
              std::string::npos)
        << "rank " << r << ": " << errors[r];
}

}  // namespace
}  // namespace tessera::dist
