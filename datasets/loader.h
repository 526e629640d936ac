// Loader: batches of one rank's examples, built ahead by a background thread, normalised and
// (for training) augmented.
//
// Per example, in this order: random crop (zero-pad by crop_padding pixels on each side, cut an
// H x W window back out) and random horizontal flip -- both only when `augment`, and only for
// image examples [C, H, W] -- then x * scale, then (x - mean[c]) / std[c]. Cropping before
// normalising pads with raw zeros, as torchvision's RandomCrop before Normalize does.
//
// Augmentation is deterministic: the crop offsets and the flip of an example are a pure function
// of (options.seed, epoch, the example's position in the epoch's global order), so they do not
// depend on the number of ranks, on which rank holds the example, on prefetching, or on where a
// resumed epoch starts.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "datasets/dataset.h"
#include "datasets/sampler.h"

namespace tessera::datasets {

struct LoaderOptions {
  int prefetch = 2;              // batches built ahead by the background thread (>= 1)
  float scale = 1.0f;            // x * scale, then
  std::vector<float> mean, std;  // per channel (dim 0 of the example shape) or one value for all;
                                 // (x - mean) / std; empty = none
  int crop_padding = 0;          // random crop: zero-pad by this many pixels each side, crop back
                                 // to H x W (image examples [C, H, W] only)
  bool horizontal_flip = false;  // random horizontal flip with probability 0.5 (images only)
  bool augment = true;           // apply crop/flip (train loaders); false for evaluation
  uint64_t seed = 0;             // augmentation randomness (see the top of this file)
};

// One step's batch for this rank: host tensors features [n, example_shape...] (f32, or i32 token
// ids) and labels i32 [n, label_shape...], where n is this rank's slice of the global batch (it may be 0 in a short last batch).
struct Batch {
  int64_t epoch = 0, step = 0;
  Tensor features, labels;
  std::vector<int64_t> indices;  // the dataset indices of the examples, in order
};

// Checks `options` against examples of `example_shape`; throws ValueError naming the option:
// prefetch < 1, crop_padding < 0, a mean or std with neither 1 nor example_shape[0] values, a std
// value that is zero or not finite, crop or flip (with augment) on examples that are not [C, H, W],
// any normalisation or augmentation of token ids (feature_dtype i32).
void ValidateLoaderOptions(const LoaderOptions& options, const Shape& example_shape,
                           DType feature_dtype = DType::kF32);

// In place on features f32 [n, C, ...] on the host: x * scale, then (x - mean) / std per channel
// (dim 1 of `features`) or with one value for all. Throws ValueError / ShapeError when the options
// do not fit the features.
void Normalize(Tensor& features, const LoaderOptions& options);

// Crop and flip (as configured, regardless of options.augment) in place on image features f32
// [n, C, H, W], example i of the batch being at position first_position + i of the epoch order.
void Augment(Tensor& features, const LoaderOptions& options, int64_t epoch, int64_t first_position);

// Not thread-safe: one thread calls StartEpoch and Next. The sampler is copied; `dataset` is
// referenced: it must outlive the Loader, and nothing else may call dataset.Get while the Loader
// lives (its thread may be building a batch at any time).
class Loader {
 public:
  // Throws ValueError for options that do not fit the dataset (see ValidateLoaderOptions) or a
  // sampler built for a different dataset size.
  Loader(Dataset& dataset, const DistributedSampler& sampler, LoaderOptions options);
  ~Loader();  // stops and joins the thread (waits for a batch being built to finish)
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Begins producing the batches of `epoch` from `first_step` (for resuming mid-epoch; 0 <=
  // first_step <= steps_per_epoch()); a background thread builds up to `prefetch` batches ahead.
  // Batches of an earlier epoch not yet taken are dropped.
  void StartEpoch(int64_t epoch, int64_t first_step = 0);
  // The next batch of the current epoch in order; false after its last step. An exception thrown
  // while building a batch (a DataError from a corrupt file, ...) is rethrown here when that batch
  // is due, and again on every later call until the next StartEpoch. Throws ValueError when no
  // epoch was started.
  bool Next(Batch* batch);

  int64_t steps_per_epoch() const { return sampler_.steps_per_epoch(); }
  const DistributedSampler& sampler() const { return sampler_; }
  const LoaderOptions& options() const { return options_; }

 private:
  void Run();  // the background thread
  Batch Build(int64_t epoch, int64_t step);

  Dataset& dataset_;
  const DistributedSampler sampler_;
  const LoaderOptions options_;

  std::mutex mu_;
  std::condition_variable cv_;  // signals both ways: work for the thread, batches for Next
  bool stop_ = false;
  bool started_ = false;
  uint64_t generation_ = 0;  // bumped by StartEpoch; batches of older generations are dropped
  int64_t epoch_ = 0;
  int64_t next_build_ = 0;    // the step the thread builds next
  int64_t next_take_ = 0;     // the step Next returns next
  std::deque<Batch> ready_;   // built, in step order, starting at next_take_
  std::exception_ptr error_;  // from building step next_build_ (no more are built)
  std::thread thread_;
};

}  // namespace tessera::datasets
