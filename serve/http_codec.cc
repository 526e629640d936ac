#include "serve/http_codec.h"

#include <cmath>
#include <limits>

namespace tessera::serve {
namespace {

using json = nlohmann::json;

[[noreturn]] void Bad(const std::string& where, const std::string& why) {
  throw RequestError(400, where + ": " + why);
}

// Depth of [ and { outside strings: nlohmann's parser keeps a stack per level, so a body of a
// million '[' would cost memory and time before failing; refuse it first.
void CheckDepth(const std::string& what, const char* p, size_t n, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    const char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        throw RequestError(400, detail::StrCat(what, ": JSON nested deeper than ", max_depth, " levels at byte ", i));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

const json* Field(const json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() ? nullptr : &*it;
}

std::string StringField(const json& obj, const char* name, const std::string& where, bool required) {
  const json* f = Field(obj, name);
  if (!f) {
    if (required) Bad(where, std::string("'") + name + "' is missing");
    return "";
  }
  if (!f->is_string()) Bad(where + "." + name, "must be a string, got " + std::string(f->type_name()));
  return f->get<std::string>();
}

// A parameter's value as an integer (JSON number without fraction) or bool.
int64_t IntParameter(const json& v, const std::string& where) {
  if (v.is_boolean()) return v.get<bool>() ? 1 : 0;
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(v.get<uint64_t>());
  Bad(where, "must be an integer, got " + v.dump());
}

bool BoolParameter(const json& v, const std::string& where) {
  if (!v.is_boolean()) Bad(where, "must be true or false, got " + v.dump());
  return v.get<bool>();
}

const json& Parameters(const json& obj, const std::string& where) {
  static const json empty = json::object();
  const json* p = Field(obj, "parameters");
  if (!p) return empty;
  if (!p->is_object()) Bad(where + ".parameters", "must be an object");
  return *p;
}

Shape ParseShape(const json& t, const std::string& where) {
  const json* s = Field(t, "shape");
  if (!s) Bad(where, "'shape' is missing");
  if (!s->is_array() || s->size() > 8) Bad(where + ".shape", "must be an array of at most 8 dimensions");
  Shape shape;
  for (size_t i = 0; i < s->size(); ++i) {
    const json& d = (*s)[i];
    if (!d.is_number_integer() && !d.is_number_unsigned()) Bad(detail::StrCat(where, ".shape[", i, "]"), "must be an integer");
    const int64_t v = IntParameter(d, where);
    if (v < 0) Bad(detail::StrCat(where, ".shape[", i, "]"), detail::StrCat("must be >= 0, got ", v));
    shape.push_back(v);
  }
  return shape;
}

// JSON data: nested or flat arrays of numbers, row-major.
void FlattenData(const json& d, const std::string& where, const std::string& dtype, int64_t count,
                 std::vector<float>& out) {
  if (d.is_array()) {
    for (const json& e : d) {
      FlattenData(e, where, dtype, count, out);
    }
    return;
  }
  if (static_cast<int64_t>(out.size()) >= count)
    Bad(where + ".data", detail::StrCat("holds more than the ", count, " elements its shape says"));
  if (!d.is_number()) Bad(where + ".data", detail::StrCat("element ", out.size(), " is ", d.type_name(), ", not a number"));
  const double v = d.get<double>();
  const bool integral = dtype.front() == 'U' || dtype.front() == 'I';
  if (integral) {
    const bool is_unsigned = dtype.front() == 'U';
    const double hi = std::ldexp(1.0, static_cast<int>(DatatypeSize(dtype) * 8 - (is_unsigned ? 0 : 1))) - 1;
    const double lo = is_unsigned ? 0 : -hi - 1;
    if (v != std::floor(v) || v < lo || v > hi || std::fabs(v) > 16777216.0)
      Bad(where + ".data", detail::StrCat("element ", out.size(), " (", d.dump(), ") is not a ", dtype));
  } else if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max()) {
    Bad(where + ".data", detail::StrCat("element ", out.size(), " (", d.dump(), ") is not a finite FP32"));
  }
  out.push_back(static_cast<float>(v));
}

InputTensor ParseInput(const json& t, const std::string& where, const char*& binary, const char* binary_end,
                       const CodecLimits& limits) {
  if (!t.is_object()) Bad(where, "must be an object");
  InputTensor in;
  in.name = StringField(t, "name", where, true);
  in.datatype = StringField(t, "datatype", where, true);
  in.shape = ParseShape(t, where);
  const int64_t count = CheckedElementCount(where + ".shape", in.shape, limits.max_elements);
  if (DatatypeSize(in.datatype) == 0 || in.datatype == "BOOL" || in.datatype == "FP16" || in.datatype == "BF16")
    Bad(where + ".datatype", "'" + in.datatype + "' is not a numeric type tessera takes (UINT8, FP32, ...)");
  const json& params = Parameters(t, where);
  const json* data = Field(t, "data");
  if (params.contains("binary_data_size")) {
    if (data) Bad(where, "has both 'data' and parameters.binary_data_size");
    const int64_t size = IntParameter(params["binary_data_size"], where + ".parameters.binary_data_size");
    if (size < 0 || size > binary_end - binary)
      Bad(where + ".parameters.binary_data_size",
          detail::StrCat(size, " bytes, but only ", binary_end - binary, " bytes of binary data are left in the body"));
    in.values = DecodeRaw(where, in.datatype, binary, static_cast<size_t>(size), count);
    binary += size;
    return in;
  }
  if (!data) Bad(where, "'data' is missing (or parameters.binary_data_size for binary data)");
  in.values.reserve(static_cast<size_t>(count));
  FlattenData(*data, where, in.datatype, count, in.values);
  if (static_cast<int64_t>(in.values.size()) != count)
    Bad(where + ".data", detail::StrCat("holds ", in.values.size(), " elements; its shape ", ShapeString(in.shape),
                                        " says ", count));
  return in;
}

RequestedOutput ParseOutput(const json& o, const std::string& where) {
  if (!o.is_object()) Bad(where, "must be an object");
  RequestedOutput out;
  out.name = StringField(o, "name", where, true);
  const json& params = Parameters(o, where);
  if (params.contains("binary_data")) out.binary = BoolParameter(params["binary_data"], where + ".parameters.binary_data");
  if (params.contains("classification")) {
    const int64_t k = IntParameter(params["classification"], where + ".parameters.classification");
    if (k < 1 || k > 1000) Bad(where + ".parameters.classification", detail::StrCat("must be from 1 to 1000, got ", k));
    out.classification = static_cast<int>(k);
  }
  return out;
}

}  // namespace

json ParseJson(const std::string& what, const char* data, size_t size, int max_depth) {
  CheckDepth(what, data, size, max_depth);
  try {
    return json::parse(data, data + size);
  } catch (const json::parse_error& e) {
    throw RequestError(400, detail::StrCat(what, " is not valid JSON (at byte ", e.byte, ")"));
  } catch (const json::exception& e) {  // out_of_range: a number too large for a double (found by fuzzing)
    throw RequestError(400, detail::StrCat(what, " is not valid JSON: ", e.what()));
  }
}

InferRequest ParseHttpInfer(const std::string& body, int64_t header_length, const std::string& model,
                            const std::string& version, const CodecLimits& limits) {
  if (header_length > static_cast<int64_t>(body.size()) || header_length == 0 || header_length < -1)
    throw RequestError(400, detail::StrCat("Inference-Header-Content-Length is ", header_length, " but the body has ",
                                           body.size(), " bytes"));
  const size_t json_size = header_length < 0 ? body.size() : static_cast<size_t>(header_length);
  const json j = ParseJson("the request body", body.data(), json_size, limits.max_json_depth);
  if (!j.is_object()) throw RequestError(400, "the request body must be a JSON object");
  InferRequest r;
  r.model = model;
  r.version = version;
  if (const json* id = Field(j, "id")) {
    if (!id->is_string()) Bad("id", "must be a string");
    r.id = id->get<std::string>();
  }
  const json& params = Parameters(j, "request");
  if (params.contains("top_k")) {
    const int64_t k = IntParameter(params["top_k"], "parameters.top_k");
    if (k < 1 || k > 1000) Bad("parameters.top_k", detail::StrCat("must be from 1 to 1000, got ", k));
    r.top_k = static_cast<int>(k);
  }
  if (params.contains("binary_data_output"))
    r.binary_outputs = BoolParameter(params["binary_data_output"], "parameters.binary_data_output");
  const json* inputs = Field(j, "inputs");
  if (!inputs || !inputs->is_array() || inputs->empty()) Bad("request", "'inputs' must be a non-empty array");
  if (inputs->size() > 16) Bad("inputs", detail::StrCat(inputs->size(), " inputs; the models served take one"));
  const char* binary = body.data() + json_size;
  const char* binary_end = body.data() + body.size();
  for (size_t i = 0; i < inputs->size(); ++i)
    r.inputs.push_back(ParseInput((*inputs)[i], detail::StrCat("inputs[", i, "]"), binary, binary_end, limits));
  if (binary != binary_end)
    Bad("request", detail::StrCat(binary_end - binary, " bytes of binary data after the last binary input"));
  if (const json* outputs = Field(j, "outputs")) {
    if (!outputs->is_array() || outputs->size() > 16) Bad("outputs", "must be an array of at most 16 outputs");
    for (size_t i = 0; i < outputs->size(); ++i)
      r.outputs.push_back(ParseOutput((*outputs)[i], detail::StrCat("outputs[", i, "]")));
  }
  return r;
}

HttpBody EncodeHttpInfer(const InferResponse& r) {
  json j = {{"model_name", r.model}, {"model_version", r.version}};
  if (!r.id.empty()) j["id"] = r.id;
  json outputs = json::array();
  std::string binary;
  for (const OutputTensor& t : r.outputs) {
    json o = {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
    if (t.binary) {
      const std::string raw = t.RawBytes();
      o["parameters"] = {{"binary_data_size", raw.size()}};
      binary += raw;
    } else if (t.datatype == "FP32") {
      o["data"] = t.f32;
    } else if (t.datatype == "INT64") {
      o["data"] = t.i64;
    } else {
      o["data"] = t.bytes;
    }
    outputs.push_back(std::move(o));
  }
  j["outputs"] = std::move(outputs);
  HttpBody b;
  b.content = j.dump();
  if (binary.empty()) {
    b.content_type = "application/json";
    return b;
  }
  b.header_length = static_cast<int64_t>(b.content.size());
  b.content += binary;
  b.content_type = "application/octet-stream";
  return b;
}

std::string ErrorJson(const std::string& message) {
  return json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tessera::serve
