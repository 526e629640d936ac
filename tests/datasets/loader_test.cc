#include "datasets/loader.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <vector>

#include "datasets/dataset.h"
#include "datasets/sampler.h"
#include "tests/datasets/test_util.h"

namespace tessera::datasets {
namespace {

using testing::ThrownMessage;

constexpr int64_t kC = 2, kH = 4, kW = 5;

// n images [2, 4, 5] with feature (i, c, y, x) = 1000 i + 100 c + 10 y + x + 1 (never 0, so a
// padded pixel is recognisable) and label i % 3.
std::unique_ptr<InMemoryDataset> Images(int64_t n) {
  Tensor f = Tensor::Empty({n, kC, kH, kW});
  float* p = f.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < kC; ++c)
      for (int64_t y = 0; y < kH; ++y)
        for (int64_t x = 0; x < kW; ++x) *p++ = static_cast<float>(1000 * i + 100 * c + 10 * y + x + 1);
  Tensor l = Tensor::Empty({n}, DType::kI32);
  for (int64_t i = 0; i < n; ++i) l.data<int32_t>()[i] = static_cast<int32_t>(i % 3);
  return std::make_unique<InMemoryDataset>(f, l, 3, "images");
}

// Dataset::Get of `indices`, then (x * scale - mean[c]) / std[c] computed here.
Tensor Expected(Dataset& d, const std::vector<int64_t>& indices, const LoaderOptions& o) {
  Tensor f, l;
  AllocateBatch(d, static_cast<int64_t>(indices.size()), &f, &l);
  d.Get(indices, f, l);
  float* p = f.data<float>();
  const int64_t inner = kH * kW;
  for (int64_t i = 0; i < f.numel(); ++i) {
    int64_t c = (i / inner) % kC;
    float m = o.mean.empty() ? 0.0f : o.mean[o.mean.size() == 1 ? 0 : c];
    float s = o.std.empty() ? 1.0f : o.std[o.std.size() == 1 ? 0 : c];
    p[i] = (p[i] * o.scale - m) / s;
  }
  return f;
}

std::vector<int32_t> LabelsOf(Dataset& d, const std::vector<int64_t>& indices) {
  std::vector<int32_t> out;
  for (int64_t i : indices) out.push_back(static_cast<int32_t>(i % 3));
  return out;
}

std::vector<int32_t> ToInts(const Tensor& t) {
  std::vector<int32_t> out(t.data<int32_t>(), t.data<int32_t>() + t.numel());
  return out;
}
std::vector<float> ToFloats(const Tensor& t) {
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

std::vector<Batch> Epoch(Loader& loader, int64_t epoch, int64_t first_step = 0) {
  loader.StartEpoch(epoch, first_step);
  std::vector<Batch> out;
  Batch b;
  while (loader.Next(&b)) out.push_back(b);
  EXPECT_FALSE(loader.Next(&b));  // stays finished
  return out;
}

TEST(Loader, BatchesAreDatasetGetOfTheSamplerIndicesNormalised) {
  auto d = Images(23);
  DistributedSampler sampler(23, 4, /*seed=*/5, /*shuffle=*/true, /*drop_last=*/false);
  LoaderOptions o;
  o.scale = 0.5f;
  o.mean = {1.0f, 2.0f};
  o.std = {2.0f, 4.0f};
  Loader loader(*d, sampler, o);
  std::vector<Batch> batches = Epoch(loader, 1);
  ASSERT_EQ(batches.size(), 6u);
  for (size_t s = 0; s < batches.size(); ++s) {
    const Batch& b = batches[s];
    EXPECT_EQ(b.epoch, 1);
    EXPECT_EQ(b.step, static_cast<int64_t>(s));
    EXPECT_EQ(b.indices, sampler.LocalBatch(1, s));
    EXPECT_EQ(b.features.shape(), (Shape{s == 5 ? 3 : 4, kC, kH, kW}));
    EXPECT_EQ(ToFloats(b.features), ToFloats(Expected(*d, b.indices, o))) << "step " << s;
    EXPECT_EQ(ToInts(b.labels), LabelsOf(*d, b.indices));
  }
  // One mean/std value for all channels.
  o.mean = {3.0f};
  o.std = {0.5f};
  Loader single(*d, sampler, o);
  single.StartEpoch(0);
  Batch b;
  ASSERT_TRUE(single.Next(&b));
  EXPECT_EQ(ToFloats(b.features), ToFloats(Expected(*d, sampler.LocalBatch(0, 0), o)));
}

TEST(Loader, PrefetchesAcrossSeveralEpochs) {
  auto d = Images(30);
  for (int prefetch : {1, 3, 8}) {
    DistributedSampler sampler(30, 6, 11, true, false, /*rank=*/1, /*world=*/2);
    LoaderOptions o;
    o.prefetch = prefetch;
    Loader loader(*d, sampler, o);
    std::set<int64_t> seen_orders;
    for (int64_t epoch = 0; epoch < 4; ++epoch) {
      std::vector<Batch> batches = Epoch(loader, epoch);
      ASSERT_EQ(batches.size(), 5u);
      for (int64_t s = 0; s < 5; ++s) {
        EXPECT_EQ(batches[s].epoch, epoch);
        EXPECT_EQ(batches[s].indices, sampler.LocalBatch(epoch, s));
        EXPECT_EQ(ToFloats(batches[s].features), ToFloats(Expected(*d, batches[s].indices, o)));
      }
      seen_orders.insert(batches[0].indices[0] * 1000 + batches[0].indices[1]);
    }
    EXPECT_GT(seen_orders.size(), 1u) << "epochs should reshuffle";
  }
}

TEST(Loader, StartEpochMidwayResumesWithTheSameBatches) {
  auto d = Images(26);
  DistributedSampler sampler(26, 4, 3, true, false);
  LoaderOptions o;
  o.crop_padding = 1;
  o.horizontal_flip = true;
  o.mean = {10.0f};
  o.seed = 9;
  Loader full(*d, sampler, o);
  std::vector<Batch> whole = Epoch(full, 2);
  ASSERT_EQ(whole.size(), 7u);

  Loader resumed(*d, sampler, o);
  Batch b;
  resumed.StartEpoch(0);  // an earlier epoch, abandoned after one batch
  ASSERT_TRUE(resumed.Next(&b));
  std::vector<Batch> tail = Epoch(resumed, 2, 4);
  ASSERT_EQ(tail.size(), 3u);
  for (size_t k = 0; k < tail.size(); ++k) {
    EXPECT_EQ(tail[k].step, static_cast<int64_t>(4 + k));
    EXPECT_EQ(tail[k].indices, whole[4 + k].indices);
    EXPECT_EQ(ToFloats(tail[k].features), ToFloats(whole[4 + k].features));
  }
  EXPECT_TRUE(Epoch(resumed, 2, 7).empty());  // resuming after the last step: nothing left
  // Restarting the same epoch from 0 after a partial pass starts over.
  resumed.StartEpoch(2);
  ASSERT_TRUE(resumed.Next(&b));
  ASSERT_TRUE(resumed.Next(&b));
  std::vector<Batch> again = Epoch(resumed, 2);
  ASSERT_EQ(again.size(), whole.size());
  EXPECT_EQ(ToFloats(again[0].features), ToFloats(whole[0].features));
}

// True when `got` (one example [C, H, W]) is `src` cropped at offsets (dy, dx) of the image padded
// by `pad`, then possibly flipped, for some dy, dx in [0, 2 pad] and flip.
bool IsCropFlipOf(const float* got, const float* src, int64_t pad, bool* flipped, bool* moved) {
  for (int flip = 0; flip < 2; ++flip)
    for (int64_t dy = 0; dy <= 2 * pad; ++dy)
      for (int64_t dx = 0; dx <= 2 * pad; ++dx) {
        bool match = true;
        for (int64_t c = 0; c < kC && match; ++c)
          for (int64_t y = 0; y < kH && match; ++y)
            for (int64_t x = 0; x < kW && match; ++x) {
              int64_t sy = y + dy - pad, sx = (flip ? kW - 1 - x : x) + dx - pad;
              float want = (sy >= 0 && sy < kH && sx >= 0 && sx < kW) ? src[(c * kH + sy) * kW + sx] : 0.0f;
              match = got[(c * kH + y) * kW + x] == want;
            }
        if (match) {
          *flipped = flip;
          *moved = dy != pad || dx != pad;
          return true;
        }
      }
  return false;
}

TEST(Loader, AugmentationIsDeterministicAndTheSameForRankSlices) {
  auto d = Images(20);
  LoaderOptions o;
  o.crop_padding = 2;
  o.horizontal_flip = true;
  o.seed = 7;
  DistributedSampler one(20, 8, 1, true, false, 0, 1);
  Loader world1(*d, one, o);
  std::vector<Batch> all = Epoch(world1, 3);
  ASSERT_EQ(all.size(), 3u);

  // Each example is a crop and flip of its original; some are flipped, some shifted, not all.
  int flips = 0, moves = 0, examples = 0;
  for (const Batch& b : all) {
    Tensor raw, labels;
    AllocateBatch(*d, static_cast<int64_t>(b.indices.size()), &raw, &labels);
    d->Get(b.indices, raw, labels);
    for (size_t i = 0; i < b.indices.size(); ++i) {
      bool flipped = false, moved = false;
      ASSERT_TRUE(IsCropFlipOf(b.features.data<float>() + i * kC * kH * kW, raw.data<float>() + i * kC * kH * kW, 2,
                               &flipped, &moved))
          << "step " << b.step << " example " << i;
      flips += flipped;
      moves += moved;
      ++examples;
    }
  }
  EXPECT_GT(flips, 2);
  EXPECT_LT(flips, examples - 2);
  EXPECT_GT(moves, 2);

  // The same seed again: the same pixels. Another seed: different ones.
  Loader again(*d, one, o);
  std::vector<Batch> repeat = Epoch(again, 3);
  for (size_t s = 0; s < all.size(); ++s) EXPECT_EQ(ToFloats(repeat[s].features), ToFloats(all[s].features));
  LoaderOptions other = o;
  other.seed = 8;
  Loader reseeded(*d, one, other);
  EXPECT_NE(ToFloats(Epoch(reseeded, 3)[0].features), ToFloats(all[0].features));

  // Rank 1 of 2 gets exactly the second half of each world-1 batch (a short last batch of 4: 2 + 2).
  for (int rank : {0, 1}) {
    DistributedSampler two(20, 8, 1, true, false, rank, 2);
    Loader half(*d, two, o);
    std::vector<Batch> mine = Epoch(half, 3);
    ASSERT_EQ(mine.size(), all.size());
    for (size_t s = 0; s < all.size(); ++s) {
      std::vector<float> whole = ToFloats(all[s].features);
      size_t n = whole.size() / 2;
      std::vector<float> part(whole.begin() + rank * n, whole.begin() + (rank + 1) * n);
      EXPECT_EQ(ToFloats(mine[s].features), part) << "rank " << rank << " step " << s;
    }
  }

  // augment = false: normalised only.
  LoaderOptions eval = o;
  eval.augment = false;
  eval.scale = 2.0f;
  Loader plain(*d, one, eval);
  std::vector<Batch> unaugmented = Epoch(plain, 3);
  for (const Batch& b : unaugmented) EXPECT_EQ(ToFloats(b.features), ToFloats(Expected(*d, b.indices, eval)));
}

// Throws DataError when asked for index `bad_`.
class FailingDataset : public Dataset {
 public:
  FailingDataset(std::unique_ptr<InMemoryDataset> inner, int64_t bad) : inner_(std::move(inner)), bad_(bad) {}
  int64_t size() const override { return inner_->size(); }
  Shape example_shape() const override { return inner_->example_shape(); }
  int num_classes() const override { return inner_->num_classes(); }
  void Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) override {
    for (int64_t i : indices)
      if (i == bad_) TESSERA_THROW(DataError, "failing dataset: example ", i, " is corrupt");
    inner_->Get(indices, features, labels);
  }
  std::string Describe() const override { return "failing"; }

 private:
  std::unique_ptr<InMemoryDataset> inner_;
  int64_t bad_;
};

TEST(Loader, AnErrorInTheBackgroundThreadReachesNext) {
  FailingDataset d(Images(16), /*bad=*/9);
  DistributedSampler sampler(16, 4, 0, /*shuffle=*/false, false);
  LoaderOptions o;
  o.prefetch = 4;
  Loader loader(d, sampler, o);
  loader.StartEpoch(0);
  Batch b;
  ASSERT_TRUE(loader.Next(&b));
  ASSERT_TRUE(loader.Next(&b));
  EXPECT_EQ(b.step, 1);
  EXPECT_CONTAINS(ThrownMessage<DataError>([&] { loader.Next(&b); }), "example 9 is corrupt");
  EXPECT_THROW(loader.Next(&b), DataError);  // until the next StartEpoch
  // A fresh start runs again up to the bad batch.
  loader.StartEpoch(0, 3);
  ASSERT_TRUE(loader.Next(&b));
  EXPECT_EQ(b.step, 3);
  EXPECT_FALSE(loader.Next(&b));
}

TEST(Loader, ShortSlicesMayBeEmpty) {
  // 11 examples in batches of 4 over 4 ranks: the last global batch has 3, rank 0's slice is empty.
  auto d = Images(11);
  DistributedSampler sampler(11, 4, 2, true, false, /*rank=*/0, /*world=*/4);
  Loader loader(*d, sampler, LoaderOptions{});
  std::vector<Batch> batches = Epoch(loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[2].features.shape(), (Shape{0, kC, kH, kW}));
  EXPECT_EQ(batches[2].labels.shape(), (Shape{0}));
}

TEST(Loader, RejectsOptionsThatDoNotFit) {
  auto d = Images(8);
  DistributedSampler sampler(8, 4, 0, true, false);
  LoaderOptions o;
  o.prefetch = 0;
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { Loader(*d, sampler, o); }), "prefetch must be >= 1, got 0");
  o = LoaderOptions{};
  o.mean = {1, 2, 3};
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { Loader(*d, sampler, o); }),
                  "LoaderOptions.mean has 3 values; expected 1");
  o = LoaderOptions{};
  o.std = {1, 0};
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { Loader(*d, sampler, o); }), "std[1] must be finite and non-zero");
  o = LoaderOptions{};
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { Loader(*d, DistributedSampler(9, 4, 0, true, false), o); }),
                  "built for 9 examples");

  // Crop and flip need images; a table with augment = false is fine.
  Tensor table = Tensor::Zeros({6, 3});
  InMemoryDataset rows(table, Tensor::Zeros({6}, DType::kI32), 1, "table");
  DistributedSampler rs(6, 2, 0, true, false);
  o.horizontal_flip = true;
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { Loader(rows, rs, o); }),
                  "horizontal_flip needs image examples [C, H, W]");
  o.augment = false;
  EXPECT_NO_THROW(Loader(rows, rs, o));

  Loader loader(*d, sampler, LoaderOptions{});
  Batch b;
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { loader.Next(&b); }), "before StartEpoch");
  EXPECT_THROW(loader.StartEpoch(0, 3), ValueError);
  EXPECT_THROW(loader.StartEpoch(-1), ValueError);
}

