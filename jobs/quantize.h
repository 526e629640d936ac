// Post-training int8 quantisation of a model store version (`tessera store quantize`): the f32
// version's Linear and Conv2d weights become per-output-channel symmetric int8, each such layer's
// input gets a scale calibrated as the largest |x| it sees over a sample of the training data,
// and the result is published as the model's next version, with quantization: INT8 in its
// architecture and lineage to the f32 one. Both versions are evaluated on the test split, and the
// new one records its own accuracy beside its parent's.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "store/store.h"

namespace tessera::jobs {

struct QuantizeOptions {
  int64_t samples = 1000;  // calibration examples, spread evenly over the training set
  int64_t batch_size = 256;
  bool evaluate = true;  // on the test split, when the job spec names one
  std::string alias;     // moved to the new version when not empty
};

struct QuantizeResult {
  int64_t parent = 0;
  store::PublishResult published;
  int layers = 0;            // Linear and Conv2d layers made int8
  int64_t calibration_examples = 0;
  int64_t parent_weights_bytes = 0, weights_bytes = 0;  // weights.h5 of each
  std::map<std::string, double> parent_metrics, metrics;  // test_* of each (empty without a test split)
};

// Quantises `version` of `model`. ConfigError when the version is already quantised, has no layer
// to quantise, or its job spec names no training data to calibrate on (or the data is gone);
// the store's errors otherwise.
QuantizeResult QuantizeVersion(store::Store& st, const std::string& model, int64_t version,
                               const QuantizeOptions& options);

}  // namespace tessera::jobs
