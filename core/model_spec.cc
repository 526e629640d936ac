#include "core/model_spec.h"

#include <sstream>

#include "core/models.h"

namespace tessera::models {

void NormalizeExamples(Tensor& x, float scale, const std::vector<float>& mean, const std::vector<float>& std) {
  if (scale == 1.0f && mean.empty() && std.empty()) return;
  const int64_t n = x.dim(0), channels = x.dim(1);
  if (n == 0 || channels == 0) return;
  const int64_t inner = x.numel() / (n * channels);
  float* p0 = x.data<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const float m = mean.empty() ? 0.0f : mean[mean.size() == 1 ? 0 : c];
    const float s = std.empty() ? 1.0f : std[std.size() == 1 ? 0 : c];
    for (int64_t i = 0; i < n; ++i) {
      float* p = p0 + (i * channels + c) * inner;
      for (int64_t k = 0; k < inner; ++k) p[k] = (p[k] * scale - m) / s;
    }
  }
}

namespace {
std::unique_ptr<nn::Sequential> BuildGptModel(const GptSpec& s, const Shape& example, int classes) {
  if (example.size() != 1 || example[0] < 1 || example[0] > s.context())
    TESSERA_THROW(ConfigError, "model.gpt.context is ", s.context(), " but the examples have shape ",
                  ShapeString(example), " (a GPT takes sequences of 1 to context token ids)");
  if (classes > s.vocab())
    TESSERA_THROW(ConfigError, "model.gpt.vocab is ", s.vocab(), " but the data's vocabulary has ", classes, " tokens");
  GptConfig c;
  c.layers = s.layers();
  c.heads = s.heads();
  c.width = s.width();
  c.context = s.context();
  c.vocab = s.vocab();
  c.dropout = s.dropout();
  return BuildGpt(c);
}
}  // namespace

std::unique_ptr<nn::Sequential> BuildModel(const ModelSpec& m, const Shape& example, int classes) {
  std::string shape = ShapeString(example);
  if (m.has_gpt()) return BuildGptModel(m.gpt(), example, classes);
  if (m.has_mlp()) {
    const MlpSpec& s = m.mlp();
    if (s.in_features() != NumElements(example))
      TESSERA_THROW(ConfigError, "model.mlp.in_features is ", s.in_features(), " but the examples have shape ", shape,
                    " (", NumElements(example), " values)");
    if (classes > s.out_features())
      TESSERA_THROW(ConfigError, "model.mlp.out_features is ", s.out_features(), " but the labels have ", classes,
                    " classes");
    MlpConfig c;
    c.in_features = s.in_features();
    c.hidden.assign(s.hidden().begin(), s.hidden().end());
    c.out_features = s.out_features();
    c.dropout = s.dropout();
    c.gelu = s.activation() == GELU;
    return BuildMlp(c);
  }
  if (!m.has_cnn()) TESSERA_THROW(ConfigError, "model: no model family (mlp, cnn or gpt) is set");
  const CnnSpec& s = m.cnn();
  Shape want{s.in_channels(), s.height(), s.width()};
  if (want != example)
    TESSERA_THROW(ConfigError, "model.cnn expects examples of shape ", ShapeString(want),
                  " (in_channels, height, width) but the examples have shape ", shape);
  if (classes > s.out_features())
    TESSERA_THROW(ConfigError, "model.cnn.out_features is ", s.out_features(), " but the labels have ", classes,
                  " classes");
  CnnConfig c;
  c.in_channels = s.in_channels();
  c.height = s.height();
  c.width = s.width();
  c.channels.assign(s.channels().begin(), s.channels().end());
  c.kernel = s.kernel();
  c.hidden.assign(s.hidden().begin(), s.hidden().end());
  c.out_features = s.out_features();
  c.dropout = s.dropout();
  return BuildCnn(c);
}

