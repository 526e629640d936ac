// Built-in model families, used by the job spec (model.mlp, model.cnn).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/nn/module.h"

namespace tessera::models {

struct MlpConfig {
  int64_t in_features = 784;
  std::vector<int64_t> hidden = {512, 256};
  int64_t out_features = 10;
  double dropout = 0.0;  // after each hidden activation when > 0
  bool gelu = false;     // GELU instead of ReLU
};
// Flatten -> [Linear -> ReLU (-> Dropout)]* -> Linear. W1 is the default.
std::unique_ptr<nn::Sequential> BuildMlp(const MlpConfig& config);

struct CnnConfig {
  int64_t in_channels = 1, height = 28, width = 28;
  std::vector<int64_t> channels = {32, 64};  // one Conv(3x3, pad 1)-ReLU-MaxPool(2) per entry
  int kernel = 3;
  std::vector<int64_t> hidden = {128};
  int64_t out_features = 10;
  double dropout = 0.0;
};
// [Conv2d -> ReLU -> MaxPool2d]* -> Flatten -> [Linear -> ReLU]* -> Linear. W2 is the default.
// Each block is built as Conv2d -> MaxPool2d -> ReLU, which computes exactly the same function
// (max-pooling commutes with ReLU) with a quarter of the ReLU work.
std::unique_ptr<nn::Sequential> BuildCnn(const CnnConfig& config);

}  // namespace tessera::models
