// The HTTP/REST form of the inference protocol: a JSON body, or Triton's binary tensor data
// extension (a JSON header of Inference-Header-Content-Length bytes, then each binary input's
// bytes in order, sized by its parameters.binary_data_size). Every field is checked before it is
// trusted; errors are RequestError 400 naming the field ("inputs[0].shape[1]: ...").
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "serve/protocol.h"

namespace tessera::serve {

struct CodecLimits {
  int64_t max_elements = 64 << 20;  // in one input tensor
  int max_json_depth = 16;
};

// `header_length`: the Inference-Header-Content-Length header, or -1 when absent (all JSON).
InferRequest ParseHttpInfer(const std::string& body, int64_t header_length, const std::string& model,
                            const std::string& version, const CodecLimits& limits = {});

struct HttpBody {
  std::string content;
  std::string content_type;
  int64_t header_length = -1;  // for Inference-Header-Content-Length; -1: all JSON
};
HttpBody EncodeHttpInfer(const InferResponse& response);

// {"error": message}, the protocol's error body.
std::string ErrorJson(const std::string& message);

// Parses JSON text, refusing nesting deeper than `max_depth` before the parser sees it. RequestError
// 400 naming `what` and the byte offset when the text is not JSON.
nlohmann::json ParseJson(const std::string& what, const char* data, size_t size, int max_depth);

}  // namespace tessera::serve
