// The server's KServe v2 / Triton request parsing (serve/http_codec.cc): JSON bodies, nested and
// flat data, the binary tensor extension with its Inference-Header-Content-Length. The first 4
// bytes of the input choose the header length (or none); the rest is the body.
#include <cstring>

#include "core/error.h"
#include "serve/http_codec.h"
#include "serve/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  if (size < 4) return 0;
  int32_t header = 0;
  std::memcpy(&header, data, 4);
  const std::string body(reinterpret_cast<const char*>(data + 4), size - 4);
  serve::CodecLimits limits;
  limits.max_elements = 1 << 16;
  try {
    serve::InferRequest r = serve::ParseHttpInfer(body, header < 0 ? -1 : header % (1 << 20), "m", "1", limits);
    (void)r;
  } catch (const serve::RequestError&) {
  } catch (const Error&) {
  }
  return 0;
}
