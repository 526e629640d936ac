// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator. Each 128-bit counter under a 64-bit key gives four independent 32-bit
// words, so element i of any random tensor is a pure function of (seed, i) -- results do not
// depend on the thread count, the device, or the order elements are visited.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"  // TESSERA_HD

namespace tessera {

struct Philox4x32 {
  uint32_t v[4];
};

TESSERA_HD inline Philox4x32 Philox(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    uint32_t n0 = hi1 ^ c1 ^ k0;
    uint32_t n1 = lo1;
    uint32_t n2 = hi0 ^ c3 ^ k1;
    uint32_t n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) with 24 random bits.
TESSERA_HD inline float UniformFromBits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// The index-th uniform of the stream (seed, stream): lane index % 4 of counter index / 4.
TESSERA_HD inline float PhiloxUniform(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4x32 r = Philox(index >> 2, stream, seed);
  return UniformFromBits(r.v[index & 3]);
}

// A host-side sequential generator over Philox, for initialisation and shuffling.
class PhiloxGenerator {
 public:
  PhiloxGenerator(uint64_t seed, uint64_t stream = 0) : seed_(seed), stream_(stream) {}
  uint32_t NextU32() {
    if (lane_ == 4) {
      block_ = Philox(counter_++, stream_, seed_);
      lane_ = 0;
    }
    return block_.v[lane_++];
  }
  uint64_t NextU64() {
    uint64_t hi = NextU32();
    return (hi << 32) | NextU32();
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(NextU64() >> 11) * (1.0 / 9007199254740992.0); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Standard normal by Box-Muller.
  double Normal() {
    double u1 = Uniform(), u2 = Uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Uniform integer in [0, n).
  uint64_t Below(uint64_t n) {
    // Rejection to avoid modulo bias.
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = NextU64(); while (x >= limit);
    return x % n;
  }
  uint64_t counter() const { return counter_; }
  int lane() const { return lane_; }
  // Restores a position read from counter() and lane() (for checkpoints).
  void SetPosition(uint64_t counter, int lane) {
    counter_ = counter;
    lane_ = lane;
    if (lane < 4 && counter > 0) block_ = Philox(counter - 1, stream_, seed_);
  }

 private:
  uint64_t seed_, stream_;
  uint64_t counter_ = 0;
  Philox4x32 block_{};
  int lane_ = 4;
};

}  // namespace tessera
