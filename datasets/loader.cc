#include "datasets/loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/model_spec.h"
#include "core/random.h"

namespace tessera::datasets {
namespace {

// Augmentation draws from counter (position, kAugmentStream | epoch) under key options.seed: a
// counter space the sampler's shuffle (high counter word = epoch < 2^63) never reaches, even when
// both use the same seed.
constexpr uint64_t kAugmentStream = uint64_t{1} << 63;

void CheckPerChannel(const char* name, const std::vector<float>& values, int64_t channels, const Shape& example_shape) {
  if (values.empty() || values.size() == 1 || static_cast<int64_t>(values.size()) == channels) return;
  TESSERA_THROW(ValueError, "LoaderOptions.", name, " has ", values.size(), " values; expected 1 (for all) or ",
                channels, " (one per channel, dim 0 of the example shape ", ShapeString(example_shape), ")");
}

}  // namespace

void ValidateLoaderOptions(const LoaderOptions& o, const Shape& example_shape, DType feature_dtype) {
  if (o.prefetch < 1) TESSERA_THROW(ValueError, "LoaderOptions.prefetch must be >= 1, got ", o.prefetch);
  if (feature_dtype != DType::kF32) {  // token ids: nothing to scale, normalise or augment
    if (o.scale != 1.0f || !o.mean.empty() || !o.std.empty() || o.crop_padding > 0 || o.horizontal_flip)
      TESSERA_THROW(ValueError, "LoaderOptions: the examples are ", DTypeName(feature_dtype),
                    " token ids, which take no normalisation (scale, mean, std) or augmentation (crop, flip)");
    return;
  }
  if (o.crop_padding < 0) TESSERA_THROW(ValueError, "LoaderOptions.crop_padding must be >= 0, got ", o.crop_padding);
  if (!std::isfinite(o.scale)) TESSERA_THROW(ValueError, "LoaderOptions.scale must be finite, got ", o.scale);
  if (example_shape.empty())
    TESSERA_THROW(ValueError, "Loader: examples of shape [] have no channel dimension to normalise");
  CheckPerChannel("mean", o.mean, example_shape[0], example_shape);
  CheckPerChannel("std", o.std, example_shape[0], example_shape);
  for (size_t c = 0; c < o.mean.size(); ++c)
    if (!std::isfinite(o.mean[c]))
      TESSERA_THROW(ValueError, "LoaderOptions.mean[", c, "] must be finite, got ", o.mean[c]);
  for (size_t c = 0; c < o.std.size(); ++c)
    if (!std::isfinite(o.std[c]) || o.std[c] == 0.0f)
      TESSERA_THROW(ValueError, "LoaderOptions.std[", c, "] must be finite and non-zero, got ", o.std[c]);
  if (o.augment && (o.crop_padding > 0 || o.horizontal_flip) && example_shape.size() != 3)
    TESSERA_THROW(ValueError, "LoaderOptions: ", o.crop_padding > 0 ? "crop_padding" : "horizontal_flip",
                  " needs image examples [C, H, W], but the examples have shape ", ShapeString(example_shape),
                  "; turn it off (or set augment = false) for this dataset");
}

void Normalize(Tensor& features, const LoaderOptions& o) {
  if (!features.defined() || features.dtype() != DType::kF32 || !features.device().is_cpu() || features.ndim() < 2)
    TESSERA_THROW(ShapeError, "Normalize: expected host features f32 [n, C, ...], got ",
                  features.defined() ? features.Describe() : std::string("an undefined tensor"));
  const Shape example_shape(features.shape().begin() + 1, features.shape().end());
  CheckPerChannel("mean", o.mean, example_shape[0], example_shape);
  CheckPerChannel("std", o.std, example_shape[0], example_shape);
  models::NormalizeExamples(features, o.scale, o.mean, o.std);
}

void Augment(Tensor& features, const LoaderOptions& o, int64_t epoch, int64_t first_position) {
  if (!features.defined() || features.dtype() != DType::kF32 || !features.device().is_cpu() || features.ndim() != 4)
    TESSERA_THROW(ShapeError, "Augment: expected host image features f32 [n, C, H, W], got ",
                  features.defined() ? features.Describe() : std::string("an undefined tensor"));
  if (o.crop_padding < 0) TESSERA_THROW(ValueError, "LoaderOptions.crop_padding must be >= 0, got ", o.crop_padding);
  if (o.crop_padding == 0 && !o.horizontal_flip) return;
  const int64_t n = features.dim(0), channels = features.dim(1), h = features.dim(2), w = features.dim(3);
  const int64_t pad = o.crop_padding;
  std::vector<float> plane(static_cast<size_t>(h * w));
  float* x = features.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    Philox4x32 r =
        Philox(static_cast<uint64_t>(first_position + i), kAugmentStream | static_cast<uint64_t>(epoch), o.seed);
    // Window offsets in [0, 2 * pad] within the padded image; flip with probability 1/2.
    const int64_t dy = std::min<int64_t>(2 * pad, static_cast<int64_t>(UniformFromBits(r.v[0]) * (2 * pad + 1)));
    const int64_t dx = std::min<int64_t>(2 * pad, static_cast<int64_t>(UniformFromBits(r.v[1]) * (2 * pad + 1)));
    const bool flip = o.horizontal_flip && UniformFromBits(r.v[2]) < 0.5f;
    if (dy == pad && dx == pad && !flip) continue;
    for (int64_t c = 0; c < channels; ++c) {
      float* p = x + ((i * channels) + c) * h * w;
      std::memcpy(plane.data(), p, plane.size() * sizeof(float));
      for (int64_t y = 0; y < h; ++y) {
        const int64_t sy = y + dy - pad;
        for (int64_t xo = 0; xo < w; ++xo) {
          const int64_t sx = (flip ? w - 1 - xo : xo) + dx - pad;
          p[y * w + xo] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? plane[sy * w + sx] : 0.0f;
        }
      }
    }
  }
}

