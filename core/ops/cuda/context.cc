// Device discovery, per-device streams and library handles, and the CUDA caching allocators.
#include "core/ops/cuda/context.h"

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "core/allocator.h"
#include "core/device.h"
#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/cuda_kernels.h"

namespace tessera {
namespace {

struct Availability {
  int count = 0;
  std::string why;
};

// Asked once: the answer does not change while the process runs. Any error from the runtime
// (no driver, a driver older than the runtime, no device) means "no GPU", never a crash.
const Availability& Probe() {
  static const Availability a = [] {
    Availability r;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear it so later calls do not report it again
      r.why = std::string("no CUDA device: ") + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) +
              ")";
      return r;
    }
    if (n <= 0) {
      r.why = "no CUDA device: cudaGetDeviceCount found none";
      return r;
    }
    r.count = n < cuda::kMaxDevices ? n : cuda::kMaxDevices;
    return r;
  }();
  return a;
}

}  // namespace

bool CudaAvailable(std::string* why) {
  const Availability& a = Probe();
  if (why) *why = a.count > 0 ? std::string() : a.why;
  return a.count > 0;
}

int CudaDeviceCount() { return Probe().count; }

namespace cuda {
namespace {

struct DeviceContext {
  std::once_flag once;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
#if TESSERA_USE_CUDNN
  cudnnHandle_t cudnn = nullptr;
#endif
};

DeviceContext& Context(int device) {
  if (device < 0 || device >= CudaDeviceCount()) {
    std::string why;
    CudaAvailable(&why);
    TESSERA_THROW(DeviceError, "cuda:", device, " does not exist (", CudaDeviceCount(),
                  " CUDA devices", why.empty() ? "" : "; ", why, ")");
  }
  static DeviceContext* contexts = new DeviceContext[kMaxDevices];  // leaked on purpose
  DeviceContext& c = contexts[device];
  // If creation throws, call_once leaves the flag unset and the next caller tries again.
  std::call_once(c.once, [&] {
    DeviceGuard guard(device);
    TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
    TESSERA_CUBLAS_CHECK(cublasCreate(&c.cublas));
    TESSERA_CUBLAS_CHECK(cublasSetStream(c.cublas, c.stream));
    TESSERA_CUBLAS_CHECK(cublasSetPointerMode(c.cublas, CUBLAS_POINTER_MODE_HOST));
    TESSERA_CUBLAS_CHECK(cublasSetMathMode(
        c.cublas, AllowTf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
#if TESSERA_USE_CUDNN
    TESSERA_CUDNN_CHECK(cudnnCreate(&c.cudnn));
    TESSERA_CUDNN_CHECK(cudnnSetStream(c.cudnn, c.stream));
#endif
  });
  return c;
}

// Raw allocation for one device: the CachingAllocator's raw functions are plain function
// pointers, so each device index gets its own instantiation that makes that device current.
template <int kDevice>
void* RawAllocOn(size_t bytes) {
  DeviceGuard guard(kDevice);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return nullptr;  // the caching allocator empties its cache and retries, then throws
  }
  if (e != cudaSuccess) ThrowCudaError(e, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

template <int kDevice>
void RawFreeOn(void* p) {
  DeviceGuard guard(kDevice);
  // Cached blocks may still be read by queued kernels (on any stream): wait for them first.
  TESSERA_CUDA_CHECK(cudaDeviceSynchronize());
  TESSERA_CUDA_CHECK(cudaFree(p));
}

template <size_t... I>
constexpr std::array<CachingAllocator::RawAlloc, sizeof...(I)> RawAllocs(
    std::index_sequence<I...>) {
  return {&RawAllocOn<static_cast<int>(I)>...};
}
template <size_t... I>
constexpr std::array<CachingAllocator::RawFree, sizeof...(I)> RawFrees(std::index_sequence<I...>) {
  return {&RawFreeOn<static_cast<int>(I)>...};
}

}  // namespace

bool AllowTf32() {
  static const bool allow = [] {
    const char* v = std::getenv("TESSERA_ALLOW_TF32");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return allow;
}

DeviceGuard::DeviceGuard(int device) {
  if (device < 0 || device >= CudaDeviceCount())
    TESSERA_THROW(DeviceError, "cuda:", device, " does not exist (", CudaDeviceCount(),
                  " CUDA devices)");
  int current = -1;
  TESSERA_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) {
    TESSERA_CUDA_CHECK(cudaSetDevice(device));
    previous_ = current;
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);  // a destructor must not throw; nothing to undo
}

cudaStream_t CurrentStream(int device) { return Context(device).stream; }
cublasHandle_t CublasHandle(int device) { return Context(device).cublas; }
#if TESSERA_USE_CUDNN
cudnnHandle_t CudnnHandle(int device) { return Context(device).cudnn; }
#endif

void Synchronize(Device device) {
  if (!device.is_cuda()) return;
  DeviceGuard guard(device.index);
  TESSERA_CUDA_CHECK(cudaStreamSynchronize(CurrentStream(device.index)));
}

void InstallAllocators() {
  static constexpr auto allocs = RawAllocs(std::make_index_sequence<kMaxDevices>());
  static constexpr auto frees = RawFrees(std::make_index_sequence<kMaxDevices>());
  static std::once_flag once;
  std::call_once(once, [] {
    for (int i = 0; i < CudaDeviceCount(); ++i) {
      // Names and allocators are leaked on purpose: tensors in static storage may be freed after
      // main returns, and the allocator keeps the name pointer.
      auto* name = new std::string("cuda:" + std::to_string(i));
      SetAllocator(Device::CUDA(i), new CachingAllocator(allocs[i], frees[i], name->c_str()));
    }
  });
}

}  // namespace cuda
}  // namespace tessera
