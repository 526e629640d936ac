#include "datasets/sampler.h"

#include <algorithm>
#include <mutex>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/random.h"

namespace tessera::datasets {
namespace {
// floor(len * r / w) without overflow for any len an index can take.
int64_t SliceStart(int64_t len, int r, int w) { return static_cast<int64_t>((static_cast<__int128>(len) * r) / w); }
}  // namespace

struct DistributedSampler::Cache {
  std::mutex mu;
  int64_t epoch = -1;
  std::shared_ptr<const std::vector<int64_t>> order;
};

DistributedSampler::DistributedSampler(int64_t dataset_size, int64_t global_batch, uint64_t seed, bool shuffle,
                                       bool drop_last, int rank, int world)
    : dataset_size_(dataset_size),
      global_batch_(global_batch),
      seed_(seed),
      shuffle_(shuffle),
      drop_last_(drop_last),
      rank_(rank),
      world_(world),
      cache_(std::make_shared<Cache>()) {
  if (dataset_size < 1) TESSERA_THROW(ValueError, "DistributedSampler: dataset_size must be >= 1, got ", dataset_size);
  if (global_batch < 1) TESSERA_THROW(ValueError, "DistributedSampler: global_batch must be >= 1, got ", global_batch);
  if (world < 1) TESSERA_THROW(ValueError, "DistributedSampler: world must be >= 1, got ", world);
  if (rank < 0 || rank >= world)
    TESSERA_THROW(ValueError, "DistributedSampler: rank ", rank, " is outside [0, ", world, ") for world ", world);
  if (global_batch % world != 0)
    TESSERA_THROW(ValueError, "DistributedSampler: global_batch ", global_batch, " must be divisible by world ", world,
                  " (each rank takes global_batch / world examples per step); use a multiple of ", world);
  if (drop_last && dataset_size < global_batch)
    TESSERA_THROW(ValueError, "DistributedSampler: with drop_last, dataset_size ", dataset_size,
                  " smaller than global_batch ", global_batch, " leaves no step in an epoch");
}

int64_t DistributedSampler::steps_per_epoch() const {
  return drop_last_ ? dataset_size_ / global_batch_ : (dataset_size_ + global_batch_ - 1) / global_batch_;
}

std::vector<int64_t> DistributedSampler::EpochOrder(int64_t epoch) const {
  if (epoch < 0) TESSERA_THROW(ValueError, "DistributedSampler: epoch must be >= 0, got ", epoch);
  return *Order(epoch);
}

std::shared_ptr<const std::vector<int64_t>> DistributedSampler::Order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->order && (cache_->epoch == epoch || !shuffle_)) return cache_->order;
  auto order = std::make_shared<std::vector<int64_t>>(dataset_size_);
  std::iota(order->begin(), order->end(), int64_t{0});
  if (shuffle_) {
    PhiloxGenerator gen(seed_, static_cast<uint64_t>(epoch));
    for (int64_t i = dataset_size_ - 1; i > 0; --i)
      std::swap((*order)[i], (*order)[static_cast<int64_t>(gen.Below(static_cast<uint64_t>(i) + 1))]);
  }
  cache_->epoch = epoch;
  cache_->order = std::move(order);
  return cache_->order;
}

void DistributedSampler::Bounds(int64_t epoch, int64_t step, int64_t* begin, int64_t* end) const {
  if (epoch < 0) TESSERA_THROW(ValueError, "DistributedSampler: epoch must be >= 0, got ", epoch);
  if (step < 0 || step >= steps_per_epoch())
    TESSERA_THROW(ValueError, "DistributedSampler: step ", step, " is outside [0, ", steps_per_epoch(), ") (",
                  dataset_size_, " examples in batches of ", global_batch_, drop_last_ ? ", drop_last" : "", ")");
  *begin = step * global_batch_;
  *end = std::min(*begin + global_batch_, dataset_size_);
}

std::vector<int64_t> DistributedSampler::GlobalBatch(int64_t epoch, int64_t step) const {
  int64_t begin, end;
  Bounds(epoch, step, &begin, &end);
  auto order = Order(epoch);
  return std::vector<int64_t>(order->begin() + begin, order->begin() + end);
}

int64_t DistributedSampler::LocalOffset(int64_t step) const {
  int64_t begin = step * global_batch_, end = std::min(begin + global_batch_, dataset_size_);
  return SliceStart(end - begin, rank_, world_);
}

int64_t DistributedSampler::GlobalBatchSize(int64_t run_step) const {
  const int64_t begin = (run_step % steps_per_epoch()) * global_batch_;
  return std::min(global_batch_, dataset_size_ - begin);
}

uint64_t DistributedSampler::RunPosition(int64_t run_step) const {
  return static_cast<uint64_t>(run_step * global_batch_ + LocalOffset(run_step % steps_per_epoch()));
}

std::vector<int64_t> DistributedSampler::LocalBatch(int64_t epoch, int64_t step) const {
  int64_t begin, end;
  Bounds(epoch, step, &begin, &end);
  const int64_t len = end - begin;
  auto order = Order(epoch);
  int64_t lo = begin + SliceStart(len, rank_, world_), hi = begin + SliceStart(len, rank_ + 1, world_);
  return std::vector<int64_t>(order->begin() + lo, order->begin() + hi);
}

std::vector<int64_t> EvalIndices(int64_t size, int rank, int world) {
  if (size < 0) TESSERA_THROW(ValueError, "EvalIndices: size must be >= 0, got ", size);
  if (world < 1) TESSERA_THROW(ValueError, "EvalIndices: world must be >= 1, got ", world);
  if (rank < 0 || rank >= world)
    TESSERA_THROW(ValueError, "EvalIndices: rank ", rank, " is outside [0, ", world, ") for world ", world);
  std::vector<int64_t> out(static_cast<size_t>(SliceStart(size, rank + 1, world) - SliceStart(size, rank, world)));
  std::iota(out.begin(), out.end(), SliceStart(size, rank, world));
  return out;
}

}  // namespace tessera::datasets