Loader::Loader(Dataset& dataset, const DistributedSampler& sampler, LoaderOptions options)
    : dataset_(dataset), sampler_(sampler), options_(std::move(options)) {
  ValidateLoaderOptions(options_, dataset_.example_shape(), dataset_.feature_dtype());
  if (sampler_.dataset_size() != dataset_.size())
    TESSERA_THROW(ValueError, "Loader: the sampler was built for ", sampler_.dataset_size(), " examples but ",
                  dataset_.Describe(), " holds ", dataset_.size());
  thread_ = std::thread([this] { Run(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Loader::StartEpoch(int64_t epoch, int64_t first_step) {
  if (epoch < 0) TESSERA_THROW(ValueError, "Loader::StartEpoch: epoch must be >= 0, got ", epoch);
  if (first_step < 0 || first_step > steps_per_epoch())
    TESSERA_THROW(ValueError, "Loader::StartEpoch: first_step ", first_step, " is outside [0, ", steps_per_epoch(),
                  "] for an epoch of ", steps_per_epoch(), " steps");
  std::deque<Batch> dropped;  // freed outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    started_ = true;
    epoch_ = epoch;
    next_build_ = next_take_ = first_step;
    dropped.swap(ready_);
    error_ = nullptr;
  }
  cv_.notify_all();
}

bool Loader::Next(Batch* batch) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_) TESSERA_THROW(ValueError, "Loader::Next called before StartEpoch");
  if (next_take_ >= steps_per_epoch()) return false;
  cv_.wait(lock, [&] { return !ready_.empty() || error_; });
  if (ready_.empty()) std::rethrow_exception(error_);
  *batch = std::move(ready_.front());
  ready_.pop_front();
  ++next_take_;
  lock.unlock();
  cv_.notify_all();
  return true;
}

Batch Loader::Build(int64_t epoch, int64_t step) {
  Batch b;
  b.epoch = epoch;
  b.step = step;
  b.indices = sampler_.LocalBatch(epoch, step);
  AllocateBatch(dataset_, static_cast<int64_t>(b.indices.size()), &b.features, &b.labels);
  dataset_.Get(b.indices, b.features, b.labels);
  if (options_.augment && (options_.crop_padding > 0 || options_.horizontal_flip))
    Augment(b.features, options_, epoch, step * sampler_.global_batch() + sampler_.LocalOffset(step));
  if (dataset_.feature_dtype() == DType::kF32) Normalize(b.features, options_);
  return b;
}

void Loader::Run() {
  const int64_t steps = steps_per_epoch();
  for (;;) {
    int64_t epoch, step;
    uint64_t generation;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ ||
               (started_ && !error_ && next_build_ < steps && static_cast<int64_t>(ready_.size()) < options_.prefetch);
      });
      if (stop_) return;
      epoch = epoch_;
      step = next_build_;
      generation = generation_;
    }
    Batch batch;
    std::exception_ptr error;
    try {
      batch = Build(epoch, step);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (generation != generation_) continue;  // StartEpoch since: this batch is not wanted
      if (error) {
        error_ = std::move(error);  // the thread keeps no reference to it
      } else {
        ready_.push_back(std::move(batch));
        ++next_build_;
      }
    }
    cv_.notify_all();
  }
}

}  // namespace tessera::datasets
