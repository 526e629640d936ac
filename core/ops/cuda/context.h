// Per-device CUDA state shared by the CUDA kernels and (later) the NCCL process group.
//
// Each device has one stream, created on first use, and every kernel, copy, cuBLAS and cuDNN call
// that tessera makes for that device runs on it. This single-stream rule is what makes the caching
// allocator safe: a block freed on the host while kernels that use it are still queued can only be
// handed out again to work queued later on the same stream. Code that uses the memory on another
// stream (NCCL) must order itself after CurrentStream() with events, and the stream after it.
//
// The streams are non-blocking (no implicit ordering with the legacy default stream). Handles and
// streams live until the process exits (never destroyed: the driver may be gone by then).
// Thread safety: the accessors are safe to call from any thread; the stream itself is shared.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tessera/config.h"

#if TESSERA_USE_CUDNN
#include <cudnn.h>
#endif

namespace tessera::cuda {

// The highest device index (exclusive) the backend supports; matches the allocator slots.
constexpr int kMaxDevices = 64;

// The stream all of tessera's work on `device` is queued on. Throws DeviceError for an index
// outside [0, CudaDeviceCount()).
cudaStream_t CurrentStream(int device);
// cuBLAS handle bound to CurrentStream(device); math mode per AllowTf32().
cublasHandle_t CublasHandle(int device);
#if TESSERA_USE_CUDNN
// cuDNN handle bound to CurrentStream(device).
cudnnHandle_t CudnnHandle(int device);
#endif

// True when the environment variable TESSERA_ALLOW_TF32=1 was set at first use: f32 GEMMs and
// convolutions may then use TF32 tensor cores (10-bit mantissa products). Default off.
bool AllowTf32();

// Makes `device` current for the scope; restores the previous device on exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Installs a caching allocator over cudaMalloc/cudaFree for each present device (SetAllocator).
// Called once by RegisterCudaOps.
void InstallAllocators();

}  // namespace tessera::cuda
