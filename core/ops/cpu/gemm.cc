// GEMM through OpenBLAS's CBLAS (row-major).
//
// OpenBLAS itself always runs on one thread (see core/threads.cc); tessera splits C into blocks of
// columns (or rows) across its own pool, one CBLAS call per block, so no second thread pool
// competes for the cores. The split is a pure function of the shape and the thread count, so a
// given thread count always gives bitwise the same result. Different thread counts can differ in
// the last bits: OpenBLAS picks kernels by block shape.
#include <cblas.h>

#include <algorithm>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/threads.h"
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace tessera::cpu {
namespace {

template <typename T>
void BlasGemm(CBLAS_TRANSPOSE opa, CBLAS_TRANSPOSE opb, int m, int n, int k, T alpha, const T* a,
              int lda, const T* b, int ldb, T beta, T* c, int ldc) {
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else
    cblas_dgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Below this many multiply-adds a GEMM runs on the calling thread.
constexpr int64_t kParallelGemmWork = int64_t(1) << 18;
// Blocks are multiples of this many rows or columns (a multiple of every kernel's unroll).
constexpr int64_t kBlockAlign = 32;

template <typename T>
void ParallelGemm(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
                  int ldb, T beta, T* c) {
  auto opa = ta ? CblasTrans : CblasNoTrans, opb = tb ? CblasTrans : CblasNoTrans;
  int threads = GetNumThreads();
#if TESSERA_USE_ONEDNN
  // On one thread, f32 goes through oneDNN's sgemm: it uses the machine's widest vectors, where
  // OpenBLAS may be pinned to AVX2 (OPENBLAS_CORETYPE); here 260 against 134 GFLOP/s. On more
  // threads the OpenBLAS blocks below measured faster for these shapes (W1 2 threads: 87k
  // against 81k samples/s; bench/step_bench), so they stay.
  if constexpr (std::is_same_v<T, float>) {
    if (threads == 1) {
      dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, n);
      if (st != dnnl_success) TESSERA_THROW(Error, "Gemm: dnnl_sgemm failed with status ", static_cast<int>(st));
      return;
    }
  }
#endif
  int64_t work = int64_t(m) * n * k;
  bool split_cols = n >= m;
  int64_t extent = split_cols ? n : m;
  int64_t blocks = std::min<int64_t>(threads, (extent + kBlockAlign - 1) / kBlockAlign);
  if (threads == 1 || work < kParallelGemmWork || blocks < 2) {
    BlasGemm<T>(opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, n);
    return;
  }
  int64_t per = (extent + blocks - 1) / blocks;
  per = (per + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  ParallelFor(blocks, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      int64_t lo = blk * per, hi = std::min<int64_t>(extent, lo + per);
      if (lo >= hi) continue;
      int len = static_cast<int>(hi - lo);
      if (split_cols) {  // C[:, lo:hi] = op(A) op(B)[:, lo:hi]
        const T* bp = tb ? b + lo * ldb : b + lo;
        BlasGemm<T>(opa, opb, m, len, k, alpha, a, lda, bp, ldb, beta, c + lo, n);
      } else {  // C[lo:hi, :] = op(A)[lo:hi, :] op(B)
        const T* ap = ta ? a + lo : a + lo * lda;
        BlasGemm<T>(opa, opb, len, n, k, alpha, ap, lda, b, ldb, beta, c + lo * n, n);
      }
    }
  });
}

}  // namespace

template <typename T>
void StridedGemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#if TESSERA_USE_ONEDNN
  if constexpr (std::is_same_v<T, float>) {
    dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (st != dnnl_success) TESSERA_THROW(Error, "Gemm: dnnl_sgemm failed with status ", static_cast<int>(st));
    return;
  }
#endif
  BlasGemm<T>(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}
template void StridedGemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t);
template void StridedGemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t);

void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta) {
  const int m = static_cast<int>(c.dim(0)), n = static_cast<int>(c.dim(1));
  const int k = static_cast<int>(ta ? a.dim(0) : a.dim(1));
  const int lda = static_cast<int>(a.dim(1)), ldb = static_cast<int>(b.dim(1));
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: c = beta * c (and exactly 0 when beta is 0, whatever c held)
    if (beta == 0.0) Fill(c, 0.0);
    else Axpby(0.0, c, beta, c);
    return;
  }
  switch (a.dtype()) {
    case DType::kF32:
      ParallelGemm<float>(ta, tb, m, n, k, static_cast<float>(alpha), a.data<float>(), lda,
                          b.data<float>(), ldb, static_cast<float>(beta), c.data<float>());
      break;
    case DType::kF64:
      ParallelGemm<double>(ta, tb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(), ldb, beta,
                           c.data<double>());
      break;
    default:
      TESSERA_THROW(ShapeError, "Gemm: dtype ", DTypeName(a.dtype()), " is not supported on the CPU");
  }
}

}  // namespace tessera::cpu
