// Checking macros for CUDA runtime, cuBLAS and cuDNN calls. A failed call throws
// tessera::DeviceError naming the call, file:line and the library's error string. Every call into
// those libraries in core/ops/cuda/ goes through one of these.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "tessera/config.h"

#if TESSERA_USE_CUDNN
#include <cudnn.h>
#endif

namespace tessera::cuda {

[[noreturn]] inline void ThrowCudaError(cudaError_t e, const char* call, const char* file,
                                        int line) {
  // Reset the runtime's last-error state, so that a recoverable failure (a bad device index, say)
  // is not reported again by the next launch check. Sticky errors stay regardless.
  cudaGetLastError();
  TESSERA_THROW(DeviceError, call, " failed at ", file, ":", line, ": ", cudaGetErrorName(e), " (",
                cudaGetErrorString(e), ")");
}

[[noreturn]] inline void ThrowCublasError(cublasStatus_t s, const char* call, const char* file,
                                          int line) {
  TESSERA_THROW(DeviceError, call, " failed at ", file, ":", line, ": ", cublasGetStatusString(s));
}

#if TESSERA_USE_CUDNN
[[noreturn]] inline void ThrowCudnnError(cudnnStatus_t s, const char* call, const char* file,
                                         int line) {
  TESSERA_THROW(DeviceError, call, " failed at ", file, ":", line, ": ", cudnnGetErrorString(s));
}
#endif

}  // namespace tessera::cuda

#define TESSERA_CUDA_CHECK(call)                                                \
  do {                                                                          \
    cudaError_t tessera_err_ = (call);                                          \
    if (tessera_err_ != cudaSuccess)                                            \
      ::tessera::cuda::ThrowCudaError(tessera_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports a bad launch configuration (or an earlier asynchronous fault).
#define TESSERA_CUDA_CHECK_LAUNCH() TESSERA_CUDA_CHECK(cudaGetLastError())

#define TESSERA_CUBLAS_CHECK(call)                                               \
  do {                                                                           \
    cublasStatus_t tessera_st_ = (call);                                         \
    if (tessera_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::tessera::cuda::ThrowCublasError(tessera_st_, #call, __FILE__, __LINE__); \
  } while (0)

#if TESSERA_USE_CUDNN
#define TESSERA_CUDNN_CHECK(call)                                               \
  do {                                                                          \
    cudnnStatus_t tessera_st_ = (call);                                         \
    if (tessera_st_ != CUDNN_STATUS_SUCCESS)                                    \
      ::tessera::cuda::ThrowCudnnError(tessera_st_, #call, __FILE__, __LINE__); \
  } while (0)
#endif
