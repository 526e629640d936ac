#include "serve/inference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace tessera::serve {
namespace {

constexpr int kMaxTopK = 1000;

std::vector<float> Softmax(const std::vector<float>& logits, int64_t rows, int64_t cols) {
  std::vector<float> p(logits.size());
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits.data() + r * cols;
    float* y = p.data() + r * cols;
    const float m = *std::max_element(x, x + cols);
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(static_cast<double>(x[c] - m));
    for (int64_t c = 0; c < cols; ++c)
      y[c] = static_cast<float>(std::exp(static_cast<double>(x[c] - m)) / sum);
  }
  return p;
}

// The indices of the k largest values of each row, largest first (ties: the lower index first).
std::vector<int64_t> TopK(const std::vector<float>& v, int64_t rows, int64_t cols, int64_t k) {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(rows * k));
  std::vector<int64_t> idx(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = v.data() + r * cols;
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [x](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
    out.insert(out.end(), idx.begin(), idx.begin() + k);
  }
  return out;
}

int64_t CheckK(const std::string& where, int64_t k, int64_t classes) {
  if (k < 1 || k > kMaxTopK)
    throw RequestError(400, detail::StrCat(where, " must be from 1 to ", classes, ", got ", k));
  return std::min<int64_t>(k, classes);
}

OutputTensor Output(const std::string& name, const RequestedOutput& asked, const std::vector<float>& logits,
                    const std::vector<float>& probs, int64_t rows, const ServedVersion& v,
                    const InferRequest& r) {
  const int64_t cols = v.classes();
  // A GPT's rows are its positions: [n, T, ...] rather than [n, ...].
  auto shape = [&](int64_t last) {
    return v.language_model() ? Shape{rows / v.positions(), v.positions(), last} : Shape{rows, last};
  };
  OutputTensor t;
  t.name = name;
  t.binary = asked.binary || r.binary_outputs;
  const std::vector<float>& values = name == "probabilities" ? probs : logits;  // what classification ranks
  if (asked.classification > 0) {  // Triton: BYTES [n, k] of "score:index[:label]"
    const int64_t k = CheckK("outputs '" + name + "' parameters.classification", asked.classification, cols);
    std::vector<int64_t> top = TopK(values, rows, cols, k);
    const auto& labels = v.architecture().class_names();
    t.datatype = "BYTES";
    t.shape = shape(k);
    for (int64_t i = 0; i < rows * k; ++i) {
      const int64_t c = top[static_cast<size_t>(i)];
      char score[32];
      std::snprintf(score, sizeof score, "%f",
                    static_cast<double>(values[static_cast<size_t>((i / k) * cols + c)]));
      t.bytes.push_back(detail::StrCat(
          score, ":", c, c < static_cast<int64_t>(labels.size()) ? ":" + labels[static_cast<int>(c)] : ""));
    }
    return t;
  }
  if (name == "classes") {
    const int64_t k = CheckK("parameters.top_k", r.top_k, cols);
    t.datatype = "INT64";
    t.shape = shape(k);
    t.i64 = TopK(logits, rows, cols, k);
    return t;
  }
  t.datatype = "FP32";
  t.shape = shape(cols);
  t.f32 = values;
  return t;
}

}  // namespace

const std::vector<std::string>& OutputNames() {
  static const std::vector<std::string> names = {"logits", "probabilities", "classes"};
  return names;
}

Inference RunInference(const Repository& repository, const InferRequest& r) {
  Inference out;
  out.version = repository.Get(r.model, r.version);
  const ServedVersion& v = *out.version;
  if (r.inputs.size() != 1)
    throw RequestError(400, detail::StrCat("model ", r.model, " takes one input ('input'); the request has ",
                                           r.inputs.size()));
  std::vector<RequestedOutput> asked = r.outputs;
  if (asked.empty())
    for (const std::string& n : OutputNames()) asked.push_back({n});
  for (size_t i = 0; i < asked.size(); ++i) {
    if (std::find(OutputNames().begin(), OutputNames().end(), asked[i].name) == OutputNames().end())
      throw RequestError(400, detail::StrCat("outputs[", i, "]: model ", r.model, " has no output '",
                                             asked[i].name, "' (it has logits, probabilities, classes)"));
    for (size_t j = 0; j < i; ++j)
      if (asked[j].name == asked[i].name)
        throw RequestError(400, detail::StrCat("outputs[", i, "]: '", asked[i].name, "' is asked for twice"));
  }
  int64_t rows = 0;
  const std::vector<float> logits = v.Logits(r.inputs[0], &rows);
  std::vector<float> probs;
  for (const RequestedOutput& a : asked)
    if (a.name == "probabilities" && probs.empty()) probs = Softmax(logits, rows, v.classes());
  out.response.model = r.model;
  out.response.version = v.version_string();
  out.response.id = r.id;
  for (const RequestedOutput& a : asked)
    out.response.outputs.push_back(Output(a.name, a, logits, probs, rows, v, r));
  return out;
}

}  // namespace tessera::serve
