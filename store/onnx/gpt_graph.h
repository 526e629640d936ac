// The ONNX graph of a GPT (core/models.h BuildGpt), in opset-17 operators: Gather for the token
// embedding, LayerNormalization, MatMul with the [out, in] weights transposed, Split and
// Reshape / Transpose for the heads, a causal mask added before Softmax, GELU as its tanh formula,
// and the output head as a MatMul with the token embedding transposed (tied, stored once).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/model_spec.pb.h"
#include "core/tensor.h"
#include "store/onnx/graph_writer.h"

namespace tessera::store {

// Adds the graph from `ids` (INT64 [batch, t]) to logits [batch, t, vocab] and returns the logits'
// value. `weights`: the GPT's parameters by name, f32; *parameters counts those written.
std::string GptGraph(GraphWriter& g, const std::string& ids, const models::GptSpec& spec, int64_t t,
                     const std::map<std::string, Tensor>& weights, int64_t* parameters);

}  // namespace tessera::store