namespace {

// a * b + c, or -1 on overflow (or a negative operand).
int64_t MulAdd(int64_t a, int64_t b, int64_t c) {
  int64_t ab = 0, sum = 0;
  if (a < 0 || b < 0 || c < 0 || __builtin_mul_overflow(a, b, &ab) || __builtin_add_overflow(ab, c, &sum)) return -1;
  return sum;
}

// Parameters of Linear layers in -> hidden... -> out, added to `total`; -1 on overflow.
int64_t AddLinearStack(int64_t total, int64_t in, const google::protobuf::RepeatedField<int64_t>& hidden, int64_t out) {
  for (int64_t width : hidden) {
    total = total < 0 ? -1 : MulAdd(in, width, total);  // weights
    total = total < 0 ? -1 : MulAdd(width, 1, total);   // bias
    in = width;
  }
  total = total < 0 ? -1 : MulAdd(in, out, total);
  return total < 0 ? -1 : MulAdd(out, 1, total);
}

// nanoGPT's count: per block 12 C^2 + 13 C, then (vocab + context) C for the embeddings and 2 C for
// ln_f (the head is tied).
int64_t GptParameterCount(const GptSpec& s) {
  const int64_t c = s.width(), c2 = MulAdd(c, c, 0);
  const int64_t block = c2 < 0 ? -1 : MulAdd(12, c2, MulAdd(13, c, 0));
  const int64_t blocks = block < 0 ? -1 : MulAdd(block, s.layers(), 0);
  const int64_t embed = MulAdd(MulAdd(s.vocab(), 1, s.context()), c, MulAdd(2, c, 0));
  return blocks < 0 || embed < 0 ? -1 : MulAdd(blocks, 1, embed);
}

}  // namespace

int64_t ParameterCount(const ModelSpec& m) {
  if (m.has_gpt()) return GptParameterCount(m.gpt());
  if (m.has_mlp()) return AddLinearStack(0, m.mlp().in_features(), m.mlp().hidden(), m.mlp().out_features());
  if (!m.has_cnn()) return 0;
  const CnnSpec& s = m.cnn();
  int64_t total = 0, c_in = s.in_channels(), h = s.height(), w = s.width();
  const int64_t k2 = MulAdd(s.kernel(), s.kernel(), 0);
  for (int64_t c : s.channels()) {
    const int64_t per_out = MulAdd(c_in, k2, 1);  // a k x k filter over c_in channels, and a bias
    total = per_out < 0 || total < 0 ? -1 : MulAdd(per_out, c, total);
    c_in = c;
    h /= 2;
    w /= 2;
  }
  const int64_t flat = MulAdd(c_in, MulAdd(h, w, 0), 0);
  return total < 0 || flat < 0 ? -1 : AddLinearStack(total, flat, s.hidden(), s.out_features());
}

int64_t OutFeatures(const ModelSpec& m) {
  if (m.has_gpt()) return m.gpt().vocab();
  return m.has_mlp() ? m.mlp().out_features() : m.cnn().out_features();
}

const char* OutFeaturesField(const ModelSpec& m) {
  if (m.has_gpt()) return "model.gpt.vocab";
  return m.has_mlp() ? "model.mlp.out_features" : "model.cnn.out_features";
}

const char* FamilyName(const ModelSpec& m) { return m.has_gpt() ? "gpt" : m.has_cnn() ? "cnn" : "mlp"; }

Shape ImpliedExampleShape(const ModelSpec& m) {
  if (m.has_gpt()) return {m.gpt().context()};
  if (m.has_cnn()) return {m.cnn().in_channels(), m.cnn().height(), m.cnn().width()};
  return {m.mlp().in_features()};
}

std::string DescribeModel(const ModelSpec& m) {
  std::ostringstream s;
  auto list = [&](const auto& v, char sep) {
    for (int i = 0; i < v.size(); ++i) s << (i ? std::string(1, sep) : "") << v.Get(i);
  };
  if (m.has_mlp()) {
    s << "mlp " << m.mlp().in_features() << "-";
    list(m.mlp().hidden(), '-');
    s << (m.mlp().hidden_size() ? "-" : "") << m.mlp().out_features() << (m.mlp().activation() == GELU ? " gelu" : " relu");
  } else if (m.has_cnn()) {
    const CnnSpec& c = m.cnn();
    s << "cnn " << c.in_channels() << "x" << c.height() << "x" << c.width() << " conv ";
    list(c.channels(), ',');
    s << " k" << c.kernel() << " fc ";
    list(c.hidden(), '-');
    s << (c.hidden_size() ? "-" : "") << c.out_features();
  } else if (m.has_gpt()) {
    const GptSpec& g = m.gpt();
    s << "gpt " << g.layers() << " layers, " << g.heads() << " heads, width " << g.width() << ", context "
      << g.context() << ", vocab " << g.vocab();
    if (g.dropout() > 0) s << ", dropout " << g.dropout();
  } else {
    s << "none";
  }
  return s.str();
}

}  // namespace tessera::models
