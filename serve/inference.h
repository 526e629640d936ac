// What the server does with a request once a transport has decoded it: find the version, run the
// input through it, and build the outputs asked for.
//
// Outputs (every one when the request names none):
//   logits         FP32 [n, classes]  the network's outputs
//   probabilities  FP32 [n, classes]  softmax of the logits
//   classes        INT64 [n, k]       the k most likely classes, most likely first (k: the
//                                     request's parameters.top_k, default 1)
// and, on any of them, Triton's classification extension: parameters.classification = k turns the
// output into BYTES [n, k] of "score:index[:label]".
#pragma once

#include <memory>

#include "serve/protocol.h"
#include "serve/repository.h"

namespace tessera::serve {

struct Inference {
  std::shared_ptr<const ServedVersion> version;  // held until the response is sent
  InferResponse response;
};

// RequestError (4xx, 503) for anything the request gets wrong or the server cannot take now.
Inference RunInference(const Repository& repository, const InferRequest& request);

// The names RunInference can produce.
const std::vector<std::string>& OutputNames();

}  // namespace tessera::serve
