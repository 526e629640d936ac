#include "core/models.h"

#include <cmath>

#include "core/nn/layers.h"
#include "core/nn/transformer.h"

namespace tessera::models {

std::unique_ptr<nn::Sequential> BuildMlp(const MlpConfig& c) {
  auto net = std::make_unique<nn::Sequential>();
  net->Add(std::make_unique<nn::Flatten>());
  int64_t in = c.in_features;
  for (int64_t h : c.hidden) {
    net->Add(std::make_unique<nn::Linear>(in, h));
    if (c.gelu)
      net->Add(std::make_unique<nn::GELU>());
    else
      net->Add(std::make_unique<nn::ReLU>());
    if (c.dropout > 0) net->Add(std::make_unique<nn::Dropout>(c.dropout));
    in = h;
  }
  net->Add(std::make_unique<nn::Linear>(in, c.out_features));
  return net;
}

std::unique_ptr<nn::Sequential> BuildCnn(const CnnConfig& c) {
  auto net = std::make_unique<nn::Sequential>();
  int64_t ch = c.in_channels, h = c.height, w = c.width;
  for (int64_t out : c.channels) {
    // Conv -> ReLU -> MaxPool, computed as Conv -> MaxPool -> ReLU: ReLU is monotonic, so the two
    // orders give bit-identical outputs and gradients (ties included), and the ReLU then runs on
    // a quarter of the values.
    net->Add(std::make_unique<nn::Conv2d>(ch, out, c.kernel, 1, c.kernel / 2));
    net->Add(std::make_unique<nn::MaxPool2d>(2));
    net->Add(std::make_unique<nn::ReLU>());
    ch = out;
    h /= 2;
    w /= 2;
    if (h < 1 || w < 1)
      TESSERA_THROW(ConfigError, "cnn: ", c.channels.size(), " pooling stages shrink a ", c.height, "x",
                    c.width, " input below 1x1");
  }
  net->Add(std::make_unique<nn::Flatten>());
  int64_t in = ch * h * w;
  for (int64_t hid : c.hidden) {
    net->Add(std::make_unique<nn::Linear>(in, hid));
    net->Add(std::make_unique<nn::ReLU>());
    if (c.dropout > 0) net->Add(std::make_unique<nn::Dropout>(c.dropout));
    in = hid;
  }
  net->Add(std::make_unique<nn::Linear>(in, c.out_features));
  return net;
}

std::unique_ptr<nn::Sequential> BuildGpt(const GptConfig& c) {
  const std::pair<const char*, int64_t> sizes[] = {{"layers", c.layers},
                                                   {"heads", c.heads},
                                                   {"width", c.width},
                                                   {"context", c.context},
                                                   {"vocab", c.vocab}};
  for (auto& [field, v] : sizes)
    if (v < 1) TESSERA_THROW(ConfigError, "gpt.", field, " must be at least 1, got ", v);
  if (c.width % c.heads != 0)
    TESSERA_THROW(ConfigError, "gpt.width (", c.width, ") must be a multiple of gpt.heads (", c.heads, ")");
  if (!(c.dropout >= 0 && c.dropout < 1))
    TESSERA_THROW(ConfigError, "gpt.dropout must be in [0, 1), got ", c.dropout);
  // A spec may come from a file (a store version, a checkpoint): bound what it makes us build.
  if (c.layers > kMaxGptLayers || c.width > kMaxGptWidth || c.context > kMaxGptContext ||
      c.vocab > kMaxGptVocab)
    TESSERA_THROW(ConfigError, "gpt: layers ", c.layers, ", width ", c.width, ", context ", c.context,
                  ", vocab ", c.vocab, " exceed the limits (", kMaxGptLayers, ", ", kMaxGptWidth, ", ",
                  kMaxGptContext, ", ", kMaxGptVocab, ")");
  auto net = std::make_unique<nn::Sequential>();
  auto& embed = net->Add("embed", std::make_unique<nn::GptEmbedding>(c.vocab, c.context, c.width, c.dropout));
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.layers));
  for (int64_t l = 0; l < c.layers; ++l) {
    auto& block = net->Add("h" + std::to_string(l),
                           std::make_unique<nn::TransformerBlock>(c.width, c.heads, c.dropout));
    nn::InitProjection(block.attn().c_proj(), residual_std);
    nn::InitProjection(block.mlp().c_proj(), residual_std);
  }
  net->Add("ln_f", std::make_unique<nn::LayerNorm>(c.width));
  net->Add("head", std::make_unique<nn::TiedLmHead>(embed));
  return net;
}

}  // namespace tessera::models
