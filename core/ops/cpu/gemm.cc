// GEMM through OpenBLAS's CBLAS (row-major). OpenBLAS's thread count follows SetNumThreads().
#include <cblas.h>

#include "core/ops/cpu/cpu_kernels.h"

namespace tessera::cpu {

void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta) {
  const int m = static_cast<int>(c.dim(0)), n = static_cast<int>(c.dim(1));
  const int k = static_cast<int>(ta ? a.dim(0) : a.dim(1));
  const int lda = static_cast<int>(a.dim(1)), ldb = static_cast<int>(b.dim(1));
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS leaves c untouched; we define it as beta * c
    Axpby(0.0, c, beta, c);
    return;
  }
  auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  switch (a.dtype()) {
    case DType::kF32:
      cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, static_cast<float>(alpha), a.data<float>(), lda,
                  b.data<float>(), ldb, static_cast<float>(beta), c.data<float>(), n);
      break;
    case DType::kF64:
      cblas_dgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(),
                  ldb, beta, c.data<double>(), n);
      break;
    default:
      TESSERA_THROW(ShapeError, "Gemm: dtype ", DTypeName(a.dtype()), " is not supported on the CPU");
  }
}

}  // namespace tessera::cpu
