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

// Limits of a GPT's sizes (far beyond any GPT trained so far: GPT-3 has 96 layers of width 12288).
constexpr int64_t kMaxGptLayers = 4096, kMaxGptWidth = 1 << 17, kMaxGptContext = 1 << 20,
                  kMaxGptVocab = 1 << 24;
struct GptConfig {
  int64_t layers = 12, heads = 12, width = 768, context = 1024, vocab = 50304;  // GPT-2 124M (G1)
  double dropout = 0.0;  // after the embeddings, and on each attention and MLP output
};
// The GPT-2 architecture: embed (token + learned position embeddings) -> h0 .. h{layers-1}
// (pre-LayerNorm blocks of causal self-attention and a GELU MLP) -> ln_f -> head (tied to the token
// embedding). Input token ids [B, T], T <= context; output logits [B, T, vocab]. Initialised as
// GPT-2: weights N(0, 0.02), the residual projections (c_proj) N(0, 0.02 / sqrt(2 * layers)),
// biases zero. Throws ConfigError naming the field for sizes that do not fit.
std::unique_ptr<nn::Sequential> BuildGpt(const GptConfig& config);

}  // namespace tessera::models
