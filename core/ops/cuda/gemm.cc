// GEMM through cuBLAS. cuBLAS is column-major and a row-major [r, c] matrix is the column-major
// [c, r] matrix, its transpose; so row-major c = op(a) op(b) is computed as the column-major
// c^T = op(b)^T op(a)^T, passing b first. f32 uses TF32 only when AllowTf32() (context.h).
#include <climits>

#include "core/ops/cuda/context.h"
#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/cuda_kernels.h"

namespace tessera::cuda {
namespace {
int CheckedInt(int64_t v, const char* what, const Tensor& a, const Tensor& b) {
  if (v > INT_MAX)
    TESSERA_THROW(ShapeError, "Gemm: ", what, " = ", v, " exceeds cuBLAS's 32-bit limit (a ",
                  a.Describe(), ", b ", b.Describe(), ")");
  return static_cast<int>(v);
}
}  // namespace

void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha,
          double beta) {
  if (a.dtype() != DType::kF32 && a.dtype() != DType::kF64)
    TESSERA_THROW(ShapeError, "Gemm: dtype ", DTypeName(a.dtype()),
                  " is not supported on CUDA (f32 and f64 are)");
  const int m = CheckedInt(c.dim(0), "m", a, b), n = CheckedInt(c.dim(1), "n", a, b);
  const int k = CheckedInt(ta ? a.dim(0) : a.dim(1), "k", a, b);
  const int lda = CheckedInt(a.dim(1), "lda", a, b), ldb = CheckedInt(b.dim(1), "ldb", a, b);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // as on the CPU: c = beta * c
    Axpby(0.0, c, beta, c);
    return;
  }
  const int device = c.device().index;
  DeviceGuard guard(device);
  cublasHandle_t h = CublasHandle(device);
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (a.dtype() == DType::kF32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    TESSERA_CUBLAS_CHECK(cublasSgemm(h, opb, opa, n, m, k, &al, b.data<float>(), ldb,
                                     a.data<float>(), lda, &be, c.data<float>(), n));
  } else {
    TESSERA_CUBLAS_CHECK(cublasDgemm(h, opb, opa, n, m, k, &alpha, b.data<double>(), ldb,
                                     a.data<double>(), lda, &beta, c.data<double>(), n));
  }
}

}  // namespace tessera::cuda
