// The inference protocol's requests and responses (KServe v2 / Open Inference Protocol), as the
// server handles them whatever the transport: serve/http_codec.cc reads them from HTTP (JSON and
// Triton's binary tensor extension), serve/grpc_server.cc from gRPC. docs/serving.md has the API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace tessera::serve {

// A request the server will not answer as asked: the client sent something wrong (400), asked for
// something that is not there (404), sent too much (413) or must come back later (429, 503 with
// Retry-After). The message names what is wrong and where ("inputs[0].shape: ...").
class RequestError : public Error {
 public:
  RequestError(int status, const std::string& message, double retry_after_s = 0)
      : Error(message), status_(status), retry_after_s_(retry_after_s) {}
  int status() const { return status_; }
  double retry_after_s() const { return retry_after_s_; }

 private:
  int status_;
  double retry_after_s_;
};

// One input as the client sent it, already decoded to floats (every datatype tessera takes is
// exactly representable as one: UINT8, and FP32 itself).
struct InputTensor {
  std::string name;
  std::string datatype;  // as sent: "UINT8", "FP32", ...
  Shape shape;
  std::vector<float> values;  // row-major, NumElements(shape) of them
};

struct RequestedOutput {
  std::string name;
  int classification = 0;  // Triton's classification extension: the top k as "score:index[:label]"
  bool binary = false;     // HTTP only: sent as binary data after the JSON header
};

struct InferRequest {
  std::string id;  // echoed in the response
  std::string model;
  std::string version;  // "" : the version the model's policy serves by default
  std::vector<InputTensor> inputs;
  std::vector<RequestedOutput> outputs;  // empty: every output
  int top_k = 1;                // parameters.top_k: how many classes the "classes" output lists
  bool binary_outputs = false;  // parameters.binary_data_output: every output as binary data
};

struct OutputTensor {
  std::string name;
  std::string datatype;  // FP32 (f32), INT64 (i64) or BYTES (bytes)
  Shape shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;
  std::vector<std::string> bytes;
  bool binary = false;
  // The tensor's contents as the binary extension and gRPC's raw_output_contents carry them:
  // little-endian elements; BYTES as a 4-byte little-endian length before each element.
  std::string RawBytes() const;
};

struct InferResponse {
  std::string model, version, id;
  std::vector<OutputTensor> outputs;
};

// Size in bytes of one element of a numeric v2 datatype (BOOL, UINT8..UINT64, INT8..INT64, FP16,
// FP32, FP64); 0 for BYTES and for names the protocol does not have.
size_t DatatypeSize(const std::string& datatype);

// Decodes `bytes` bytes of little-endian `datatype` elements into `count` floats. RequestError 400
// naming `where` when the byte count is not count elements, the datatype is not numeric, or a value
// is not finite or not exactly a float (an integer beyond 2^24).
std::vector<float> DecodeRaw(const std::string& where, const std::string& datatype, const char* data, size_t bytes,
                             int64_t count);

// The shape of a request tensor: non-negative dimensions whose product fits the limit. RequestError
// 400 naming `where` otherwise.
int64_t CheckedElementCount(const std::string& where, const Shape& shape, int64_t limit);

// Equal-time comparison of a bearer token, so it cannot be guessed a byte at a time from response
// times (HTTP and gRPC both check tokens with it).
bool SameToken(const std::string& got, const std::string& want);

}  // namespace tessera::serve
