// One model version loaded for serving: the network rebuilt from the version's model.pbtxt, its
// weights read (and their sha256 checked against the manifest) into buffers that every
// inference worker's replica of the network shares, the input preparation of training, and the
// batcher that feeds the workers.
//
// Versions are held by shared_ptr: the repository holds the ones it serves, and every request
// holds the one it runs on until its response is built. A version swapped out is therefore freed
// when its last request ends, and its memory goes back to the system then.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "serve/batcher.h"
#include "serve/metrics.h"
#include "serve/protocol.h"
#include "store/store.h"

namespace tessera::serve {

struct TensorMetadata {
  std::string name, datatype;
  Shape shape;  // -1: any size
};

class ServedVersion {
 public:
  // Loads `version` of `model`, builds one replica per worker, and runs a warm-up batch through
  // each. IoError or ConfigError naming the version and file when it cannot be served.
  static std::shared_ptr<ServedVersion> Load(const store::Store& store, const std::string& model,
                                             int64_t version, const BatchOptions& options,
                                             ServerMetrics* metrics);
  ~ServedVersion();

  const std::string& model() const { return model_; }
  int64_t version() const { return version_; }
  std::string version_string() const { return std::to_string(version_); }
  const store::Architecture& architecture() const { return architecture_; }
  int64_t bytes() const { return weights_bytes_; }
  int64_t classes() const { return out_features_; }
  // A GPT: one prediction over the vocabulary (classes()) per position of its input window.
  bool language_model() const { return architecture_.model().has_gpt(); }
  int64_t positions() const { return positions_; }

  std::vector<TensorMetadata> Inputs() const;
  std::vector<TensorMetadata> Outputs() const;

  // The logits [n, classes] for the request's one input (a GPT: [n, T, vocabulary], and *rows is n
  // T): checked against the metadata (name, datatype, shape, batch size; a GPT's token ids against
  // its vocabulary), prepared as in training, run as part of a batch. RequestError 400 naming the
  // field when the input does not fit.
  std::vector<float> Logits(const InputTensor& input, int64_t* rows) const;

 private:
  ServedVersion() = default;
  void Forward(int worker, const float* x, int64_t n, float* y);
  int64_t CheckInput(const InputTensor& input) const;

  std::string model_;
  int64_t version_ = 0;
  store::Architecture architecture_;
  Shape example_;  // one example as the model takes it
  int64_t example_numel_ = 0, out_features_ = 0, weights_bytes_ = 0;
  int64_t positions_ = 1;  // predictions per example: a GPT's window, else 1
  BatchOptions options_;
  Tensor weights_;                                         // every f32 parameter, one after the other
  std::map<std::string, Tensor> other_weights_;            // the others (int8 weights), by weights-file path
  std::vector<std::unique_ptr<nn::Sequential>> replicas_;  // one per worker, sharing weights_
  std::unique_ptr<Batcher> batcher_;
};

// Gives memory freed since the last call back to the system: tessera's caching allocator, HDF5's
// free lists and malloc's arenas. After a version is freed and after each load.
void ReleaseFreedMemory();

}  // namespace tessera::serve
