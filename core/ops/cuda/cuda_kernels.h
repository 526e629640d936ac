// Declarations of the CUDA kernels' host entry points (internal to core/ops/cuda). See
// core/ops/kernels.h for the contracts; register.cc puts them in the table. Each entry point makes
// the tensors' device current and queues its work on CurrentStream(device) (ops/cuda/context.h).
#pragma once

#include "core/ops/kernels.h"

namespace tessera::cuda {

void Fill(Tensor& t, double value);
void Copy(Tensor& dst, const Tensor& src);
void Cast(Tensor& dst, const Tensor& src);
void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta);
void Unary(UnaryOp op, const Tensor& x, Tensor& y);
void UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& dy, Tensor& dx);
void Binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out);
void Axpby(double alpha, const Tensor& x, double beta, Tensor& y);
void AddBias(Tensor& y, const Tensor& bias);
void AddChannelBias(Tensor& y, const Tensor& bias);
void SumRows(const Tensor& x, Tensor& out, bool accumulate);
void SumChannels(const Tensor& x, Tensor& out, bool accumulate);
void Reduce(ReduceOp op, const Tensor& x, Tensor& out);
double SumSquares(const Tensor& x);
void Softmax(const Tensor& x, Tensor& y, bool log);
void SoftmaxBackward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log);
void LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& y,
               Tensor& mean, Tensor& rstd);
void LayerNormBackward(const Tensor& x, const Tensor& gamma, const Tensor& mean, const Tensor& rstd,
                       const Tensor& dy, Tensor& dx, Tensor& dgamma, Tensor& dbeta);
void Embedding(const Tensor& weight, const Tensor& ids, Tensor& out);
void EmbeddingBackward(const Tensor& ids, const Tensor& dy, Tensor& dweight);
void Dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y);
void Conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y);
void Conv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p,
                    Tensor& dx, Tensor& dw, Tensor& db);
void MaxPool2d(const Tensor& x, const Pool2dParams& p, Tensor& y, Tensor& indices);
void MaxPool2dBackward(const Tensor& dy, const Tensor& indices, Tensor& dx);
void CrossEntropy(const Tensor& logits, const Tensor& labels, Tensor& probs, Tensor& loss);
void CrossEntropyBackward(const Tensor& probs, const Tensor& labels, double scale, Tensor& dlogits);
void SgdStep(Tensor& param, const Tensor& grad, Tensor& buf, const SgdStepParams& p);
void AdamStep(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStepParams& p);
void RmspropStep(Tensor& param, const Tensor& grad, Tensor& sq, Tensor& ga, Tensor& buf,
                 const RmspropStepParams& p);
void Synchronize(Device device);

}  // namespace tessera::cuda
