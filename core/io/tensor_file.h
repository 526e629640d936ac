// The layout every tessera HDF5 file shares (checkpoints and model-only weights files alike):
//
//   /model/<param>, ...   one dataset per tensor, at its logical shape, float32 or float64 (int8 for quantised weights),
//                         contiguous and uncompressed, with a `crc32` attribute: zlib's CRC-32 of
//                         its bytes in row-major order
//   /manifest             JSON text: {"format_version", "tensors": [{path, shape, dtype, bytes,
//                         crc32}], "attributes": {a copy of the root attributes}}, with a `crc32`
//                         attribute of its own text
//   root attributes       `format` ("tessera.checkpoint" or "tessera.model"), format_version,
//                         tessera_version, created, step, job_spec, dtype, and per kind more
//
// Reading treats the file as hostile (core/io/hdf5.h): the manifest is parsed with every field's
// type, range and consistency checked, and each dataset is checked against the manifest and its
// storage in the file before a byte is read into memory. All functions that take an hid_t must be
// called with the HDF5 lock held; the others need no lock.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace tessera::io {

using json = nlohmann::json;

// The newest format version this build writes and reads (checkpoints and weights files).
//   1  strings variable-length, HDF5's original file format (legacy: read, never written)
//   2  strings fixed-length, HDF5's 1.10 file format with checksummed metadata
constexpr int kFormatVersion = 2;
// Whether files of `format_version` may hold variable-length strings (only legacy ones do).
inline bool AllowsVlenStrings(int format_version) { return format_version < 2; }
constexpr const char* kCheckpointFormat = "tessera.checkpoint";
constexpr const char* kModelFormat = "tessera.model";

// A tensor as a tessera file records it.
struct TensorRecord {
  std::string path;  // "/model/0.weight", "/optim/0.weight/exp_avg"
  std::vector<int64_t> shape;
  DType dtype = DType::kF32;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
  bool has_crc = false;
  int64_t file_offset = -1;  // byte offset of the data in the file (contiguous layout), -1 if none
};

// `j` as JSON text for messages and files, with bytes that are not UTF-8 (a damaged string
// attribute) shown as U+FFFD instead of throwing.
std::string JsonText(const json& j, int indent = -1);

// "float32" / "float64" / "int8", the names the manifest uses (numpy's).
std::string DTypeFileName(DType t);

// /manifest as read.
struct Manifest {
  std::vector<TensorRecord> tensors;
  json attributes;  // null when absent
  bool has_crc = false;
  uint32_t stored_crc = 0, computed_crc = 0;
};

// Writes /manifest: the tensor list and `attributes` (the root attributes' copy), with its CRC.
void WriteManifest(hid_t file, const std::vector<TensorRecord>& tensors, const json& attributes,
                   const std::string& where);
// Reads and checks /manifest. IoError when it is missing, not valid JSON, or any entry is
// malformed: a path that is not absolute or repeats, a shape of negative or too many dimensions,
// an unknown dtype, a byte count that does not match shape and dtype, a CRC out of range.
// `format_version`: of the file (ReadFormatVersion), which says how its strings are stored.
Manifest ReadManifest(hid_t file, int format_version, const std::string& where);
// The manifest's own CRC, and `now` (the root attributes as read) against the manifest's copy:
// one line per problem, "" problems when they agree.
std::vector<std::string> CheckManifestIntegrity(const Manifest& m, const json& now, const std::string& where);

// The root attributes every tessera file has, as JSON (the attributes and the manifest's copy come
// from it): format (since format 2, so the manifest's CRC covers it), format_version,
// tessera_version, created, step, job_spec, dtype.
json CommonRootAttributes(const std::string& format, int format_version, const std::string& tessera_version,
                          const std::string& created, int64_t step, const std::string& job_spec,
                          const std::string& dtype);

// Writes each member of `attrs` as a root attribute: strings as UTF-8 strings, integers as int64,
// reals as float64 (the attributes and the manifest's copy come from one JSON object).
void WriteRootAttributes(hid_t file, const json& attrs, const std::string& where);
// The root `format_version`, read first (an integer: safe to read before anything else is known).
// FormatError for one newer than kFormatVersion (naming the format and the writing tessera when
// they can be read safely), IoError for one below 1 or a missing attribute.
int ReadFormatVersion(hid_t file, const std::string& where);
// The root `format` attribute: "tessera.checkpoint", "tessera.model". IoError when missing.
std::string ReadFormat(hid_t file, int format_version, const std::string& where);

// The dataset's crc32 attribute, when it has one.
struct TensorReadResult {
  bool has_attr = false;
  uint32_t attr = 0;
  int64_t file_offset = -1;
};
// Reads tensor `t` (as the manifest lists it) after checking that the dataset exists, is a hard
// link, has the manifest's shape and dtype, and has all its bytes stored contiguously inside the
// file of `file_size` bytes. Only then is `dest` called for the buffer of t.bytes bytes to read
// into (so nothing is allocated from a size the file merely declares); it may return null, or be
// empty, to check without reading. The CRC is not checked here (CheckTensorCrc needs no lock).
TensorReadResult ReadTensorData(hid_t file, const TensorRecord& t, int64_t file_size,
                                const std::function<void*()>& dest, const std::string& where);
// IoError naming the tensor when the CRC of `data` (t.bytes bytes) differs from the manifest's or
// the dataset attribute's, or the attribute is missing.
void CheckTensorCrc(const TensorRecord& t, const void* data, const TensorReadResult& r, const std::string& where);

}  // namespace tessera::io
