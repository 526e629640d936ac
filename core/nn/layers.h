// The built-in layers. Shapes follow PyTorch: Linear takes [..., in]; Conv2d and MaxPool2d take
// NCHW; Embedding takes integer ids of any shape. Initialisation matches PyTorch's defaults.
#pragma once

#include "core/nn/module.h"
#include "core/ops/params.h"

namespace tessera::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }

 private:
  int64_t in_, out_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
  Tensor x_;  // saved input, [rows, in]
  Shape x_shape_;
};

class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int kernel_size, int stride = 1, int padding = 0,
         bool bias = true);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  int kernel_size() const { return kernel_; }
  const Conv2dParams& params() const { return params_; }

 private:
  int64_t in_, out_;
  int kernel_;
  Conv2dParams params_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
  Tensor x_;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int kernel_size, int stride = 0 /* = kernel_size */, int padding = 0);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  const Pool2dParams& params() const { return params_; }

 private:
  Pool2dParams params_;
  Tensor indices_;
  Shape x_shape_;
};

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;

 private:
  Tensor y_;
};

// GELU with the tanh approximation (as GPT-2 uses).
class GELU : public Module {
 public:
  GELU() : Module("GELU") {}
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;

 private:
  Tensor x_;
};

// Inverted dropout; identity in eval mode. The mask is a pure function of the seed
// (Module::SetSeed) and a position: with SetBatchPosition(p), element j of row r draws number
// (p + r) * row_size + j, so each example's mask is the same on any number of ranks; without it,
// a counter that advances by the element count of every training forward.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  uint64_t rng_offset() const { return offset_; }
  void set_rng_offset(uint64_t offset) { offset_ = offset; }

 protected:
  void OnSeed(uint64_t seed) override { seed_ = seed; }
  void OnBatchPosition(uint64_t first_example) override {
    position_ = first_example;
    has_position_ = true;
  }

 private:
  double p_;
  uint64_t seed_ = 0, offset_ = 0;
  uint64_t position_ = 0;
  bool has_position_ = false;
  uint64_t last_offset_ = 0;
  bool saved_ = false;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;

 private:
  int64_t dim_;
  double eps_;
  Parameter* gamma_;
  Parameter* beta_;
  Tensor x_, mean_, rstd_;
};

// Lookup table [num, dim]; input: i32/i64 ids; initialised N(0, 1) like torch.nn.Embedding. Its
// input has no gradient: Backward() returns an undefined tensor.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim);
  Tensor Forward(const Tensor& ids) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  Parameter& weight() { return *weight_; }

 private:
  int64_t num_, dim_;
  Parameter* weight_;
  Tensor ids_;
};

// [N, d1, d2, ...] -> [N, d1 * d2 * ...]
class Flatten : public Module {
 public:
  Flatten() : Module("Flatten") {}
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;

 private:
  Shape x_shape_;
};

}  // namespace tessera::nn
