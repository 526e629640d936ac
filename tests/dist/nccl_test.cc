// The NCCL process group on one rank and one GPU (the GPU machine has one GPU; multi-rank NCCL
// needs several). Bootstrapped through the MPI world group; skips without a GPU.
#include <gtest/gtest.h>

#include <numeric>

#include "dist/nccl/nccl_process_group.h"
#include "tests/dist/mpi_test_env.h"

namespace tessera::dist {
namespace {

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!CudaAvailable(&why)) GTEST_SKIP() << "no GPU: " << why;
    group_ = MakeNcclProcessGroup(mpi_test::World(), 0);
  }
  std::unique_ptr<ProcessGroup> group_;
};

Tensor Iota(int64_t n, DType dt) {
  std::vector<double> v(n);
  std::iota(v.begin(), v.end(), 1.0);
  return Tensor::FromVector(v, {n}, dt).To(Device::CUDA(0));
}

TEST_F(Nccl, CollectivesOnOneRankAreIdentities) {
  const int world = group_->size();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(1) << 20}) {
    Tensor t = Iota(n, DType::kF32);
    group_->AllReduce(t)->Wait();
    std::vector<double> got = t.ToVector();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], (i + 1.0) * world) << i;
    CollectiveOptions avg;
    avg.op = ReduceOp::kAvg;
    Tensor a = Iota(n, DType::kF64);
    group_->AllReduce(a, avg)->Wait();
    got = a.ToVector();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], i + 1.0) << i;
    Tensor g = Tensor::Zeros({n * world}, DType::kF32, Device::CUDA(0));
    Tensor in = Iota(n, DType::kF32);
    group_->AllGather(in, g)->Wait();
    got = g.ToVector();
    for (int64_t i = 0; i < n * world; ++i) ASSERT_EQ(got[i], i % n + 1.0) << "all-gather, element " << i;
    Tensor rs = Tensor::Zeros({n}, DType::kF32, Device::CUDA(0));
    group_->ReduceScatter(g, rs)->Wait();
    got = rs.ToVector();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], (i + 1.0) * world) << i;
    // Every rank starts from its own values and ends with the root's.
    std::vector<double> mine(n);
    for (int64_t i = 0; i < n; ++i) mine[i] = i + 1.0 + 1000.0 * group_->rank();
    Tensor b = Tensor::FromVector(mine, {n}, DType::kF32).To(Device::CUDA(0));
    group_->Broadcast(b, 0)->Wait();
    got = b.ToVector();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], i + 1.0) << "broadcast, element " << i;
  }
  auto barrier = group_->Barrier();
  barrier->Wait();
  EXPECT_TRUE(barrier->IsCompleted());
}

TEST_F(Nccl, HostTensorsAreRefused) {
  Tensor host = Tensor::Zeros({4});
  EXPECT_THROW(group_->AllReduce(host), ShapeError);
}

}  // namespace
}  // namespace tessera::dist