TEST(Normalize, PerChannelOrOneValueInClosedForm) {
  // Table features [2, 3]: "channels" are the 3 columns.
  Tensor t = Tensor::FromVector({1, 2, 3, 4, 5, 6}, {2, 3});
  LoaderOptions o;
  o.scale = 2.0f;
  o.mean = {1, 2, 3};
  o.std = {1, 2, 4};
  Normalize(t, o);
  EXPECT_EQ(t.ToVector(), (std::vector<double>{1, 1, 0.75, 7, 4, 2.25}));
  Tensor u = Tensor::FromVector({1, 2, 3, 4}, {2, 2});
  LoaderOptions one;
  one.mean = {1};
  one.std = {0.5f};
  Normalize(u, one);
  EXPECT_EQ(u.ToVector(), (std::vector<double>{0, 2, 4, 6}));
  EXPECT_THROW(Normalize(u, o), ValueError);  // 3 values for 2 channels
  Tensor ints = Tensor::Zeros({2, 2}, DType::kI32);
  EXPECT_THROW(Normalize(ints, one), ShapeError);
}

TEST(Loader, DestroysCleanlyMidEpoch) {
  auto d = Images(40);
  DistributedSampler sampler(40, 4, 0, true, false);
  LoaderOptions o;
  o.prefetch = 2;
  for (int taken = 0; taken < 3; ++taken) {
    Loader loader(*d, sampler, o);
    loader.StartEpoch(0);
    Batch b;
    for (int k = 0; k < taken; ++k) ASSERT_TRUE(loader.Next(&b));
  }
  Loader never_started(*d, sampler, o);
}

}  // namespace
}  // namespace tessera::datasets
