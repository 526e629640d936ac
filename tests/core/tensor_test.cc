// Tensors, dtypes, views, allocators and the thread setting.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>

#include "core/allocator.h"
#include "core/tensor.h"
#include "core/threads.h"

namespace tessera {
namespace {

TEST(Tensor, ShapeAndDtype) {
  Tensor t = Tensor::Zeros({2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.ndim(), 3);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_TRUE(t.device().is_cpu());
  EXPECT_EQ(t.Describe(), "f32[2, 3, 4] on cpu");
  EXPECT_THROW(t.dim(3), ShapeError);
  EXPECT_THROW(t.data<double>(), ShapeError);
  EXPECT_EQ(Tensor::Zeros({}).numel(), 1);
  EXPECT_EQ(Tensor::Zeros({0, 5}).numel(), 0);
}

TEST(Tensor, ViewsShareTheFlatBuffer) {
  Tensor flat = Tensor::FromVector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {10});
  Tensor w = flat.View(2, {2, 3});
  EXPECT_EQ(w.ToVector(), (std::vector<double>{2, 3, 4, 5, 6, 7}));
  w.Fill(-1);
  EXPECT_EQ(flat.ToVector(), (std::vector<double>{0, 1, -1, -1, -1, -1, -1, -1, 8, 9}));
  Tensor inner = w.View(3, {3});  // a view of a view keeps the absolute offset right
  EXPECT_EQ(inner.storage_offset(), 5);
  EXPECT_THROW(flat.View(8, {3}), ShapeError);
  EXPECT_THROW(flat.View(-1, {3}), ShapeError);
  Tensor rows = Tensor::FromVector({1, 2, 3, 4, 5, 6}, {3, 2}).Slice0(1, 3);
  EXPECT_EQ(rows.ToVector(), (std::vector<double>{3, 4, 5, 6}));
}

TEST(Tensor, ReshapeInfersAndChecks) {
  Tensor t = Tensor::Zeros({4, 6});
  EXPECT_EQ(t.Reshape({-1, 3}).shape(), (Shape{8, 3}));
  EXPECT_EQ(t.Reshape({2, 2, 6}).shape(), (Shape{2, 2, 6}));
  EXPECT_THROW(t.Reshape({5, -1}), ShapeError);
  EXPECT_THROW(t.Reshape({-1, -1}), ShapeError);
  EXPECT_THROW(t.Reshape({7}), ShapeError);
}

TEST(Tensor, CloneCopiesAndCopyFromChecks) {
  Tensor a = Tensor::FromVector({1, 2, 3}, {3});
  Tensor b = a.Clone();
  b.Fill(9);
  EXPECT_EQ(a.ToVector(), (std::vector<double>{1, 2, 3}));
  Tensor c = Tensor::Zeros({3});
  c.CopyFrom(a);
  EXPECT_EQ(c.ToVector(), a.ToVector());
  EXPECT_THROW(c.CopyFrom(Tensor::Zeros({4})), ShapeError);
  EXPECT_THROW(c.CopyFrom(Tensor::Zeros({3}, DType::kF64)), ShapeError);
}

TEST(DType, CastsRoundTripAndRound) {
  Tensor a = Tensor::FromVector({1.0, -2.5, 3.14159265, 65504.0, 1e-7, 0.0}, {6}, DType::kF64);
  std::vector<double> f32 = a.Cast(DType::kF32).ToVector();
  EXPECT_FLOAT_EQ(f32[2], 3.14159265f);
  std::vector<double> bf = a.Cast(DType::kBF16).ToVector();
  EXPECT_EQ(bf[0], 1.0);
  EXPECT_EQ(bf[1], -2.5);
  EXPECT_NEAR(bf[2], 3.140625, 1e-9);  // 8 bits of mantissa, round to nearest
  std::vector<double> h = a.Cast(DType::kF16).ToVector();
  EXPECT_EQ(h[3], 65504.0);  // largest half
  EXPECT_NEAR(h[2], 3.140625, 1e-9);
  EXPECT_NEAR(h[4], 1.1920928955078125e-07, 1e-12);  // subnormal half: 2 * 2^-24
  EXPECT_EQ(h[5], 0.0);
  EXPECT_TRUE(std::isinf(Tensor::FromVector({70000.0}, {1}).Cast(DType::kF16).ToVector()[0]));
  // Every half value survives half -> float -> half.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    uint16_t b = static_cast<uint16_t>(bits);
    float f = HalfToFloat(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), b) << std::hex << bits;
  }
  // Ties round to even in bf16: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(BF16ToFloat(FloatToBF16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
}

