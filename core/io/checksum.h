// Checksums of file contents: CRC-32 (zlib's, per tensor, cheap enough to check on every load),
// CRC-32C (TensorBoard's record framing)
// and SHA-256 (OpenSSL's, per file in the model store, strong enough to name content).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tessera::io {

// zlib's CRC-32 of `n` bytes, continuing from `crc` (0 to start): what Python's zlib.crc32 gives
// (computed by libdeflate).
uint32_t Crc32(const void* data, size_t n, uint32_t crc = 0);
// The CRC-32 of A followed by B, from crc(A), crc(B) and B's length.
uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, int64_t length_b);
// CRC-32C (Castagnoli, the polynomial of iSCSI and SSE4.2's crc32 instruction) of `n` bytes,
// continuing from `crc` (0 to start): what TFRecord and TensorBoard event files frame records
// with. Table-driven; meant for records of a few hundred bytes, not bulk data.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);
// "0x1a2b3c4d".
std::string Hex32(uint32_t v);

// Incremental SHA-256. Not thread-safe; one per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n);
  // The digest as 64 lowercase hex digits, as sha256sum prints it. Call once.
  std::string FinalHex();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// SHA-256 of a whole regular file (IoError naming it when it cannot be read); `bytes` gets its
// length when not null. When `cancel` becomes true the read stops within 4 MiB and IoError says so.
std::string Sha256File(const std::string& path, int64_t* bytes = nullptr, const std::atomic<bool>* cancel = nullptr);
std::string Sha256Hex(const std::string& data);
// Whether `s` looks like a SHA-256 hex digest (64 lowercase hex digits).
bool IsSha256Hex(const std::string& s);

}  // namespace tessera::io
