// Building a model from its spec (core/model_spec.proto): what the trainer, the model store and
// the server share, so that a published version is rebuilt exactly as it was trained.
#pragma once

#include <memory>

#include "core/model_spec.pb.h"
#include "core/nn/module.h"
#include "core/tensor.h"

namespace tessera::models {

// The network of `spec` for examples of shape `example` and `classes` label values. ConfigError
// naming the field when the spec does not fit the examples (in_features, the CNN's input shape)
// or has fewer outputs than there are classes (classes <= 0: not checked).
std::unique_ptr<nn::Sequential> BuildModel(const ModelSpec& spec, const Shape& example, int classes = 0);

// The number of outputs (logits) of the model.
int64_t OutFeatures(const ModelSpec& spec);

// The example shape the spec itself implies: [in_channels, height, width] for a CNN,
// [in_features] for an MLP (whose Flatten accepts any shape of that many values).
Shape ImpliedExampleShape(const ModelSpec& spec);

// "mlp 784-512-256-10 relu", "cnn 1x28x28 conv 32,64 k3 fc 128-10".
std::string DescribeModel(const ModelSpec& spec);

}  // namespace tessera::models
