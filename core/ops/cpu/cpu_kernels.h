// Declarations of the CPU kernels (internal to core/ops/cpu). See core/ops/kernels.h for the
// contracts; register.cc puts them in the table.
#pragma once

#include "core/ops/kernels.h"
#include "core/ops/cpu/int8.h"

namespace tessera::cpu {

void Fill(Tensor& t, double value);
void Copy(Tensor& dst, const Tensor& src);
void Cast(Tensor& dst, const Tensor& src);
void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta);
// One GEMM on the calling thread over raw row-major blocks with leading dimensions (f32, f64):
// c[m, n] = alpha * op(a) op(b) + beta * c. For kernels that split work across the pool themselves
// and address sub-blocks of a larger tensor (attention's heads).
template <typename T>
void StridedGemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc);
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
void CausalAttention(const Tensor& qkv, int64_t heads, Tensor& y, Tensor& lse);
void CausalAttentionBackward(const Tensor& qkv, const Tensor& lse, const Tensor& dy, int64_t heads, Tensor& dqkv);
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

// Which CPU convolution runs. kAuto: oneDNN for f32 when tessera is built with it (its JIT
// kernels use the machine's widest vectors), im2col + GEMM otherwise and for f64. Tests pin
// kIm2col to compare the two.
enum class CpuConvImpl { kAuto, kIm2col };
void SetCpuConvImpl(CpuConvImpl impl);
bool CpuConvUsesOneDnn();
#if TESSERA_USE_ONEDNN
// Return false when they do not apply (dtype other than f32, empty tensors).
bool OneDnnConv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y);
bool OneDnnConv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p, Tensor& dx,
                          Tensor& dw, Tensor& db);
#endif
// int8 inference through oneDNN's s8 primitives (core/ops/cpu/int8.h): false when tessera is
// built without oneDNN or the machine lacks the primitive, and the caller runs the reference loop.
bool OneDnnInt8Available();
bool OneDnnInt8Linear(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
                      const float* bias, float* y, int8::WeightCache* cache);
bool OneDnnInt8Conv2d(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& p,
                      const float* scale, const float* bias, float* y, int8::WeightCache* cache);

// Elements per task for memory-bound loops.
constexpr int64_t kElementwiseGrain = 1 << 15;
// Fixed reduction chunk: partial sums over chunks of this size are combined in chunk order, so
// results do not depend on the thread count.
constexpr int64_t kReduceChunk = 1 << 12;

}  // namespace tessera::cpu
