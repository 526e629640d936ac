// The per-device kernel table. Each op is declared once (core/ops/ops.h validates arguments and
// picks the table by the tensors' device); each device backend fills a table with its kernels:
// RegisterCpuOps() in ops/cpu/, RegisterCudaOps() in ops/cuda/ (compiled only when CUDA is).
// Registration is explicit -- KernelsFor() calls the register functions once -- so nothing depends
// on static initialisers surviving the link.
//
// Kernel contract: arguments are already validated by the front-end (shapes agree, dtypes agree,
// all tensors on the kernel's device, outputs allocated). A kernel supporting only some dtypes
// throws ShapeError naming the op and dtype. Kernels run asynchronously on CUDA (stream order);
// functions returning host values synchronise.
#pragma once

#include "core/ops/params.h"
#include "tessera/config.h"
#include "core/tensor.h"

namespace tessera {

struct OpKernels {
  // Memory.
  void (*fill)(Tensor& t, double value) = nullptr;
  // dst and src: same dtype, same numel. On CUDA either side may be on the host.
  void (*copy)(Tensor& dst, const Tensor& src) = nullptr;
  // Same numel, different dtypes (f32/f64/bf16/f16 among each other).
  void (*cast)(Tensor& dst, const Tensor& src) = nullptr;

  // c[M,N] = alpha * op(a) @ op(b) + beta * c, all row-major 2-D.
  void (*gemm)(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
               double alpha, double beta) = nullptr;

  // Elementwise; out may alias an input.
  void (*unary)(UnaryOp op, const Tensor& x, Tensor& y) = nullptr;
  // dx = dy * f'(x)  (dx may alias dy).
  void (*unary_backward)(UnaryOp op, const Tensor& x, const Tensor& dy, Tensor& dx) = nullptr;
  void (*binary)(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) = nullptr;
  // y = alpha * x + beta * y
  void (*axpby)(double alpha, const Tensor& x, double beta, Tensor& y) = nullptr;

  // y[r, c] += bias[c] for y viewed as [rows, C].
  void (*add_bias)(Tensor& y, const Tensor& bias) = nullptr;
  // y[n, c, s] += bias[c] for y viewed as [N, C, S].
  void (*add_channel_bias)(Tensor& y, const Tensor& bias) = nullptr;
  // out[c] (+)= sum_r x[r, c] for x viewed as [rows, C].
  void (*sum_rows)(const Tensor& x, Tensor& out, bool accumulate) = nullptr;
  // out[c] (+)= sum_{n,s} x[n, c, s] for x viewed as [N, C, S].
  void (*sum_channels)(const Tensor& x, Tensor& out, bool accumulate) = nullptr;
  // out (one element) = sum / mean / max of all elements.
  void (*reduce)(ReduceOp op, const Tensor& x, Tensor& out) = nullptr;
  // Sum of squares of all elements, returned to the host in double (synchronises).
  double (*sum_squares)(const Tensor& x) = nullptr;

  // Along the last dimension.
  void (*softmax)(const Tensor& x, Tensor& y, bool log) = nullptr;
  void (*softmax_backward)(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) = nullptr;

  // x viewed as [rows, D]; mean and rstd are [rows].
  void (*layernorm)(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps,
                    Tensor& y, Tensor& mean, Tensor& rstd) = nullptr;
  // dgamma and dbeta are accumulated into.
  void (*layernorm_backward)(const Tensor& x, const Tensor& gamma, const Tensor& mean,
                             const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dgamma,
                             Tensor& dbeta) = nullptr;

  // Causal multi-head self-attention over the packed projection qkv [B, T, 3C] (q | k | v, head h
  // at columns h*Dh .. (h+1)*Dh of each third, Dh = C / heads): y [B, T, C] (heads side by side),
  // softmax(q k^T / sqrt(Dh)) over keys j <= i, and lse [B, heads, T], each row's log-sum-exp of
  // the scaled scores, which backward uses to recompute the probabilities.
  void (*causal_attention)(const Tensor& qkv, int64_t heads, Tensor& y, Tensor& lse) = nullptr;
  // dqkv [B, T, 3C] is overwritten.
  void (*causal_attention_backward)(const Tensor& qkv, const Tensor& lse, const Tensor& dy, int64_t heads,
                                    Tensor& dqkv) = nullptr;

  // ids: i32 or i64, any shape; out = weight[ids] with shape ids.shape + [D].
  void (*embedding)(const Tensor& weight, const Tensor& ids, Tensor& out) = nullptr;
  // dweight[ids[i]] += dy[i] (accumulates).
  void (*embedding_backward)(const Tensor& ids, const Tensor& dy, Tensor& dweight) = nullptr;

  // Inverted dropout with a Philox mask drawn from (seed, offset + element index): y = x * m / (1-p).
  void (*dropout)(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) = nullptr;

  // x [N,C,H,W], w [K,C,R,S], bias [K] or undefined, y [N,K,P,Q].
  void (*conv2d)(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p,
                 Tensor& y) = nullptr;
  // dx (if defined) is overwritten; dw and db (if defined) are accumulated into.
  void (*conv2d_backward)(const Tensor& x, const Tensor& w, const Tensor& dy,
                          const Conv2dParams& p, Tensor& dx, Tensor& dw, Tensor& db) = nullptr;
  // indices (i32) hold, per output, the flat index into the input's H*W plane of the maximum.
  void (*maxpool2d)(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices) = nullptr;
  // dx is overwritten.
  void (*maxpool2d_backward)(const Tensor& dy, const Tensor& indices, Tensor& dx) = nullptr;

  // logits [N, C], labels i32 [N]. Writes probs = softmax(logits) and returns (via loss, one
  // element) the mean negative log-likelihood. Labels outside [0, C) are an error reported by
  // the front-end before the kernel runs on the CPU; CUDA kernels clamp and flag them.
  void (*cross_entropy)(const Tensor& logits, const Tensor& labels, Tensor& probs,
                        Tensor& loss) = nullptr;
  // dlogits = scale * (probs - onehot(labels)) / N
  void (*cross_entropy_backward)(const Tensor& probs, const Tensor& labels, double scale,
                                 Tensor& dlogits) = nullptr;

  // Optimizer updates over flat slices (all tensors the same numel). State tensors that an
  // option does not use may be undefined.
  void (*sgd_step)(Tensor& param, const Tensor& grad, Tensor& momentum_buf,
                   const SgdStepParams& p) = nullptr;
  void (*adam_step)(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                    const AdamStepParams& p) = nullptr;
  void (*rmsprop_step)(Tensor& param, const Tensor& grad, Tensor& square_avg, Tensor& grad_avg,
                       Tensor& momentum_buf, const RmspropStepParams& p) = nullptr;

  // Waits for every queued kernel on the device (no-op on the CPU).
  void (*synchronize)(Device device) = nullptr;
};

// The table for a device type. Throws DeviceError when that backend is not compiled in or no
// device is present.
const OpKernels& KernelsFor(Device device);

// Fill `table` with the backend's kernels. Called once by KernelsFor().
void RegisterCpuOps(OpKernels& table);
#if TESSERA_USE_CUDA
void RegisterCudaOps(OpKernels& table);
#endif

}  // namespace tessera
