#include "core/io/tensor_file.h"

#include <limits>
#include <stdexcept>
#include <set>

#include "core/error.h"
#include "core/io/checksum.h"
#include "core/io/hdf5.h"
#include "tessera/config.h"

namespace tessera::io {

#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

std::string JsonText(const json& j, int indent) { return j.dump(indent, ' ', false, json::error_handler_t::replace); }

std::string DTypeFileName(DType t) {
  switch (t) {
    case DType::kF64: return "float64";
    case DType::kI8: return "int8";
    default: return "float32";
  }
}

void WriteManifest(hid_t file, const std::vector<TensorRecord>& tensors, const json& attributes,
                   const std::string& where) {
  json list = json::array();
  for (const TensorRecord& t : tensors)
    list.push_back({{"path", t.path}, {"shape", t.shape}, {"dtype", DTypeFileName(t.dtype)}, {"bytes", t.bytes},
                    {"crc32", t.crc32}});
  json j = {{"format_version", kFormatVersion}, {"tensors", list}, {"attributes", attributes}};
  std::string text = JsonText(j, 1);
  WriteStringDataset(file, "manifest", text, where);
  Hdf5Handle d(H5C(H5Dopen2(file, "manifest", H5P_DEFAULT), where + ": /manifest"), H5Dclose);
  WriteU32Attr(d.get(), "crc32", Crc32(text.data(), text.size()), where + ": /manifest");
}

namespace {

// One manifest entry, every field checked. `i` and the path name it in messages.
TensorRecord ParseTensorEntry(const json& t, size_t i, const std::string& where) {
  std::string at = detail::StrCat(where, ": /manifest: tensor #", i);
  if (!t.is_object()) TESSERA_THROW(IoError, at, ": is not a JSON object");
  auto field = [&](const char* name) -> const json& {
    auto it = t.find(name);
    if (it == t.end()) TESSERA_THROW(IoError, at, ": has no '", name, "'");
    return *it;
  };
  TensorRecord r;
  const json& path = field("path");
  if (!path.is_string()) TESSERA_THROW(IoError, at, ": 'path' is not a string");
  r.path = path.get<std::string>();
  if (r.path.size() < 2 || r.path.size() > 4096 || r.path[0] != '/' || r.path.find('\0') != std::string::npos ||
      r.path.find("//") != std::string::npos || r.path.back() == '/')
    TESSERA_THROW(IoError, at, ": path '", r.path.substr(0, 200), "' is not an HDF5 dataset path like /model/0.weight");
  at += " (" + r.path + ")";
  const json& shape = field("shape");
  if (!shape.is_array() || shape.size() > static_cast<size_t>(kMaxTensorRank))
    TESSERA_THROW(IoError, at, ": 'shape' is not a list of at most ", kMaxTensorRank, " sizes");
  int64_t numel = 1;
  for (const json& d : shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      TESSERA_THROW(IoError, at, ": 'shape' holds ", JsonText(d), ", not a size >= 0");
    int64_t n = d.get<int64_t>();
    if (n > 0 && numel > std::numeric_limits<int64_t>::max() / 16 / n)
      TESSERA_THROW(IoError, at, ": shape ", JsonText(shape), " has more elements than any file could hold");
    numel *= n;
    r.shape.push_back(n);
  }
  const json& dtype = field("dtype");
  if (!dtype.is_string() || (dtype != "float32" && dtype != "float64" && dtype != "int8"))
    TESSERA_THROW(IoError, at, ": dtype ", JsonText(dtype), " is not \"float32\", \"float64\" or \"int8\"");
  r.dtype = dtype == "float64" ? DType::kF64 : dtype == "int8" ? DType::kI8 : DType::kF32;
  const json& bytes = field("bytes");
  if (!bytes.is_number_integer() || bytes.get<int64_t>() != numel * static_cast<int64_t>(SizeOf(r.dtype)))
    TESSERA_THROW(IoError, at, ": 'bytes' is ", JsonText(bytes), " but shape ", JsonText(shape), " of ", dtype.get<std::string>(),
                  " is ", numel * static_cast<int64_t>(SizeOf(r.dtype)), " bytes");
  r.bytes = numel * static_cast<int64_t>(SizeOf(r.dtype));
  const json& crc = field("crc32");
  if (!crc.is_number_integer() || crc.get<int64_t>() < 0 || crc.get<int64_t>() > 0xffffffffLL)
    TESSERA_THROW(IoError, at, ": crc32 ", JsonText(crc), " is not a 32-bit unsigned value");
  r.crc32 = static_cast<uint32_t>(crc.get<int64_t>());
  r.has_crc = true;
  return r;
}

}  // namespace

Manifest ReadManifest(hid_t file, int format_version, const std::string& where) {
  if (!PathExists(file, "/manifest", where))
    TESSERA_THROW(IoError, where, ": /manifest is missing (not a complete tessera file)");
  std::string text = ReadStringDataset(file, "manifest", where, AllowsVlenStrings(format_version));
  Manifest man;
  man.computed_crc = Crc32(text.data(), text.size());
  Hdf5Handle d(H5C(H5Dopen2(file, "manifest", H5P_DEFAULT), where + ": /manifest"), H5Dclose);
  man.has_crc = HasAttr(d.get(), "crc32", where + ": /manifest");
  if (man.has_crc) man.stored_crc = static_cast<uint32_t>(ReadIntAttr(d.get(), "crc32", where + ": /manifest", 0, 0xffffffffLL));
  json j;
  try {
    // Nesting is refused while parsing: copying or printing a deeply nested value recurses.
    j = json::parse(text, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxJsonDepth) throw std::invalid_argument("nested deeper than " + std::to_string(kMaxJsonDepth));
      return true;
    });
  } catch (const std::exception& e) {
    TESSERA_THROW(IoError, where, ": /manifest is not valid JSON: ", e.what());
  }
  if (!j.is_object()) TESSERA_THROW(IoError, where, ": /manifest is not a JSON object");
  if (j.contains("attributes")) {
    if (!j["attributes"].is_object()) TESSERA_THROW(IoError, where, ": /manifest: 'attributes' is not an object");
    man.attributes = j["attributes"];
  }
  auto tensors = j.find("tensors");
  if (tensors == j.end() || !tensors->is_array())
    TESSERA_THROW(IoError, where, ": /manifest has no 'tensors' list");
  if (static_cast<int64_t>(tensors->size()) > kMaxObjects)
    TESSERA_THROW(IoError, where, ": /manifest lists ", tensors->size(), " tensors (at most ", kMaxObjects, ")");
  std::set<std::string> seen;
  const int64_t file_size = FileSize(file, where);
  int64_t total = 0;  // every tensor's bytes are in the file: together, they fit in it
  for (size_t i = 0; i < tensors->size(); ++i) {
    TensorRecord r = ParseTensorEntry((*tensors)[i], i, where);
    if (!seen.insert(r.path).second) TESSERA_THROW(IoError, where, ": /manifest lists ", r.path, " twice");
    total += r.bytes;
    if (total > file_size)
      TESSERA_THROW(IoError, where, ": /manifest lists ", total, " bytes of tensors (up to ", r.path, ") in a file of ",
                    file_size, " bytes");
    man.tensors.push_back(std::move(r));
  }
  return man;
}

