// Building a model from its spec (core/model_spec.proto): what the trainer, the model store and
// the server share, so that a published version is rebuilt exactly as it was trained.
#pragma once

#include <memory>
#include <vector>

#include "core/model_spec.pb.h"
#include "core/nn/module.h"
#include "core/tensor.h"

namespace tessera::models {

// The network of `spec` for examples of shape `example` and `classes` label values. ConfigError
// naming the field when the spec does not fit the examples (in_features, the CNN's input shape)
// or has fewer outputs than there are classes (classes <= 0: not checked).
std::unique_ptr<nn::Sequential> BuildModel(const ModelSpec& spec, const Shape& example, int classes = 0);

// The number of outputs (logits) of the model (a GPT: per position, its vocabulary), and the
// field that sets it ("model.mlp.out_features", "model.gpt.vocab").
int64_t OutFeatures(const ModelSpec& spec);
const char* OutFeaturesField(const ModelSpec& spec);
// "mlp", "cnn" or "gpt".
const char* FamilyName(const ModelSpec& spec);

// The number of parameters BuildModel makes for `spec` (weights and biases), or -1 when a
// product of its sizes overflows 64 bits. Sizes are taken as given: validate them first.
int64_t ParameterCount(const ModelSpec& spec);

// The example shape the spec itself implies: [in_channels, height, width] for a CNN,
// [in_features] for an MLP (whose Flatten accepts any shape of that many values), [context] token
// ids for a GPT.
Shape ImpliedExampleShape(const ModelSpec& spec);

// Prepares examples [n, C, ...] (f32, on the host) as training did: x * scale, then (x - mean) / std
// per channel (dim 1), where mean and std hold one value for all channels or one per channel (empty:
// 0 and 1). The loader and the server both call this, so a served input is prepared bit for bit
// as the trainer's evaluation prepared it. The caller checks the value counts.
void NormalizeExamples(Tensor& x, float scale, const std::vector<float>& mean, const std::vector<float>& std);

// "mlp 784-512-256-10 relu", "cnn 1x28x28 conv 32,64 k3 fc 128-10",
// "gpt 12 layers, 12 heads, width 768, context 1024, vocab 50304".
std::string DescribeModel(const ModelSpec& spec);

}  // namespace tessera::models
