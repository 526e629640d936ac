// Where a tensor lives: the host, or CUDA device n.
#pragma once

#include <string>

namespace tessera {

enum class DeviceType : unsigned char { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device CPU() { return {DeviceType::kCPU, 0}; }
  static Device CUDA(int index = 0) { return {DeviceType::kCUDA, index}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device& o) const { return type == o.type && (is_cpu() || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// True when CUDA kernels are compiled in and at least one GPU answers. `why` (if given) receives
// the reason when false, e.g. "no CUDA device: CUDA driver version is insufficient ...".
bool CudaAvailable(std::string* why = nullptr);
int CudaDeviceCount();

}  // namespace tessera