std::vector<std::string> CheckManifestIntegrity(const Manifest& m, const json& now, const std::string& where) {
  std::vector<std::string> problems;
  if (!m.has_crc)
    problems.push_back(where + ": /manifest: the crc32 attribute is missing");
  else if (m.stored_crc != m.computed_crc)
    problems.push_back(detail::StrCat(where, ": /manifest: CRC-32 mismatch (stored ", Hex32(m.stored_crc), ", computed ",
                                      Hex32(m.computed_crc), "): the manifest is corrupt"));
  if (m.attributes.is_null()) {
    problems.push_back(where + ": /manifest: holds no copy of the root attributes");
    return problems;
  }
  // The manifest's copy went through JSON text, which holds UTF-8 only: compare likewise.
  const json as_written = json::parse(JsonText(now));
  for (auto it = as_written.begin(); it != as_written.end(); ++it)
    if (!m.attributes.contains(it.key()) || m.attributes[it.key()] != it.value())
      problems.push_back(where + ": root attribute '" + it.key() + "' is " + JsonText(it.value()) +
                         " but the manifest recorded " +
                         (m.attributes.contains(it.key()) ? JsonText(m.attributes[it.key()]) : "nothing"));
  return problems;
}

json CommonRootAttributes(const std::string& format, int format_version, const std::string& tessera_version,
                          const std::string& created, int64_t step, const std::string& job_spec,
                          const std::string& dtype) {
  json j = {{"format_version", format_version}, {"tessera_version", tessera_version}, {"created", created},
            {"step", step}, {"job_spec", job_spec}, {"dtype", dtype}};
  if (format_version >= 2) j["format"] = format;  // format 1 files did not copy it
  return j;
}

void WriteRootAttributes(hid_t file, const json& attrs, const std::string& where) {
  for (auto it = attrs.begin(); it != attrs.end(); ++it) {
    const json& v = it.value();
    const char* name = it.key().c_str();
    if (v.is_string()) WriteStringAttr(file, name, v.get<std::string>(), where);
    else if (v.is_number_float()) WriteRealAttr(file, name, v.get<double>(), where);
    else if (v.is_number_unsigned()) WriteIntAttr(file, name, static_cast<int64_t>(v.get<uint64_t>()), where);
    else if (v.is_number_integer()) WriteIntAttr(file, name, v.get<int64_t>(), where);
    else TESSERA_THROW(ValueError, where, ": root attribute '", it.key(), "' has no HDF5 type: ", JsonText(v));
  }
}

