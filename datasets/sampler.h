// DistributedSampler: which examples each data-parallel rank takes at each step of each epoch.
//
// The global batch at step s of epoch e is a pure function of (seed, e, s) -- the same whatever
// the number of ranks -- so a job resumed on a different world size sees the same data in the
// same order. Epoch e visits the examples in the order of a Fisher-Yates shuffle of 0 .. N-1
// driven by PhiloxGenerator(seed, /*stream=*/e) (file order when shuffle is false); step s takes
// positions [s * B, min((s + 1) * B, N)) of that order, so the last batch is smaller when B does
// not divide N (dropped instead when drop_last). Rank r of W takes the slice
// [floor(len * r / W), floor(len * (r + 1) / W)) of a global batch of len examples: B / W each for
// a full batch, sizes differing by at most one (possibly zero) for a short last batch.
//
// Thread-safe: all methods are const, and the per-epoch order is computed once and shared by
// copies of the sampler.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace tessera::datasets {

class DistributedSampler {
 public:
  // Throws ValueError (naming the values) unless dataset_size >= 1, global_batch >= 1, world >= 1,
  // 0 <= rank < world, world divides global_batch, and (with drop_last) dataset_size >=
  // global_batch, so that an epoch has at least one step.
  DistributedSampler(int64_t dataset_size, int64_t global_batch, uint64_t seed, bool shuffle, bool drop_last,
                     int rank = 0, int world = 1);

  // ceil(N / B), or floor(N / B) with drop_last.
  int64_t steps_per_epoch() const;
  // The dataset indices of the global batch at `step` of `epoch`, in order. Throws ValueError for
  // epoch < 0 or a step outside [0, steps_per_epoch()).
  std::vector<int64_t> GlobalBatch(int64_t epoch, int64_t step) const;
  // This rank's slice of GlobalBatch(epoch, step).
  std::vector<int64_t> LocalBatch(int64_t epoch, int64_t step) const;
  // Where this rank's slice starts within the global batch at `step` (of any epoch); also the
  // position of its first example in the epoch order minus step * global_batch().
  int64_t LocalOffset(int64_t step) const;
  // The whole visiting order of `epoch` (a permutation of 0 .. N-1).
  std::vector<int64_t> EpochOrder(int64_t epoch) const;

  // By the step of the run (counted over epochs, from 0): the examples of its global batch, over
  // every rank (B, or fewer for the last batch of an epoch), and the position in the run of this
  // rank's first example, run_step * B + LocalOffset: the key of per-example randomness (dropout
  // masks), the same for an example on any number of ranks.
  int64_t GlobalBatchSize(int64_t run_step) const;
  uint64_t RunPosition(int64_t run_step) const;

  int rank() const { return rank_; }
  int world() const { return world_; }
  int64_t global_batch() const { return global_batch_; }
  int64_t dataset_size() const { return dataset_size_; }
  uint64_t seed() const { return seed_; }
  bool shuffle() const { return shuffle_; }
  bool drop_last() const { return drop_last_; }

 private:
  struct Cache;
  // The order of `epoch`, computed at most once per epoch in a row.
  std::shared_ptr<const std::vector<int64_t>> Order(int64_t epoch) const;
  // [begin, end) of the global batch at `step` in the epoch order; validates epoch and step.
  void Bounds(int64_t epoch, int64_t step, int64_t* begin, int64_t* end) const;

  int64_t dataset_size_, global_batch_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  int rank_, world_;
  std::shared_ptr<Cache> cache_;
};

// For evaluation: this rank's share of every example exactly once, in file order: indices
// [floor(N * r / W), floor(N * (r + 1) / W)). Throws ValueError for size < 0, world < 1 or a rank
// outside [0, world).
std::vector<int64_t> EvalIndices(int64_t size, int rank, int world);

}  // namespace tessera::datasets
