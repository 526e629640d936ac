// Device memory allocators.
//
// Both allocators cache freed blocks and hand them out again, so a training loop that allocates
// the same shapes each step touches fresh pages (CPU: 0.5-2 GB/s on first touch) or calls
// cudaMalloc (a device synchronisation) only during its first step. Blocks are binned by size
// rounded up to a bucket; a freed block goes back to its bin. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/device.h"

namespace tessera {

struct AllocatorStats {
  size_t bytes_in_use = 0;     // handed out and not yet freed
  size_t bytes_cached = 0;     // freed, kept for reuse
  size_t peak_bytes_in_use = 0;
  uint64_t fresh_allocations = 0;  // calls that went to the system
  uint64_t cache_hits = 0;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory aligned to at least 64 bytes; never nullptr (throws on exhaustion).
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr, size_t bytes) = 0;
  // Gives every cached block back to the system.
  virtual void EmptyCache() = 0;
  virtual AllocatorStats Stats() const = 0;
};

// The allocator for a device. CUDA allocators exist only when CUDA support is compiled in; asking
// for one otherwise throws DeviceError.
Allocator& GetAllocator(Device device);

// Installs the allocator used for `device` (the CUDA backend calls this while registering).
void SetAllocator(Device device, Allocator* allocator);

// Sets `bytes` of CPU memory at `p` to zero and gives its whole pages back to the system
// (madvise MADV_DONTNEED: they read as zeros and count towards RSS again only once written), so
// memory a rank no longer needs (a ZeRO-2 gradient it does not own) stops taking space. `p` must
// be private anonymous memory (what the CPU allocator hands out): a shared or file-backed mapping
// would not read back as zeros.
void ZeroAndReleasePages(void* p, size_t bytes);

// Rounds a request to the size class it is cached under.
size_t AllocationBucket(size_t bytes);

// A caching allocator over a raw allocate/free pair; the CPU and CUDA allocators are both this.
class CachingAllocator : public Allocator {
 public:
  using RawAlloc = void* (*)(size_t bytes);
  using RawFree = void (*)(void* ptr);
  CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, const char* name);
  ~CachingAllocator() override;
  void* Allocate(size_t bytes) override;
  void Free(void* ptr, size_t bytes) override;
  void EmptyCache() override;
  AllocatorStats Stats() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
