#include "core/allocator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/ops/kernels.h"

namespace tessera {

size_t AllocationBucket(size_t bytes) {
  if (bytes == 0) return 64;
  if (bytes <= 4096) {  // powers of two from 64 B
    size_t b = 64;
    while (b < bytes) b <<= 1;
    return b;
  }
  // Larger: round up to a multiple of 1/8 of the largest power of two not above the request, so
  // at most 12.5% is wasted.
  size_t p = 4096;
  while (p * 2 <= bytes) p <<= 1;
  size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

struct CachingAllocator::Impl {
  RawAlloc raw_alloc;
  RawFree raw_free;
  const char* name;
  mutable std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // bucket size -> block
  AllocatorStats stats;
};

CachingAllocator::CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, const char* name)
    : impl_(new Impl{raw_alloc, raw_free, name, {}, {}, {}}) {}

CachingAllocator::~CachingAllocator() { EmptyCache(); }

void* CachingAllocator::Allocate(size_t bytes) {
  size_t bucket = AllocationBucket(bytes);
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->free_blocks.find(bucket);
    if (it != impl_->free_blocks.end()) {
      void* p = it->second;
      impl_->free_blocks.erase(it);
      impl_->stats.bytes_cached -= bucket;
      impl_->stats.bytes_in_use += bucket;
      if (impl_->stats.bytes_in_use > impl_->stats.peak_bytes_in_use)
        impl_->stats.peak_bytes_in_use = impl_->stats.bytes_in_use;
      ++impl_->stats.cache_hits;
      return p;
    }
  }
  void* p = impl_->raw_alloc(bucket);
  if (p == nullptr) {
    EmptyCache();
    p = impl_->raw_alloc(bucket);
  }
  if (p == nullptr)
    TESSERA_THROW(DeviceError, impl_->name, " allocator: out of memory allocating ", bucket,
                  " bytes (", Stats().bytes_in_use, " bytes in use)");
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats.bytes_in_use += bucket;
  if (impl_->stats.bytes_in_use > impl_->stats.peak_bytes_in_use)
    impl_->stats.peak_bytes_in_use = impl_->stats.bytes_in_use;
  ++impl_->stats.fresh_allocations;
  return p;
}

void CachingAllocator::Free(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  size_t bucket = AllocationBucket(bytes);
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->free_blocks.emplace(bucket, ptr);
  impl_->stats.bytes_in_use -= bucket;
  impl_->stats.bytes_cached += bucket;
}

void CachingAllocator::EmptyCache() {
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& kv : impl_->free_blocks) blocks.push_back(kv.second);
    impl_->free_blocks.clear();
    impl_->stats.bytes_cached = 0;
  }
  for (void* p : blocks) impl_->raw_free(p);
}

AllocatorStats CachingAllocator::Stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

void ZeroAndReleasePages(void* p, size_t bytes) {
  if (bytes == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), b = a + bytes;
  const uintptr_t lo = (a + page - 1) / page * page, hi = b / page * page;
  if (hi <= lo) {
    std::memset(p, 0, bytes);
    return;
  }
  std::memset(p, 0, lo - a);
  std::memset(reinterpret_cast<void*>(hi), 0, b - hi);
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) != 0) std::memset(reinterpret_cast<void*>(lo), 0, hi - lo);
}

namespace {
// Blocks from 4 MiB up are aligned to 2 MiB and marked for transparent huge pages: the flat
// parameter, gradient and optimizer buffers then fault in 2 MiB at a time instead of 4 KiB, which
// matters where pages are given back and touched again every step (ZeRO stage 3 releases the
// gathered parameters and gradients of each unit; see ZeroAndReleasePages). Where the kernel has
// THP off, madvise fails and the block works as an ordinary one.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeFrom = size_t{4} << 20;

void* CpuRawAlloc(size_t bytes) {
  if (bytes < kHugeFrom) return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (p != nullptr) madvise(p, rounded, MADV_HUGEPAGE);
  return p;
}
void CpuRawFree(void* p) { std::free(p); }

Allocator*& CudaAllocatorSlot(int index) {
  static Allocator* slots[64] = {};
  TESSERA_CHECK(index >= 0 && index < 64, "CUDA device index ", index);
  return slots[index];
}
}  // namespace

Allocator& GetAllocator(Device device) {
  if (device.is_cpu()) {
    // Leaked on purpose: tensors in static storage may be freed after main returns.
    static Allocator* cpu = new CachingAllocator(&CpuRawAlloc, &CpuRawFree, "cpu");
    return *cpu;
  }
  Allocator* a = CudaAllocatorSlot(device.index);
  if (a == nullptr) {
    // The CUDA backend installs its allocators when its kernel table is registered; make sure
    // that has happened (KernelsFor throws DeviceError with the reason when there is no GPU).
    KernelsFor(device);
    a = CudaAllocatorSlot(device.index);
  }
  if (a == nullptr) {
    std::string why;
    CudaAvailable(&why);
    TESSERA_THROW(DeviceError, "no allocator for ", device.str(), ": ", why);
  }
  return *a;
}

void SetAllocator(Device device, Allocator* allocator) {
  TESSERA_CHECK(device.is_cuda(), "only CUDA allocators can be replaced");
  CudaAllocatorSlot(device.index) = allocator;
}

}  // namespace tessera