TEST(Allocator, ReusesFreedBlocks) {
  Allocator& a = GetAllocator(Device::CPU());
  AllocatorStats before = a.Stats();
  { Tensor t = Tensor::Empty({1000, 1000}); }
  { Tensor t = Tensor::Empty({1000, 1000}); }
  AllocatorStats after = a.Stats();
  EXPECT_GE(after.cache_hits, before.cache_hits + 1);
  EXPECT_LE(after.fresh_allocations, before.fresh_allocations + 1);
  void* p = a.Allocate(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  a.Free(p, 100);
  EXPECT_EQ(AllocationBucket(100), 128u);
  EXPECT_GE(AllocationBucket(5000), 5000u);
  EXPECT_LE(AllocationBucket(1 << 20 | 1), (1u << 20) + (1u << 20) / 8);
}

TEST(Device, CudaUnavailabilityIsExplained) {
  std::string why;
  if (CudaAvailable(&why)) {
    // A GPU is here: then it works (the unavailability path is what runs on every CPU machine).
    Tensor t = Tensor::Full({4}, 2.0, DType::kF32, Device::CUDA(0));
    EXPECT_EQ(t.To(Device::CPU()).ToVector(), (std::vector<double>{2, 2, 2, 2}));
  } else {
    EXPECT_FALSE(why.empty());
    try {
      Tensor::Empty({4}, DType::kF32, Device::CUDA(0));
      FAIL() << "allocating on a missing GPU must throw";
    } catch (const DeviceError& e) {
      EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
    }
  }
}

// docs/errors.md: out of memory is a DeviceError naming the allocator and the bytes asked for.
// 2^48 bytes (256 TiB) is beyond any machine's address space, whatever the overcommit policy.
TEST(Device, OutOfMemoryIsADeviceErrorNamingTheBytes) {
  const int64_t elements = int64_t{1} << 46;  // f32
  const int64_t in_use = GetAllocator(Device::CPU()).Stats().bytes_in_use;
  try {
    Tensor t = Tensor::Empty({elements}, DType::kF32);
    FAIL() << "allocated 256 TiB";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("cpu allocator: out of memory allocating 281474976710656 bytes"),
              std::string::npos)
        << e.what();
  }
  // Nothing was left in use, and allocation goes on working.
  EXPECT_EQ(GetAllocator(Device::CPU()).Stats().bytes_in_use, in_use);
  EXPECT_EQ(Tensor::Full({3}, 1.5, DType::kF32).ToVector(), (std::vector<double>{1.5, 1.5, 1.5}));
}

TEST(Threads, AnExceptionInAPartReachesTheCallerAndThePoolStillWorks) {
  for (int threads : {1, 2}) {
    SetNumThreads(threads);
    EXPECT_THROW(ParallelFor(1000, 1, [](int64_t b, int64_t e) {
                   if (b == 0) throw ValueError("part 0 failed");
                 }),
                 ValueError);
    std::atomic<int64_t> sum{0};
    ParallelFor(1000, 1, [&](int64_t b, int64_t e) { sum += e - b; });
    EXPECT_EQ(sum.load(), 1000);
  }
  SetNumThreads(1);
}

TEST(Threads, SetAndParallelForCoversTheRange) {
  EXPECT_THROW(SetNumThreads(0), ValueError);
  for (int threads : {1, 2, 3}) {
    SetNumThreads(threads);
    EXPECT_EQ(GetNumThreads(), threads);
    std::vector<int> hits(10007, 0);
    ParallelFor(10007, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) ASSERT_EQ(h, 1);
  }
  SetNumThreads(1);
}

}  // namespace
}  // namespace tessera
