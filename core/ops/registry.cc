#include <mutex>

#include "core/ops/kernels.h"

namespace tessera {
namespace {
struct Tables {
  OpKernels cpu;
  OpKernels cuda;
  bool cuda_ok = false;
  std::string cuda_why;
};

Tables& GetTables() {
  static Tables* tables = [] {
    auto* t = new Tables();
    RegisterCpuOps(t->cpu);
#if TESSERA_USE_CUDA
    t->cuda_ok = CudaAvailable(&t->cuda_why);
    if (t->cuda_ok) RegisterCudaOps(t->cuda);
#else
    t->cuda_why = "tessera was built without CUDA (TESSERA_USE_CUDA=OFF)";
#endif
    return t;
  }();
  return *tables;
}
}  // namespace

const OpKernels& KernelsFor(Device device) {
  Tables& t = GetTables();
  if (device.is_cpu()) return t.cpu;
  if (!t.cuda_ok) TESSERA_THROW(DeviceError, "cannot run on ", device.str(), ": ", t.cuda_why);
  return t.cuda;
}

#if !TESSERA_USE_CUDA
bool CudaAvailable(std::string* why) {
  if (why) *why = "tessera was built without CUDA (TESSERA_USE_CUDA=OFF)";
  return false;
}
int CudaDeviceCount() { return 0; }
#endif

}  // namespace tessera
