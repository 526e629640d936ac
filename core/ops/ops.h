// Ops: the one declaration of each operation. Every function checks its arguments -- shapes,
// dtypes, devices -- and throws ShapeError naming the op and the offending shapes, then runs the
// kernel of the tensors' device (core/ops/kernels.h). Functions returning a Tensor allocate it on
// the inputs' device through the caching allocator.
#pragma once

#include <cstdint>

#include "core/ops/params.h"
#include "core/tensor.h"

namespace tessera::ops {

// ---- linear algebra ----
// c = alpha * op(a) @ op(b) + beta * c; a, b, c are 2-D.
void Gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
          double alpha = 1.0, double beta = 0.0);
Tensor MatMul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// ---- elementwise ----
Tensor Unary(UnaryOp op, const Tensor& x);
void UnaryInto(UnaryOp op, const Tensor& x, Tensor& y);
// dx = dy * f'(x); returns dx.
Tensor UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& dy);

inline Tensor Relu(const Tensor& x) { return Unary(UnaryOp::kRelu, x); }
inline Tensor Gelu(const Tensor& x) { return Unary(UnaryOp::kGelu, x); }
Tensor Binary(BinaryOp op, const Tensor& a, const Tensor& b);
inline Tensor Add(const Tensor& a, const Tensor& b) { return Binary(BinaryOp::kAdd, a, b); }
inline Tensor Sub(const Tensor& a, const Tensor& b) { return Binary(BinaryOp::kSub, a, b); }
inline Tensor Mul(const Tensor& a, const Tensor& b) { return Binary(BinaryOp::kMul, a, b); }
inline Tensor Div(const Tensor& a, const Tensor& b) { return Binary(BinaryOp::kDiv, a, b); }
// y = alpha * x + beta * y
void Axpby(double alpha, const Tensor& x, double beta, Tensor& y);
void Scale(Tensor& x, double s);

// ---- broadcasts and reductions ----
// y [..., C] += bias [C]
void AddBias(Tensor& y, const Tensor& bias);
// y [N, C, ...] += bias [C]
void AddChannelBias(Tensor& y, const Tensor& bias);
// out [C] (+)= sum over all leading dims of x [..., C]
void SumRows(const Tensor& x, Tensor& out, bool accumulate);
// out [C] (+)= sum over N and spatial dims of x [N, C, ...]
void SumChannels(const Tensor& x, Tensor& out, bool accumulate);
Tensor Sum(const Tensor& x);   // one element, shape {}
Tensor Mean(const Tensor& x);
Tensor Max(const Tensor& x);
double SumSquares(const Tensor& x);  // on the host

// ---- normalisation ----
Tensor Softmax(const Tensor& x);     // along the last dim
Tensor LogSoftmax(const Tensor& x);
Tensor SoftmaxBackward(const Tensor& y, const Tensor& dy, bool log);
// x [..., D]; gamma, beta [D]; mean and rstd receive [rows].
Tensor LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                 Tensor* mean, Tensor* rstd);
// Returns dx; accumulates into dgamma and dbeta.
Tensor LayerNormBackward(const Tensor& x, const Tensor& gamma, const Tensor& mean,
                         const Tensor& rstd, const Tensor& dy, Tensor& dgamma, Tensor& dbeta);

// ---- attention ----
// Causal multi-head self-attention (GPT's), fused: qkv [B, T, 3C] is the packed projection (q | k
// | v; head h at columns h*Dh .. (h+1)*Dh of each third, Dh = C / heads). Returns y [B, T, C],
// y[b, i, head h] = sum over j <= i of softmax_j(q_i . k_j / sqrt(Dh)) v_j, the softmax computed
// against each row's maximum. *lse receives [B, heads, T], each row's log-sum-exp, for backward.
Tensor CausalAttention(const Tensor& qkv, int64_t heads, Tensor* lse);
// Returns dqkv [B, T, 3C] from the forward's qkv and lse and dL/dy.
Tensor CausalAttentionBackward(const Tensor& qkv, const Tensor& lse, const Tensor& dy, int64_t heads);

// ---- lookup ----
Tensor Embedding(const Tensor& weight, const Tensor& ids);
void EmbeddingBackward(const Tensor& ids, const Tensor& dy, Tensor& dweight);

// ---- randomness ----
// Inverted dropout with a counter-based mask: element i keeps iff Philox(seed, offset + i) >= p.
// The backward of dropout is the same call on dy (the mask is recomputed, never stored).
Tensor Dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset);

// ---- convolution and pooling (NCHW) ----
Shape Conv2dOutputShape(const Shape& x, const Shape& w, const Conv2dParams& p);
Tensor Conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
// dx: overwritten if defined (pass an undefined tensor to skip it); dw, db accumulated.
void Conv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p,
                    Tensor* dx, Tensor& dw, Tensor* db);
Shape Pool2dOutputShape(const Shape& x, const Pool2dParams& p);
Tensor MaxPool2d(const Tensor& x, const Pool2dParams& p, Tensor* indices);
Tensor MaxPool2dBackward(const Tensor& dy, const Tensor& indices, const Shape& x_shape);

// ---- losses ----
// Mean softmax cross-entropy over rows of logits [N, C] with integer labels [N] (i32). Writes the
// softmax into *probs for the backward. Throws DataError naming the row for a label outside [0, C).
Tensor CrossEntropy(const Tensor& logits, const Tensor& labels, Tensor* probs);
Tensor CrossEntropyBackward(const Tensor& probs, const Tensor& labels, double scale = 1.0);

// ---- optimizer steps over flat slices ----
void SgdStep(Tensor& param, const Tensor& grad, Tensor& momentum_buf, const SgdStepParams& p);
void AdamStep(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
              const AdamStepParams& p);
void RmspropStep(Tensor& param, const Tensor& grad, Tensor& square_avg, Tensor& grad_avg,
                 Tensor& momentum_buf, const RmspropStepParams& p);

void Synchronize(Device device);

}  // namespace tessera::ops