int ReadFormatVersion(hid_t file, const std::string& where) {
  if (!HasAttr(file, "format_version", where) && !HasAttr(file, "format", where))
    TESSERA_THROW(IoError, where, ": not a tessera file (the root has no 'format' attribute)");
  int64_t v = ReadIntAttr(file, "format_version", where);
  if (v > kFormatVersion) {
    // A newer format, or a damaged attribute? A sound manifest this build can read that records
    // another version says the latter (and the reader falls back, rather than stopping).
    std::string recorded;
    try {
      Manifest m = ReadManifest(file, kFormatVersion, where);
      if (m.has_crc && m.stored_crc == m.computed_crc && m.attributes.contains("format_version") &&
          m.attributes["format_version"] != v)
        recorded = JsonText(m.attributes["format_version"]);
    } catch (const Error&) {  // unreadable here: then it may well be a newer format
    }
    if (!recorded.empty())
      TESSERA_THROW(IoError, where, ": format_version is ", v, " but the manifest recorded ", recorded,
                    ": the attribute is damaged");
    auto safely = [&](const char* name) {  // fixed-length only: nothing of this file is trusted yet
      try {
        return ReadStringAttr(file, name, where);
      } catch (const Error&) {
        return std::string("?");
      }
    };
    TESSERA_THROW(FormatError, where, ": written in ", safely("format"), " format version ", v, " (by tessera ",
                  safely("tessera_version"), "); this tessera (", TESSERA_VERSION, ") reads versions up to ",
                  kFormatVersion, ": use a newer tessera");
  }
  if (v < 1) TESSERA_THROW(IoError, where, ": invalid format_version ", v);
  return static_cast<int>(v);
}

std::string ReadFormat(hid_t file, int format_version, const std::string& where) {
  if (!HasAttr(file, "format", where))
    TESSERA_THROW(IoError, where, ": not a tessera file (the root has no 'format' attribute)");
  return ReadStringAttr(file, "format", where, AllowsVlenStrings(format_version));
}

TensorReadResult ReadTensorData(hid_t file, const TensorRecord& t, int64_t file_size,
                                const std::function<void*()>& dest, const std::string& where) {
  const std::string at = where + ": " + t.path;
  if (!PathExists(file, t.path, at)) TESSERA_THROW(IoError, at, ": listed in the manifest but missing from the file");
  Hdf5Handle d(H5C(H5Dopen2(file, t.path.c_str(), H5P_DEFAULT), at), H5Dclose);
  std::vector<int64_t> shape = DatasetShape(d.get(), at);
  DType dtype = DatasetTensorType(d.get(), at);
  auto str = [](const std::vector<int64_t>& s) { return JsonText(json(s)); };
  if (shape != t.shape)
    TESSERA_THROW(IoError, at, ": the dataset has shape ", str(shape), " but the manifest says ", str(t.shape));
  if (dtype != t.dtype)
    TESSERA_THROW(IoError, at, ": the dataset is ", DTypeFileName(dtype), " but the manifest says ", DTypeFileName(t.dtype));
  TensorReadResult r;
  r.file_offset = CheckContiguousStorage(d.get(), t.bytes, file_size, at);
  void* buf = dest && t.bytes > 0 ? dest() : nullptr;
  if (buf != nullptr) H5C(H5Dread(d.get(), MemTensorType(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), at);
  r.has_attr = HasAttr(d.get(), "crc32", at);
  if (r.has_attr) r.attr = static_cast<uint32_t>(ReadIntAttr(d.get(), "crc32", at, 0, 0xffffffffLL));
  return r;
}

void CheckTensorCrc(const TensorRecord& t, const void* data, const TensorReadResult& r, const std::string& where) {
  const std::string at = where + ": " + t.path;
  uint32_t crc = Crc32(data, static_cast<size_t>(t.bytes));
  if (t.has_crc && crc != t.crc32)
    TESSERA_THROW(IoError, at, ": CRC-32 mismatch (stored ", Hex32(t.crc32), ", computed ", Hex32(crc),
                  "): the data is corrupt");
  if (r.has_attr && r.attr != crc)
    TESSERA_THROW(IoError, at, ": CRC-32 mismatch (attribute ", Hex32(r.attr), ", computed ", Hex32(crc),
                  "): the data is corrupt");
  if (!r.has_attr) TESSERA_THROW(IoError, at, ": the crc32 attribute is missing");
}

}  // namespace tessera::io
