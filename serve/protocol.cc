#include "serve/protocol.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace tessera::serve {
namespace {

template <typename T>
T LoadLe(const char* p) {  // every machine tessera runs on is little-endian, as the protocol is
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void DecodeInto(const std::string& where, const char* data, int64_t count, std::vector<float>& out) {
  for (int64_t i = 0; i < count; ++i) {
    const T v = LoadLe<T>(data + i * sizeof(T));
    const float f = static_cast<float>(v);
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(f))
        throw RequestError(400, detail::StrCat(where, ": element ", i, " is ", static_cast<double>(v),
                                               "; inputs must be finite"));
    } else {
      if (static_cast<T>(f) != v || (std::is_signed_v<T> && (f < 0) != (v < 0)))
        throw RequestError(400, detail::StrCat(where, ": element ", i, " (", +v, ") is not exactly a 32-bit float"));
    }
    out[i] = f;
  }
}

}  // namespace

size_t DatatypeSize(const std::string& t) {
  if (t == "BOOL" || t == "UINT8" || t == "INT8") return 1;
  if (t == "UINT16" || t == "INT16" || t == "FP16" || t == "BF16") return 2;
  if (t == "UINT32" || t == "INT32" || t == "FP32") return 4;
  if (t == "UINT64" || t == "INT64" || t == "FP64") return 8;
  return 0;
}

int64_t CheckedElementCount(const std::string& where, const Shape& shape, int64_t limit) {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) throw RequestError(400, detail::StrCat(where, ": dimension ", i, " is ", shape[i]));
    if (shape[i] > 0 && n > limit / shape[i])
      throw RequestError(413, detail::StrCat(where, ": shape ", ShapeString(shape), " holds more than ", limit,
                                             " elements"));
    n *= shape[i];
  }
  return n;
}

std::vector<float> DecodeRaw(const std::string& where, const std::string& t, const char* data, size_t bytes,
                             int64_t count) {
  const size_t size = DatatypeSize(t);
  if (size == 0 || t == "FP16" || t == "BF16" || t == "BOOL")
    throw RequestError(400, detail::StrCat(where, ": datatype '", t, "' is not a numeric type tessera takes"));
  if (bytes != static_cast<size_t>(count) * size)
    throw RequestError(400, detail::StrCat(where, ": ", bytes, " bytes of data for ", count, " elements of ", t,
                                           " (", static_cast<size_t>(count) * size, " bytes)"));
  std::vector<float> out(static_cast<size_t>(count));
  if (t == "UINT8") DecodeInto<uint8_t>(where, data, count, out);
  else if (t == "INT8") DecodeInto<int8_t>(where, data, count, out);
  else if (t == "UINT16") DecodeInto<uint16_t>(where, data, count, out);
  else if (t == "INT16") DecodeInto<int16_t>(where, data, count, out);
  else if (t == "UINT32") DecodeInto<uint32_t>(where, data, count, out);
  else if (t == "INT32") DecodeInto<int32_t>(where, data, count, out);
  else if (t == "UINT64") DecodeInto<uint64_t>(where, data, count, out);
  else if (t == "INT64") DecodeInto<int64_t>(where, data, count, out);
  else if (t == "FP32") DecodeInto<float>(where, data, count, out);
  else DecodeInto<double>(where, data, count, out);
  return out;
}

bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string OutputTensor::RawBytes() const {
  std::string out;
  if (datatype == "FP32") out.assign(reinterpret_cast<const char*>(f32.data()), f32.size() * sizeof(float));
  else if (datatype == "INT64") out.assign(reinterpret_cast<const char*>(i64.data()), i64.size() * sizeof(int64_t));
  else
    for (const std::string& s : bytes) {
      const uint32_t n = static_cast<uint32_t>(s.size());
      out.append(reinterpret_cast<const char*>(&n), 4);
      out += s;
    }
  return out;
}

}  // namespace tessera::serve
