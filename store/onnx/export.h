// ONNX export of a model store version: `tessera store export-onnx MODEL@VERSION out.onnx`.
//
// The file is an ONNX model (IR version 8, opset 17; store/onnx/onnx.proto holds the fields it
// uses) that any ONNX runtime runs without tessera:
//   input          FLOAT [batch, *input_shape]  the example as the dataset holds it (bytes as 0-255
//                                               values for an image), the same input the server takes
//   logits         FLOAT [batch, classes]
//   probabilities  FLOAT [batch, classes]       softmax of the logits
// The graph starts with the version's input preparation (x * scale, then (x - mean) / std, as in
// training and serving), then one node or a few per layer of the network the version's
// architecture builds: Flatten, Gemm (Linear), Conv, MaxPool, Relu, GELU (tanh form, as basic ops);
// Dropout is the identity at inference and is left out. The weights are initializers named as in
// the checkpoint ("0.weight"). Metadata: tessera.model, tessera.version, tessera.class_names.
//
// A GPT (store/onnx/gpt_graph.h) takes INT64 token ids [batch, T] (T: the window it was trained on)
// and gives logits and probabilities [batch, T, vocab]: the next token's at every position.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "store/store.h"

namespace tessera::store {

struct OnnxExportResult {
  std::string path;
  int64_t bytes = 0;                  // of the file
  int nodes = 0;                      // in the graph
  int64_t parameters = 0;             // elements of the initializers that are weights
  std::vector<int64_t> input_shape;   // one example
  std::string input_type = "FLOAT";   // a GPT's token ids: INT64
  std::vector<int64_t> output_shape;  // of logits and probabilities, -1 the batch
  int64_t classes = 0;
};

// Writes `version` of `model` as ONNX at `path`, atomically (a temporary name, then a rename).
// ConfigError naming the layer when the network holds one ONNX export does not cover; the store's
// errors (NotFoundError, IoError) when the version cannot be read.
OnnxExportResult ExportOnnx(const Store& store, const std::string& model, int64_t version,
                            const std::string& path);

}  // namespace tessera::store
