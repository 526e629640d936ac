// Checkpoints read back exactly: bitwise round trips for every optimizer, a CNN and
// float64, loads into partial (ZeRO-style) layouts, and the metadata.
#include <gtest/gtest.h>

#include <zlib.h>

#include <nlohmann/json.hpp>

#include "tests/jobs/checkpoint/fixture.h"

namespace tessera::jobs::ckpt_test {
namespace {

// ---- round trips ------------------------------------------------------------------------------

TEST_F(CheckpointTest, RoundTripIsBitwiseForEveryOptimizer) {
  for (OptKind kind : {OptKind::kNone, OptKind::kAdam, OptKind::kAdamW, OptKind::kSgdMomentum, OptKind::kRmsprop}) {
    SCOPED_TRACE(OptName(kind));
    State saved = MakeMlp(11, kind, 3);
    std::string path = Save(saved, 3, std::string("ckpts-") + OptName(kind));
    ASSERT_TRUE(fs::is_regular_file(path)) << path;
    State fresh = MakeMlp(99, kind, 0);
    ExpectBitwiseRoundTrip(path, saved, fresh);
    CheckpointInfo info = ReadCheckpointInfo(path);
    EXPECT_EQ(info.meta.optimizer, saved.opt ? saved.opt->name() : "");
    // /model/<param> for each parameter, /optim/<param>/<state> for each state tensor.
    size_t states = saved.opt ? saved.opt->State().size() : 0;
    EXPECT_EQ(info.tensors.size(), saved.params->entries().size() * (1 + states));
  }
}

TEST_F(CheckpointTest, RoundTripIsBitwiseForACnnWithSgdMomentum) {
  State saved = MakeState(models::BuildCnn(Cnn()), 5, OptKind::kSgdMomentum, 4);
  std::string path = Save(saved, 4);
  State fresh = MakeState(models::BuildCnn(Cnn()), 6, OptKind::kSgdMomentum, 0);
  ExpectBitwiseRoundTrip(path, saved, fresh);
  // The conv weights are stored at their logical 4-D shape.
  CheckpointInfo info = ReadCheckpointInfo(path);
  bool found = false;
  for (const CheckpointTensor& t : info.tensors)
    if (t.path == "/model/0.weight") {
      found = true;
      EXPECT_EQ(t.shape, (Shape{3, 2, 3, 3}));
    }
  EXPECT_TRUE(found);
}

TEST_F(CheckpointTest, RoundTripIsBitwiseInFloat64) {
  State saved = MakeMlp(21, OptKind::kAdam, 3, DType::kF64);
  std::string path = Save(saved, 3);
  CheckpointInfo info = ReadCheckpointInfo(path);
  EXPECT_EQ(info.meta.dtype, "float64");
  for (const CheckpointTensor& t : info.tensors) {
    EXPECT_EQ(t.dtype, DType::kF64) << t.path;
    EXPECT_EQ(t.bytes, NumElements(t.shape) * 8) << t.path;
  }
  State fresh = MakeMlp(22, OptKind::kAdam, 0, DType::kF64);
  ExpectBitwiseRoundTrip(path, saved, fresh);
  EXPECT_TRUE(VerifyCheckpoint(path).empty());
}

// ---- partial layouts: what one rank of a sharded job loads -----------------------------------

TEST_F(CheckpointTest, LoadIntoASubRangeFillsExactlyThatSlice) {
  State saved = MakeMlp(31, OptKind::kAdam, 3);
  std::string path = Save(saved, 3);
  CheckpointLayout want = saved.Layout();
  const int64_t n = want.flat_size;
  // The flat layout (16-element alignment): 1.weight [0, 128), 1.bias [128, 144), 3.weight
  // [144, 336), 3.bias [336, 348), 5.weight [352, 388), 5.bias [400, 403) of 416. Ranges that start
  // and end inside tensors, on tensor boundaries, and cover nothing but padding.
  ASSERT_EQ(n, 416);
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{130, 340}, {0, 128}, {1, n - 1}, {345, 405}, {348, 352},
                                                           {n - 7, n}};
  const float kSentinel = -12345.5f;
  for (auto [lo, hi] : ranges) {
    SCOPED_TRACE("[" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
    State fresh = MakeMlp(32, OptKind::kAdam, 0);
    CheckpointLayout part = fresh.Layout();
    for (auto& b : part.buffers) b = {Tensor::Full({hi - lo}, kSentinel), lo};
    LoadCheckpoint(path, part);
    for (size_t b = 0; b < part.buffers.size(); ++b) {
      int covered = 0;
      for (int64_t p = lo; p < hi; ++p) {
        bool in_entry = false;
        for (const auto& e : part.entries)
          if (e.buffer == static_cast<int>(b) && p >= e.offset && p < e.offset + NumElements(e.shape)) in_entry = true;
        const char* got = BytesAt(part, static_cast<int>(b), p);
        if (in_entry) {
          ++covered;
          ASSERT_EQ(std::memcmp(got, BytesAt(want, static_cast<int>(b), p), 4), 0) << "buffer " << b << " position " << p;
        } else {
          float v;
          std::memcpy(&v, got, 4);
          ASSERT_EQ(v, kSentinel) << "buffer " << b << " position " << p << " (padding) was written";
        }
      }
      if (lo == 348 || lo == n - 7) {
        EXPECT_EQ(covered, 0);  // padding only
      } else {
        EXPECT_GT(covered, 0);
      }
    }
  }
}

TEST_F(CheckpointTest, ShardedLoadsReassembleTheWholeState) {
  State saved = MakeMlp(41, OptKind::kAdam, 2);
  std::string path = Save(saved, 2);
  const int64_t n = saved.params->numel();
  // Three "ranks", each with the full model but the optimizer state of its own third only
  // (MakeCheckpointLayout's optimizer_base), as under ZeRO.
  std::vector<Tensor> exp_avg(3), exp_avg_sq(3);
  for (int r = 0; r < 3; ++r) {
    const int64_t lo = n * r / 3, hi = n * (r + 1) / 3;
    State rank = MakeState(models::BuildMlp(Mlp()), 43 + r, OptKind::kAdam, 0, DType::kF32, lo, hi);
    LoadCheckpoint(path, rank.Layout());
    ASSERT_EQ(FirstDifference(MakeCheckpointLayout(*saved.params, nullptr), MakeCheckpointLayout(*rank.params, nullptr)), "") << "rank " << r;
    exp_avg[r] = rank.opt->State()[0].second.Clone();
    exp_avg_sq[r] = rank.opt->State()[1].second.Clone();
    ASSERT_EQ(exp_avg[r].numel(), hi - lo);
  }
  // The slices, concatenated, are the saved state everywhere but in the padding (zero on both).
  const auto& st = saved.opt->State();
  ASSERT_EQ(st[0].first, "exp_avg");
  ASSERT_EQ(st[1].first, "exp_avg_sq");
  int64_t pos = 0;
  for (int r = 0; r < 3; ++r) {
    for (int64_t i = 0; i < exp_avg[r].numel(); ++i, ++pos) {
      ASSERT_EQ(std::memcmp(exp_avg[r].data<float>() + i, st[0].second.data<float>() + pos, 4), 0) << pos;
      ASSERT_EQ(std::memcmp(exp_avg_sq[r].data<float>() + i, st[1].second.data<float>() + pos, 4), 0) << pos;
    }
  }
  EXPECT_EQ(pos, n);
}

// ---- metadata and files on disk ---------------------------------------------------------------

TEST_F(CheckpointTest, MetadataRoundTrips) {
  State saved = MakeMlp(61, OptKind::kAdamW, 5);
  std::string path = Save(saved, 12);
  const CheckpointMeta want = MakeMeta(12, saved.opt.get());
  CheckpointInfo info = ReadCheckpointInfo(path);
  EXPECT_EQ(info.path, path);
  EXPECT_EQ(info.kind, "checkpoint");
  const CheckpointMeta& m = info.meta;
  EXPECT_EQ(m.format_version, kCheckpointFormatVersion);
  EXPECT_FALSE(m.tessera_version.empty());
  EXPECT_EQ(m.created.size(), 20u) << m.created;  // 2024-01-02T03:04:05Z
  EXPECT_EQ(m.step, 12);
  EXPECT_EQ(m.epoch, 1);
  EXPECT_EQ(m.step_in_epoch, 5);
  EXPECT_EQ(m.steps_per_epoch, 7);
  EXPECT_EQ(m.global_batch, 32);
  EXPECT_EQ(m.samples_seen, 12 * 32);
  EXPECT_EQ(m.seed, want.seed);
  EXPECT_EQ(m.world_size, 1);
  EXPECT_EQ(m.data_parallel, 1);
  EXPECT_EQ(m.zero_stage, 0);
  EXPECT_EQ(m.tensor_parallel, 1);
  EXPECT_EQ(m.pipeline_parallel, 1);
  EXPECT_EQ(m.optimizer, "adamw");
  EXPECT_EQ(m.optimizer_step, 5);
  EXPECT_EQ(m.lr_schedule, want.lr_schedule);
  EXPECT_EQ(m.lr, want.lr);
  EXPECT_EQ(m.job_spec, want.job_spec);
  EXPECT_EQ(m.dtype, "float32");

  // The tensor list: every layout entry at its shape, with zlib's CRC-32 of the live bytes.
  CheckpointLayout l = saved.Layout();
  ASSERT_EQ(info.tensors.size(), l.entries.size());
  for (size_t i = 0; i < l.entries.size(); ++i) {
    const auto& e = l.entries[i];
    const CheckpointTensor& t = info.tensors[i];
    EXPECT_EQ(t.path, e.path);
    EXPECT_EQ(t.shape, e.shape) << t.path;
    EXPECT_EQ(t.dtype, DType::kF32) << t.path;
    EXPECT_EQ(t.bytes, NumElements(e.shape) * 4) << t.path;
    const uint32_t crc =
        static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(BytesAt(l, e.buffer, e.offset)), t.bytes));
    EXPECT_TRUE(t.has_crc) << t.path;
    EXPECT_EQ(t.crc32, crc) << t.path;
    EXPECT_EQ(CrcAttr(path, t.path), crc) << t.path;
  }

  // /rng/rank_state: (seed, next example position) per rank.
  std::vector<hsize_t> dims;
  std::vector<uint64_t> rs = ReadU64Dataset(path, "/rng/rank_state", &dims);
  EXPECT_EQ(dims, (std::vector<hsize_t>{1, 2}));
  EXPECT_EQ(rs, (std::vector<uint64_t>{want.seed, static_cast<uint64_t>(want.rank_next_example[0])}));

  // JSON and text renderings carry the same.
  nlohmann::json j = nlohmann::json::parse(CheckpointInfoJson(info));
  EXPECT_EQ(j["kind"], "checkpoint");
  EXPECT_EQ(j["step"], 12);
  EXPECT_EQ(j["optimizer_step"], 5);
  EXPECT_EQ(j["seed"].get<uint64_t>(), want.seed);
  ASSERT_EQ(j["tensors"].size(), info.tensors.size());
  EXPECT_EQ(j["tensors"][0]["path"], info.tensors[0].path);
  EXPECT_EQ(j["tensors"][0]["crc32"].get<uint32_t>(), info.tensors[0].crc32);
  EXPECT_CONTAINS(DescribeCheckpoint(info), "/model/5.bias");
}

}  // namespace
}  // namespace tessera::jobs::ckpt_test
