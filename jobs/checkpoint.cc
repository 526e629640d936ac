#include "jobs/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "datasets/hdf5_util.h"
#include "tessera/config.h"

namespace tessera::jobs {
namespace {

namespace fs = std::filesystem;
using datasets::Hdf5Handle;
using datasets::Hdf5Lock;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint data is written as raw little-endian bytes at the datasets' offsets");

constexpr const char* kCheckpointFormat = "tessera.checkpoint";
constexpr const char* kModelFormat = "tessera.model";
constexpr const char* kFileName = "checkpoint.h5";

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string StepName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// Committed checkpoint directories are named step-<digits>; returns the step or -1.
int64_t ParseStepName(const std::string& name) {
  static const std::regex re("step-([0-9]{1,18})");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return -1;
  return std::stoll(m[1].str());
}

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint32_t Crc(uint32_t crc, const void* data, size_t n) {
  return static_cast<uint32_t>(crc32_z(crc, static_cast<const Bytef*>(data), n));
}

std::string UtcNow() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---- POSIX helpers -------------------------------------------------------------------------

void FsyncPath(const std::string& path, bool directory) {
  int fd = open(path.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0));
  if (fd < 0) TESSERA_THROW(IoError, path, ": cannot open to sync: ", std::strerror(errno));
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) TESSERA_THROW(IoError, path, ": fsync failed: ", std::strerror(err));
}

void PwriteAll(int fd, const char* data, size_t n, off_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t w = pwrite(fd, data, std::min<size_t>(n, size_t{1} << 30), offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      TESSERA_THROW(IoError, path, ": write of ", n, " bytes at offset ", offset, " failed: ", std::strerror(errno));
    }
    data += w;
    n -= static_cast<size_t>(w);
    offset += w;
  }
}

void RemoveAll(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// The entries of a directory (none if it cannot be read); never throws.
std::vector<fs::path> ListDir(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) out.push_back(it->path());
  return out;
}

bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// Creates `dir` (and parents) if missing; when it creates it, makes the new entry durable.
void CreateDurableDirectory(const fs::path& dir) {
  if (Exists(dir)) return;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) TESSERA_THROW(IoError, dir.string(), ": cannot create the checkpoint directory: ", ec.message());
  fs::path parent = fs::absolute(dir, ec).parent_path();
  if (!ec) FsyncPath(parent.string(), true);
}

// ---- HDF5 helpers (call with the HDF5 lock held) --------------------------------------------

// Checkpoints hold f32 and f64 tensors. (No HDF5 call: usable without the lock.)
void RequireStorableDType(DType t, const std::string& what) {
  if (t != DType::kF32 && t != DType::kF64)
    TESSERA_THROW(ValueError, what, ": checkpoints hold f32 and f64 tensors, not ", DTypeName(t));
}

hid_t FileType(DType t, const std::string& what) {
  switch (t) {
    case DType::kF32: return H5T_IEEE_F32LE;
    case DType::kF64: return H5T_IEEE_F64LE;
    default: TESSERA_THROW(ValueError, what, ": checkpoints hold f32 and f64 tensors, not ", DTypeName(t));
  }
}

hid_t MemType(DType t) { return t == DType::kF64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT; }

#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

// File access for checkpoint files. HDF5's own file locking is off: tessera never has two
// processes open a file it is writing (the hidden temporary name and the rename see to that), and
// flock() fails on file systems mounted without it (Lustre without -o flock, NFS without lockd).
Hdf5Handle FileAccess(const std::string& where) {
  Hdf5Handle fapl(H5C(H5Pcreate(H5P_FILE_ACCESS), where), H5Pclose);
#if H5_VERSION_GE(1, 10, 7)
  H5C(H5Pset_file_locking(fapl.get(), false, true), where);
#endif
  return fapl;
}

Hdf5Handle Space(const Shape& shape, const std::string& where) {
  if (shape.empty()) return Hdf5Handle(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Hdf5Handle(H5C(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), where), H5Sclose);
}

void WriteAttr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value, const std::string& where) {
  Hdf5Handle space(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  Hdf5Handle attr(H5C(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), where + " @" + name),
                  H5Aclose);
  H5C(H5Awrite(attr.get(), mem_type, value), where + " @" + name);
}
void WriteAttr(hid_t obj, const char* name, int64_t v, const std::string& where) {
  WriteAttr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, where);
}
void WriteAttrU32(hid_t obj, const char* name, uint32_t v, const std::string& where) {
  WriteAttr(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &v, where);
}
void WriteAttrF64(hid_t obj, const char* name, double v, const std::string& where) {
  WriteAttr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, where);
}
Hdf5Handle VlenString(const std::string& where) {
  Hdf5Handle t(H5C(H5Tcopy(H5T_C_S1), where), H5Tclose);
  H5C(H5Tset_size(t.get(), H5T_VARIABLE), where);
  H5C(H5Tset_cset(t.get(), H5T_CSET_UTF8), where);
  return t;
}
void WriteAttr(hid_t obj, const char* name, const std::string& v, const std::string& where) {
  Hdf5Handle t = VlenString(where);
  const char* p = v.c_str();
  WriteAttr(obj, name, t.get(), t.get(), &p, where);
}

bool HasAttr(hid_t obj, const char* name, const std::string& where) { return H5C(H5Aexists(obj, name), where) > 0; }

template <typename T>
T ReadNumberAttr(hid_t obj, const char* name, hid_t mem_type, const std::string& where) {
  if (!HasAttr(obj, name, where))
    TESSERA_THROW(CheckpointFormatError, where, ": attribute '", name, "' is missing");
  Hdf5Handle attr(H5C(H5Aopen(obj, name, H5P_DEFAULT), where + " @" + name), H5Aclose);
  T v{};
  H5C(H5Aread(attr.get(), mem_type, &v), where + " @" + name);
  return v;
}
int64_t ReadI64(hid_t obj, const char* name, const std::string& where) {
  return ReadNumberAttr<int64_t>(obj, name, H5T_NATIVE_INT64, where);
}

std::string ReadStringAttr(hid_t obj, const char* name, const std::string& where) {
  if (!HasAttr(obj, name, where))
    TESSERA_THROW(CheckpointFormatError, where, ": attribute '", name, "' is missing");
  Hdf5Handle attr(H5C(H5Aopen(obj, name, H5P_DEFAULT), where + " @" + name), H5Aclose);
  Hdf5Handle type(H5C(H5Aget_type(attr.get()), where), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING)
    TESSERA_THROW(CheckpointFormatError, where, ": attribute '", name, "' is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    Hdf5Handle mem = VlenString(where);
    char* p = nullptr;
    H5C(H5Aread(attr.get(), mem.get(), &p), where + " @" + name);
    std::string s = p ? p : "";
    Hdf5Handle space(H5C(H5Aget_space(attr.get()), where), H5Sclose);
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, &p);
    return s;
  }
  size_t n = H5Tget_size(type.get());
  std::string s(n, '\0');
  H5C(H5Aread(attr.get(), type.get(), s.data()), where + " @" + name);
  return s.substr(0, s.find('\0'));
}

Shape DatasetShape(hid_t dset, const std::string& where) {
  Hdf5Handle space(H5C(H5Dget_space(dset), where), H5Sclose);
  int nd = H5C(H5Sget_simple_extent_ndims(space.get()), where);
  std::vector<hsize_t> dims(nd);
  H5C(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where);
  return Shape(dims.begin(), dims.end());
}

// f32 or f64 from a dataset's type; throws naming the dataset otherwise.
DType DatasetDType(hid_t dset, const std::string& where) {
  Hdf5Handle type(H5C(H5Dget_type(dset), where), H5Tclose);
  if (H5Tget_class(type.get()) == H5T_FLOAT) {
    if (H5Tget_size(type.get()) == 4) return DType::kF32;
    if (H5Tget_size(type.get()) == 8) return DType::kF64;
  }
  TESSERA_THROW(CheckpointFormatError, where, ": not a float32 or float64 dataset");
}

// The names of every object below the root ("model/0.weight", ...), datasets only.
herr_t CollectLink(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}
std::vector<std::string> DatasetPaths(hid_t file, const std::string& where) {
  std::vector<std::string> names, out;
  H5C(H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, CollectLink, &names), where);
  for (const std::string& n : names) {
    Hdf5Handle obj(H5C(H5Oopen(file, n.c_str(), H5P_DEFAULT), where + ": " + n), H5Oclose);
    if (H5Iget_type(obj.get()) == H5I_DATASET) out.push_back("/" + n);
  }
  return out;
}

std::string DTypeShort(DType t) { return t == DType::kF64 ? "float64" : "float32"; }
DType ParseDType(const std::string& s, const std::string& where) {
  if (s == "float32") return DType::kF32;
  if (s == "float64") return DType::kF64;
  TESSERA_THROW(CheckpointFormatError, where, ": unknown dtype '", s, "' in the manifest");
}

// The root attributes that carry meaning, as JSON: stored again in the manifest, so that the
// manifest's CRC covers them, and printed by `tessera ckpt inspect --json`.
json MetaJson(const CheckpointMeta& m, const std::string& kind) {
  json j = {{"format_version", m.format_version}, {"tessera_version", m.tessera_version}, {"created", m.created},
            {"step", m.step}, {"job_spec", m.job_spec}, {"dtype", m.dtype}};
  if (kind == "checkpoint") {
    j["epoch"] = m.epoch;
    j["step_in_epoch"] = m.step_in_epoch;
    j["steps_per_epoch"] = m.steps_per_epoch;
    j["global_batch"] = m.global_batch;
    j["samples_seen"] = m.samples_seen;
    j["seed"] = m.seed;
    j["world_size"] = m.world_size;
    j["data_parallel"] = m.data_parallel;
    j["zero_stage"] = m.zero_stage;
    j["tensor_parallel"] = m.tensor_parallel;
    j["pipeline_parallel"] = m.pipeline_parallel;
    j["optimizer"] = m.optimizer;
    j["optimizer_step"] = m.optimizer_step;
    j["lr_schedule"] = m.lr_schedule;
    j["lr"] = m.lr;
  }
  return j;
}

// Writes each member of MetaJson() as a root attribute (strings as UTF-8 strings, integers as
// int64, reals as float64): the attributes and the manifest's copy come from one place.
void WriteRootAttributes(hid_t file, const json& attrs, const std::string& where) {
  for (auto it = attrs.begin(); it != attrs.end(); ++it) {
    const json& v = it.value();
    if (v.is_string()) WriteAttr(file, it.key().c_str(), v.get<std::string>(), where);
    else if (v.is_number_float()) WriteAttrF64(file, it.key().c_str(), v.get<double>(), where);
    else if (v.is_number_unsigned()) WriteAttr(file, it.key().c_str(), static_cast<int64_t>(v.get<uint64_t>()), where);
    else if (v.is_number_integer()) WriteAttr(file, it.key().c_str(), v.get<int64_t>(), where);
    else TESSERA_THROW(ValueError, where, ": root attribute '", it.key(), "' has no HDF5 type: ", v.dump());
  }
}

json ManifestJson(const std::vector<CheckpointTensor>& tensors) {
  json list = json::array();
  for (const CheckpointTensor& t : tensors)
    list.push_back({{"path", t.path}, {"shape", t.shape}, {"dtype", DTypeShort(t.dtype)}, {"bytes", t.bytes},
                    {"crc32", t.crc32}});
  return {{"format_version", kCheckpointFormatVersion}, {"tensors", list}};
}

// /manifest: the tensor list and the root attributes, with a crc32 attribute of its own text.
void WriteManifest(hid_t file, const std::vector<CheckpointTensor>& tensors, const json& attributes,
                   const std::string& where) {
  json j = ManifestJson(tensors);
  j["attributes"] = attributes;
  std::string text = j.dump(1);
  Hdf5Handle type = VlenString(where);
  Hdf5Handle space(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  Hdf5Handle d(H5C(H5Dcreate2(file, "manifest", type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   where + ": /manifest"),
               H5Dclose);
  const char* p = text.c_str();
  H5C(H5Dwrite(d.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p), where + ": /manifest");
  WriteAttrU32(d.get(), "crc32", Crc(0, text.data(), text.size()), where + ": /manifest");
}

struct Manifest {
  std::vector<CheckpointTensor> tensors;
  json attributes;  // null when absent
  bool has_crc = false;
  uint32_t stored_crc = 0, computed_crc = 0;
};

Manifest ReadManifest(hid_t file, const std::string& where) {
  if (H5C(H5Lexists(file, "manifest", H5P_DEFAULT), where) <= 0)
    TESSERA_THROW(CheckpointFormatError, where, ": /manifest is missing (not a complete tessera checkpoint)");
  Hdf5Handle d(H5C(H5Dopen2(file, "manifest", H5P_DEFAULT), where + ": /manifest"), H5Dclose);
  Hdf5Handle type = VlenString(where);
  Hdf5Handle space(H5C(H5Dget_space(d.get()), where), H5Sclose);
  char* p = nullptr;
  H5C(H5Dread(d.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &p), where + ": /manifest");
  std::string text = p ? p : "";
  H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, &p);
  Manifest man;
  man.computed_crc = Crc(0, text.data(), text.size());
  man.has_crc = HasAttr(d.get(), "crc32", where);
  if (man.has_crc) man.stored_crc = ReadNumberAttr<uint32_t>(d.get(), "crc32", H5T_NATIVE_UINT32, where + ": /manifest");
  std::vector<CheckpointTensor>& out = man.tensors;
  try {
    json j = json::parse(text);
    if (j.contains("attributes")) man.attributes = j["attributes"];
    for (const json& t : j.at("tensors")) {
      CheckpointTensor c;
      c.path = t.at("path").get<std::string>();
      c.shape = t.at("shape").get<Shape>();
      c.dtype = ParseDType(t.at("dtype").get<std::string>(), where);
      c.bytes = t.at("bytes").get<int64_t>();
      c.crc32 = t.at("crc32").get<uint32_t>();
      c.has_crc = true;
      out.push_back(c);
    }
  } catch (const json::exception& e) {
    TESSERA_THROW(CheckpointFormatError, where, ": /manifest is not valid: ", e.what());
  }
  return man;
}

// Opens `path` read-only with the lock held, turning each way it can fail into a clear message.
Hdf5Handle OpenForRead(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) TESSERA_THROW(IoError, path, ": no such checkpoint file");
  if (fs::is_directory(path, ec)) TESSERA_THROW(IoError, path, ": is a directory, not a checkpoint file");
  htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0)
    TESSERA_THROW(CheckpointFormatError, path, ": not an HDF5 file (no HDF5 signature; empty or overwritten?)");
  Hdf5Handle fapl = FileAccess(path);
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (is_hdf5 < 0 || f < 0) {
    std::string why = datasets::Hdf5ErrorMessage();
    TESSERA_THROW(IoError, path, ": cannot be opened as HDF5 (truncated or damaged?): ", why);
  }
  return Hdf5Handle(f, H5Fclose);
}

CheckpointInfo ReadInfoLocked(hid_t file, const std::string& path) {
  CheckpointInfo info;
  info.path = path;
  if (!HasAttr(file, "format", path))
    TESSERA_THROW(CheckpointFormatError, path, ": not a tessera checkpoint (the root has no 'format' attribute)");
  std::string format = ReadStringAttr(file, "format", path);
  if (format == kCheckpointFormat) info.kind = "checkpoint";
  else if (format == kModelFormat) info.kind = "model";
  else TESSERA_THROW(CheckpointFormatError, path, ": not a tessera checkpoint (format is '", format, "')");
  CheckpointMeta& m = info.meta;
  m.format_version = static_cast<int>(ReadI64(file, "format_version", path));
  m.tessera_version = HasAttr(file, "tessera_version", path) ? ReadStringAttr(file, "tessera_version", path) : "?";
  if (m.format_version > kCheckpointFormatVersion)
    TESSERA_THROW(CheckpointFormatError, path, ": written in ", format, " format version ", m.format_version,
                  " (by tessera ", m.tessera_version, "); this tessera (", TESSERA_VERSION, ") reads versions up to ",
                  kCheckpointFormatVersion, ": use a newer tessera");
  if (m.format_version < 1) TESSERA_THROW(CheckpointFormatError, path, ": invalid format_version ", m.format_version);
  m.created = ReadStringAttr(file, "created", path);
  m.step = ReadI64(file, "step", path);
  m.job_spec = ReadStringAttr(file, "job_spec", path);
  m.dtype = ReadStringAttr(file, "dtype", path);
  if (info.kind == "checkpoint") {
    m.epoch = ReadI64(file, "epoch", path);
    m.step_in_epoch = ReadI64(file, "step_in_epoch", path);
    m.steps_per_epoch = ReadI64(file, "steps_per_epoch", path);
    m.global_batch = ReadI64(file, "global_batch", path);
    m.samples_seen = ReadI64(file, "samples_seen", path);
    m.seed = static_cast<uint64_t>(ReadI64(file, "seed", path));
    m.world_size = static_cast<int>(ReadI64(file, "world_size", path));
    m.data_parallel = static_cast<int>(ReadI64(file, "data_parallel", path));
    m.zero_stage = static_cast<int>(ReadI64(file, "zero_stage", path));
    m.tensor_parallel = static_cast<int>(ReadI64(file, "tensor_parallel", path));
    m.pipeline_parallel = static_cast<int>(ReadI64(file, "pipeline_parallel", path));
    m.optimizer = ReadStringAttr(file, "optimizer", path);
    m.optimizer_step = ReadI64(file, "optimizer_step", path);
    m.lr_schedule = ReadStringAttr(file, "lr_schedule", path);
    m.lr = ReadNumberAttr<double>(file, "lr", H5T_NATIVE_DOUBLE, path);
  }
  info.tensors = ReadManifest(file, path).tensors;
  if (info.kind == "checkpoint" && H5C(H5Lexists(file, "rng", H5P_DEFAULT), path) > 0 &&
      H5C(H5Lexists(file, "rng/rank_state", H5P_DEFAULT), path) > 0) {
    Hdf5Handle d(H5C(H5Dopen2(file, "rng/rank_state", H5P_DEFAULT), path + ": /rng/rank_state"), H5Dclose);
    Shape shape = DatasetShape(d.get(), path + ": /rng/rank_state");
    if (shape.size() == 2 && shape[1] == 2 && shape[0] <= std::max(m.world_size, 1)) {
      std::vector<uint64_t> rs(static_cast<size_t>(shape[0] * 2));
      if (!rs.empty())
        H5C(H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs.data()), path + ": /rng/rank_state");
      for (int64_t r = 0; r < shape[0]; ++r) m.rank_next_example.push_back(static_cast<int64_t>(rs[2 * r + 1]));
    }
  }
  return info;
}

// Reads dataset `t.path` whole in its stored dtype and checks it against the manifest (shape,
// dtype, CRC). Reads straight into `into` when it is given and has the tensor's element count and
// dtype (a 1-D view of the destination); into a new tensor otherwise. The lock must be held.
struct TensorRead {
  Tensor data;
  bool has_attr = false;
  uint32_t attr = 0;
};

// Compares the CRC of the data read with the manifest's and the dataset attribute's. Needs no lock.
void CheckCrc(const CheckpointTensor& t, const TensorRead& r, const std::string& path) {
  std::string where = path + ": " + t.path;
  uint32_t crc = Crc(0, r.data.raw_data(), r.data.nbytes());
  if (t.has_crc && crc != t.crc32)
    TESSERA_THROW(IoError, where, ": CRC-32 mismatch (stored ", Hex(t.crc32), ", computed ", Hex(crc),
                  "): the data is corrupt");
  if (r.has_attr && r.attr != crc)
    TESSERA_THROW(IoError, where, ": CRC-32 mismatch (attribute ", Hex(r.attr), ", computed ", Hex(crc),
                  "): the data is corrupt");
  if (!r.has_attr && t.has_crc) TESSERA_THROW(IoError, where, ": the crc32 attribute is missing");
}

TensorRead ReadTensorUncheckedLocked(hid_t file, const CheckpointTensor& t, const std::string& path,
                                     const Tensor* into) {
  std::string where = path + ": " + t.path;
  // H5Lexists needs every group on the way to exist: check them one by one.
  for (size_t slash = t.path.find('/', 1);; slash = t.path.find('/', slash + 1)) {
    std::string prefix = t.path.substr(0, slash);
    if (H5C(H5Lexists(file, prefix.c_str(), H5P_DEFAULT), where) <= 0)
      TESSERA_THROW(IoError, where, ": listed in the manifest but missing from the file");
    if (slash == std::string::npos) break;
  }
  Hdf5Handle d(H5C(H5Dopen2(file, t.path.c_str(), H5P_DEFAULT), where), H5Dclose);
  Shape shape = DatasetShape(d.get(), where);
  DType dtype = DatasetDType(d.get(), where);
  if (shape != t.shape)
    TESSERA_THROW(IoError, where, ": the dataset has shape ", ShapeString(shape), " but the manifest says ",
                  ShapeString(t.shape));
  if (dtype != t.dtype)
    TESSERA_THROW(IoError, where, ": the dataset is ", DTypeShort(dtype), " but the manifest says ", DTypeShort(t.dtype));
  Tensor out = into && into->defined() && into->numel() == NumElements(shape) && into->dtype() == dtype
                   ? *into
                   : Tensor::Empty({NumElements(shape)}, dtype);
  if (out.numel() > 0) H5C(H5Dread(d.get(), MemType(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.raw_data()), where);
  TensorRead r;
  r.data = out;
  r.has_attr = HasAttr(d.get(), "crc32", where);
  if (r.has_attr) r.attr = ReadNumberAttr<uint32_t>(d.get(), "crc32", H5T_NATIVE_UINT32, where);
  return r;
}

// Reads a whole tensor and checks its CRCs. The lock must be held.
Tensor ReadTensorLocked(hid_t file, const CheckpointTensor& t, const std::string& path, const Tensor* into = nullptr) {
  TensorRead r = ReadTensorUncheckedLocked(file, t, path, into);
  CheckCrc(t, r, path);
  return r.data;
}

// Runs checks on one background thread, in the order added; Finish() waits for all of them and
// rethrows the first failure (later checks are skipped once one has failed).
class CrcChecker {
 public:
  CrcChecker() : thread_([this] { Loop(); }) {}
  ~CrcChecker() { Stop(); }
  CrcChecker(const CrcChecker&) = delete;
  CrcChecker& operator=(const CrcChecker&) = delete;
  void Add(std::function<void()> check) {
    {
      std::lock_guard<std::mutex> g(mu_);
      queue_.push_back(std::move(check));
    }
    cv_.notify_one();
  }
  void Finish() {
    Stop();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void Stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  void Loop() {
    for (;;) {
      std::function<void()> check;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        check = std::move(queue_.front());
        queue_.pop_front();
      }
      if (error_) continue;  // only this thread writes error_ until it is joined
      try {
        check();
      } catch (...) {
        error_ = std::current_exception();
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool done_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

// The flat range rank r of w owns: [r * n / w, (r + 1) * n / w).
void OwnedRange(int64_t n, int r, int w, int64_t* lo, int64_t* hi) {
  *lo = n * r / w;
  *hi = n * (r + 1) / w;
}

}  // namespace

// ---- layout ---------------------------------------------------------------------------------

CheckpointLayout MakeCheckpointLayout(nn::FlatParameters& params, const optim::Optimizer* optimizer,
                                      int64_t optimizer_base) {
  CheckpointLayout l;
  l.flat_size = params.numel();
  l.buffers.push_back({params.values(), 0});
  for (const auto& e : params.entries()) l.entries.push_back({"/model/" + e.name, e.param->shape, 0, e.offset});
  if (optimizer) {
    for (const auto& [name, state] : optimizer->State()) {
      int b = static_cast<int>(l.buffers.size());
      l.buffers.push_back({state, optimizer_base});
      for (const auto& e : params.entries())
        l.entries.push_back({"/optim/" + e.name + "/" + name, e.param->shape, b, e.offset});
    }
  }
  return l;
}

// ---- writer ---------------------------------------------------------------------------------

struct CheckpointWriter::Job {
  CheckpointMeta meta;
  std::vector<CheckpointLayout::Entry> entries;
  std::vector<DType> buffer_dtypes;
  std::vector<Tensor> host;  // this rank's slice [lo, hi) of each buffer
  int64_t flat_size = 0, lo = 0, hi = 0;
  int rank = 0, world = 1;
};

CheckpointWriter::CheckpointWriter(CheckpointWriterOptions options) : o_(std::move(options)) {}

CheckpointWriter::~CheckpointWriter() {
  try {
    Wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tessera: checkpoint failed: %s\n", e.what());
  }
}

bool CheckpointWriter::busy() const {
  std::lock_guard<std::mutex> g(mu_);
  return running_;
}

void CheckpointWriter::Wait() {
  if (thread_.joinable()) thread_.join();
  ThrowIfFailed();
}

void CheckpointWriter::ThrowIfFailed() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> g(mu_);
    std::swap(e, error_);
  }
  if (e) std::rethrow_exception(e);
}

std::vector<CheckpointSaveReport> CheckpointWriter::TakeReports() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<CheckpointSaveReport> out;
  out.swap(reports_);
  return out;
}

double CheckpointWriter::Save(const CheckpointLayout& layout, const CheckpointMeta& meta) {
  auto t0 = Clock::now();
  Wait();
  auto job = std::make_shared<Job>();
  job->meta = meta;
  job->entries = layout.entries;
  job->flat_size = layout.flat_size;
  job->rank = o_.group ? o_.group->rank() : 0;
  job->world = o_.group ? o_.group->size() : 1;
  OwnedRange(layout.flat_size, job->rank, job->world, &job->lo, &job->hi);
  const int64_t n = job->hi - job->lo;
  host_.resize(layout.buffers.size());
  for (size_t b = 0; b < layout.buffers.size(); ++b) {
    const CheckpointLayout::Buffer& buf = layout.buffers[b];
    if (job->lo < buf.base || job->hi > buf.base + buf.data.numel())
      TESSERA_THROW(ValueError, "checkpoint buffer ", b, " holds flat positions [", buf.base, ", ",
                    buf.base + buf.data.numel(), ") but rank ", job->rank, " must write [", job->lo, ", ", job->hi, ")");
    RequireStorableDType(buf.data.dtype(), "checkpoint buffer");
    Tensor& h = host_[b];
    if (!h.defined() || h.numel() != n || h.dtype() != buf.data.dtype()) h = Tensor::Empty({n}, buf.data.dtype());
    if (n > 0) h.CopyFrom(buf.data.Slice0(job->lo - buf.base, job->hi - buf.base));
    job->host.push_back(h);
    job->buffer_dtypes.push_back(buf.data.dtype());
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    running_ = true;
  }
  thread_ = std::thread([this, job] { Run(job); });
  return Seconds(t0, Clock::now());
}

void CheckpointWriter::Run(std::shared_ptr<Job> job) {
  std::exception_ptr error;
  const std::string context = detail::StrCat("checkpoint at step ", job->meta.step, ": ");
  try {
    WriteJob(*job);
  } catch (const dist::CommTimeoutError& e) {  // name the save the collective belonged to
    error = std::make_exception_ptr(dist::CommTimeoutError(context + e.what()));
  } catch (const dist::CommError& e) {
    error = std::make_exception_ptr(dist::CommError(context + e.what()));
  } catch (...) {
    error = std::current_exception();
  }
  std::lock_guard<std::mutex> g(mu_);
  running_ = false;
  if (error) error_ = error;
}

void CheckpointWriter::WriteJob(Job& job) {
  const auto t0 = Clock::now();
  // TESSERA_CHECKPOINT_TRACE=1 prints how long each phase took, per rank, to stderr.
  static const bool trace = std::getenv("TESSERA_CHECKPOINT_TRACE") != nullptr;
  auto t_phase = t0;
  auto phase = [&](const char* what) {
    if (!trace) return;
    auto now = Clock::now();
    std::fprintf(stderr, "checkpoint trace: rank %d step %lld %-28s %8.2f ms\n", job.rank,
                 static_cast<long long>(job.meta.step), what, Seconds(t_phase, now) * 1e3);
    t_phase = now;
  };
  const bool lead = job.rank == 0;
  const int64_t step = job.meta.step;
  job.meta.format_version = kCheckpointFormatVersion;
  job.meta.tessera_version = TESSERA_VERSION;
  job.meta.created = UtcNow();
  job.meta.world_size = job.world;
  const std::string name = StepName(step);
  const fs::path dir(o_.dir);
  const fs::path tmp_dir = dir / ("." + name + ".partial");
  const fs::path final_dir = dir / name;
  const std::string tmp_file = (tmp_dir / kFileName).string();
  const size_t D = job.entries.size();
  dist::CollectiveOptions co;
  co.timeout_s = o_.timeout_s;
  auto esize = [&](size_t d) { return static_cast<int64_t>(SizeOf(job.buffer_dtypes[job.entries[d].buffer])); };

  // 1. Rank 0 creates the file with every dataset allocated and shares the data offsets.
  Tensor offsets = Tensor::Zeros({static_cast<int64_t>(D) + 1}, DType::kI64);  // last: failure flag
  std::exception_ptr create_error;
  if (lead) {
    try {
      std::error_code ec;
      CreateDurableDirectory(dir);
      RemoveAll(tmp_dir);
      fs::create_directory(tmp_dir, ec);
      if (ec) TESSERA_THROW(IoError, tmp_dir.string(), ": cannot create: ", ec.message());
      Hdf5Lock lock;
      Hdf5Handle fapl = FileAccess(tmp_file);
      Hdf5Handle file(H5C(H5Fcreate(tmp_file.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()), tmp_file), H5Fclose);
      const CheckpointMeta& m = job.meta;
      hid_t f = file.get();
      WriteAttr(f, "format", std::string(kCheckpointFormat), tmp_file);
      WriteRootAttributes(f, MetaJson(m, "checkpoint"), tmp_file);
      WriteAttr(f, "layout",
                detail::StrCat("each of the ", job.world, " ranks wrote a contiguous 1/", job.world,
                               " of the flat buffers (", job.flat_size, " elements)"),
                tmp_file);
      WriteAttr(f, "rng",
                std::string("philox4x32-10: the shuffle and augmentation streams are keyed by (seed, epoch), "
                            "dropout by (seed, example position); /rng/rank_state holds each rank's (seed, next "
                            "example position)"),
                tmp_file);

      Hdf5Handle lcpl(H5C(H5Pcreate(H5P_LINK_CREATE), tmp_file), H5Pclose);
      H5C(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp_file);
      Hdf5Handle dcpl(H5C(H5Pcreate(H5P_DATASET_CREATE), tmp_file), H5Pclose);
      H5C(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS), tmp_file);
      H5C(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), tmp_file);
      H5C(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), tmp_file);
      int64_t* off = offsets.data<int64_t>();
      for (size_t d = 0; d < D; ++d) {
        const auto& e = job.entries[d];
        std::string where = tmp_file + ": " + e.path;
        Hdf5Handle space = Space(e.shape, where);
        Hdf5Handle ds(H5C(H5Dcreate2(f, e.path.c_str(), FileType(job.buffer_dtypes[e.buffer], where), space.get(),
                                     lcpl.get(), dcpl.get(), H5P_DEFAULT),
                          where),
                      H5Dclose);
        WriteAttr(ds.get(), "flat_offset", e.offset, where);
        haddr_t a = H5Dget_offset(ds.get());
        if (NumElements(e.shape) > 0 && a == HADDR_UNDEF)
          TESSERA_THROW(IoError, where, ": HDF5 did not allocate the dataset's storage");
        off[d] = NumElements(e.shape) > 0 ? static_cast<int64_t>(a) : -1;
      }
      // Every rank's RNG position: (seed, next example position).
      std::vector<uint64_t> rs;
      for (int r = 0; r < job.world; ++r) {
        rs.push_back(m.seed);
        rs.push_back(static_cast<uint64_t>(r < static_cast<int>(m.rank_next_example.size()) ? m.rank_next_example[r] : 0));
      }
      Hdf5Handle rspace = Space({job.world, 2}, tmp_file);
      Hdf5Handle rds(H5C(H5Dcreate2(f, "/rng/rank_state", H5T_STD_U64LE, rspace.get(), lcpl.get(), H5P_DEFAULT,
                                    H5P_DEFAULT),
                         tmp_file + ": /rng/rank_state"),
                     H5Dclose);
      H5C(H5Dwrite(rds.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs.data()), tmp_file);
      WriteAttrU32(rds.get(), "crc32", Crc(0, rs.data(), rs.size() * sizeof(uint64_t)), tmp_file + ": /rng/rank_state");
      rds.Reset();
      H5C(file.Close(), tmp_file);
    } catch (...) {
      create_error = std::current_exception();
      offsets.data<int64_t>()[D] = 1;
    }
  }
  if (o_.group) o_.group->Broadcast(offsets, 0, co)->Wait();
  if (offsets.data<int64_t>()[D] != 0) {
    if (create_error) {
      RemoveAll(tmp_dir);
      std::rethrow_exception(create_error);
    }
    TESSERA_THROW(IoError, "checkpoint at step ", step, ": rank 0 could not create ", tmp_file,
                  " (rank 0 reports why)");
  }

  phase("1 layout (rank 0) + offsets");
  // 2. Every rank writes the bytes it owns and makes them durable.
  Tensor crcs = Tensor::Full({static_cast<int64_t>(D) + 1}, -1, DType::kI64);  // last: failure flag
  crcs.data<int64_t>()[D] = 0;
  std::exception_ptr write_error;
  int64_t rank_bytes = 0;
  try {
    int fd = open(tmp_file.c_str(), O_RDWR);
    if (fd < 0) TESSERA_THROW(IoError, tmp_file, ": cannot open for writing: ", std::strerror(errno));
    try {
      struct Piece {
        size_t d;
        const char* src;
        size_t n;
        off_t at;
      };
      std::vector<Piece> pieces;
      const int64_t* off = offsets.data<int64_t>();
      for (size_t d = 0; d < D; ++d) {
        const auto& e = job.entries[d];
        int64_t a = std::max(job.lo, e.offset), b = std::min(job.hi, e.offset + NumElements(e.shape));
        if (a >= b) continue;
        const int64_t es = esize(d);
        pieces.push_back({d, static_cast<const char*>(job.host[e.buffer].raw_data()) + (a - job.lo) * es,
                          static_cast<size_t>((b - a) * es), static_cast<off_t>(off[d] + (a - e.offset) * es)});
      }
      for (const Piece& p : pieces) {
        PwriteAll(fd, p.src, p.n, p.at, tmp_file);
        rank_bytes += static_cast<int64_t>(p.n);
      }
      phase("2 pwrite");
      // The pieces are checksummed while the data goes to the disk.
      std::exception_ptr sync_error;
      std::thread syncer([&] {
        if (fdatasync(fd) != 0) {
          try {
            TESSERA_THROW(IoError, tmp_file, ": fdatasync failed: ", std::strerror(errno));
          } catch (...) {
            sync_error = std::current_exception();
          }
        }
      });
      for (const Piece& p : pieces) crcs.data<int64_t>()[p.d] = Crc(0, p.src, p.n);
      phase("2 CRC");
      syncer.join();
      phase("2 fdatasync (rest)");
      if (sync_error) std::rethrow_exception(sync_error);
    } catch (...) {
      close(fd);
      throw;
    }
    if (close(fd) != 0) TESSERA_THROW(IoError, tmp_file, ": close failed: ", std::strerror(errno));
  } catch (...) {
    write_error = std::current_exception();
    crcs.data<int64_t>()[D] = 1;
  }
  phase("2 close");
  Tensor all = crcs;
  if (o_.group) {
    all = Tensor::Empty({static_cast<int64_t>((D + 1) * job.world)}, DType::kI64);
    o_.group->AllGather(crcs, all, co)->Wait();
  }
  const int64_t* g = all.data<int64_t>();
  for (int r = 0; r < job.world; ++r) {
    if (g[r * (D + 1) + D] == 0) continue;
    if (lead) RemoveAll(tmp_dir);
    if (write_error) std::rethrow_exception(write_error);
    TESSERA_THROW(IoError, "checkpoint at step ", step, ": rank ", r, " could not write its part of ", tmp_file,
                  " (rank ", r, " reports why)");
  }
  int64_t total_bytes = 0;
  for (size_t d = 0; d < D; ++d) total_bytes += NumElements(job.entries[d].shape) * esize(d);
  // Rank 0 tells every rank how the commit went, so that all of them report the same outcome.
  auto share_outcome = [&](bool ok) {
    if (!o_.group) return true;
    Tensor status = Tensor::FromVector({ok ? 0.0 : 1.0}, {1}, DType::kF64);
    o_.group->Broadcast(status, 0, co)->Wait();
    return status.data<double>()[0] == 0;
  };
  if (!lead) {
    if (!share_outcome(true))
      TESSERA_THROW(IoError, "checkpoint at step ", step, ": rank 0 could not commit it (rank 0 reports why)");
    CheckpointSaveReport rep{step, "", total_bytes, rank_bytes, Seconds(t0, Clock::now())};
    std::lock_guard<std::mutex> lk(mu_);
    reports_.push_back(rep);
    return;
  }

  phase("2 gather CRCs");
  // 3. Rank 0: the CRC of each tensor from its pieces (in rank order), the attributes, the
  // manifest; then durable, then read back and checked.
  try {
    std::vector<CheckpointTensor> tensors(D);
    for (size_t d = 0; d < D; ++d) {
      const auto& e = job.entries[d];
      CheckpointTensor& t = tensors[d];
      t.path = e.path;
      t.shape = e.shape;
      t.dtype = job.buffer_dtypes[e.buffer];
      t.bytes = NumElements(e.shape) * esize(d);
      t.has_crc = true;
      uint32_t crc = 0;
      bool first = true;
      for (int r = 0; r < job.world; ++r) {
        int64_t lo, hi;
        OwnedRange(job.flat_size, r, job.world, &lo, &hi);
        int64_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + NumElements(e.shape));
        if (a >= b) continue;
        uint32_t piece = static_cast<uint32_t>(g[r * (D + 1) + d]);
        crc = first ? piece : static_cast<uint32_t>(crc32_combine64(crc, piece, static_cast<z_off64_t>((b - a) * esize(d))));
        first = false;
      }
      t.crc32 = crc;
    }
    {
      Hdf5Lock lock;
      Hdf5Handle fapl = FileAccess(tmp_file);
      Hdf5Handle file(H5C(H5Fopen(tmp_file.c_str(), H5F_ACC_RDWR, fapl.get()), tmp_file), H5Fclose);
      for (const CheckpointTensor& t : tensors) {
        Hdf5Handle ds(H5C(H5Dopen2(file.get(), t.path.c_str(), H5P_DEFAULT), tmp_file + ": " + t.path), H5Dclose);
        WriteAttrU32(ds.get(), "crc32", t.crc32, tmp_file + ": " + t.path);
      }
      WriteManifest(file.get(), tensors, MetaJson(job.meta, "checkpoint"), tmp_file);
      H5C(file.Close(), tmp_file);
    }
    phase("3 attributes + manifest");
    FsyncPath(tmp_file, false);
    phase("3 fsync");
    // Verify the file as a reader will open it: the metadata and manifest parse, and every tensor
    // has its shape, dtype and CRC and sits at the offset its bytes were written at. (Reading the
    // data back here would only read the page cache; `tessera ckpt verify` reads and checks it.)
    {
      Hdf5Lock lock;
      Hdf5Handle fapl = FileAccess(tmp_file);
      Hdf5Handle file(H5C(H5Fopen(tmp_file.c_str(), H5F_ACC_RDONLY, fapl.get()), tmp_file), H5Fclose);
      CheckpointInfo info = ReadInfoLocked(file.get(), tmp_file);
      if (info.tensors.size() != D || info.meta.step != step)
        TESSERA_THROW(IoError, tmp_file, ": verification: the manifest lists ", info.tensors.size(), " tensors at step ",
                      info.meta.step, ", expected ", D, " at step ", step);
      for (size_t d = 0; d < D; ++d) {
        const CheckpointTensor& t = info.tensors[d];
        std::string where = tmp_file + ": " + t.path;
        Hdf5Handle ds(H5C(H5Dopen2(file.get(), t.path.c_str(), H5P_DEFAULT), where), H5Dclose);
        haddr_t at = H5Dget_offset(ds.get());
        if (t.path != tensors[d].path || DatasetShape(ds.get(), where) != tensors[d].shape ||
            DatasetDType(ds.get(), where) != tensors[d].dtype || t.crc32 != tensors[d].crc32 ||
            ReadNumberAttr<uint32_t>(ds.get(), "crc32", H5T_NATIVE_UINT32, where) != tensors[d].crc32 ||
            (offsets.data<int64_t>()[d] >= 0 && at != static_cast<haddr_t>(offsets.data<int64_t>()[d])))
          TESSERA_THROW(IoError, where, ": verification: the dataset does not match what was written");
      }
    }
    FsyncPath(tmp_dir.string(), true);

    phase("3 verify + fsync dir");
    // 4. Commit: rename into place, make the rename durable, move `latest`, apply retention.
    std::error_code ec;
    fs::path old_dir;  // the previous checkpoint of this step, out of sight, deleted once the commit is durable
    if (Exists(final_dir)) {
      // The same step saved again (a run resumed from an older checkpoint). Swap the two
      // directories in one step where the file system can (Linux renameat2), so that step-N is
      // never missing; elsewhere move the old one aside first (a crash in between is repaired by
      // RemovePartialCheckpoints, which puts it back).
      if (renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
        old_dir = tmp_dir;
      } else {
        old_dir = dir / ("." + name + ".replaced");
        RemoveAll(old_dir);
        fs::rename(final_dir, old_dir, ec);
        if (ec) TESSERA_THROW(IoError, final_dir.string(), ": cannot move the older checkpoint aside: ", ec.message());
      }
    }
    if (old_dir != tmp_dir) {
      fs::rename(tmp_dir, final_dir, ec);
      if (ec) TESSERA_THROW(IoError, tmp_dir.string(), ": cannot rename to ", final_dir.string(), ": ", ec.message());
    }
    // One directory fsync makes both renames durable; until then a crash may undo either, which
    // leaves the previous state: the new checkpoint absent, or present but not yet `latest`.
    fs::path link_tmp = dir / ".latest.tmp";
    fs::remove(link_tmp, ec);
    fs::create_symlink(fs::path(name) / kFileName, link_tmp, ec);
    if (ec) TESSERA_THROW(IoError, link_tmp.string(), ": cannot create the symlink: ", ec.message());
    fs::rename(link_tmp, dir / "latest", ec);
    if (ec) TESSERA_THROW(IoError, (dir / "latest").string(), ": cannot replace: ", ec.message());
    FsyncPath(dir.string(), true);
    if (!old_dir.empty()) RemoveAll(old_dir);  // only once the new one is durable

    std::vector<std::pair<int64_t, std::string>> committed;
    for (const fs::path& entry : ListDir(dir)) {
      int64_t s = ParseStepName(entry.filename().string());
      if (s >= 0 && fs::is_directory(entry, ec)) committed.emplace_back(s, entry.filename().string());
    }
    std::sort(committed.begin(), committed.end());
    const int keep = std::max(1, o_.keep_last);
    for (size_t i = 0; i + keep < committed.size(); ++i) {
      if (committed[i].first == step) continue;
      // Renamed out of sight first, so that a crash half-way through the deletion leaves nothing
      // that looks like a checkpoint.
      fs::path doomed = dir / ("." + committed[i].second + ".deleting");
      fs::rename(dir / committed[i].second, doomed, ec);
      if (!ec) RemoveAll(doomed);
    }
    phase("4 commit + retention");
  } catch (...) {
    RemoveAll(tmp_dir);
    std::exception_ptr e = std::current_exception();
    try {
      share_outcome(false);
    } catch (...) {  // a broken group: the commit's own failure is still the one to report
    }
    std::rethrow_exception(e);
  }
  share_outcome(true);
  CheckpointSaveReport rep{step, (final_dir / kFileName).string(), total_bytes, rank_bytes, Seconds(t0, Clock::now())};
  std::lock_guard<std::mutex> lk(mu_);
  reports_.push_back(rep);
}

// ---- finding checkpoints --------------------------------------------------------------------

void RemovePartialCheckpoints(const std::string& checkpoints_dir) {
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return;
  // A committed checkpoint moved aside to be replaced by a new save of the same step, when the
  // crash came before the new one took its place: put it back.
  static const std::regex replaced(R"(\.(step-[0-9]+)\.replaced)");
  for (const fs::path& entry : ListDir(checkpoints_dir)) {
    std::smatch m;
    std::string name = entry.filename().string();
    if (!std::regex_match(name, m, replaced)) continue;
    fs::path committed = entry.parent_path() / m[1].str();
    if (fs::is_regular_file(committed / kFileName, ec)) {
      RemoveAll(entry);  // the new save took its place: the old one is garbage
    } else if (fs::is_regular_file(entry / kFileName, ec)) {
      RemoveAll(committed);  // at most an empty or half-made directory
      fs::rename(entry, committed, ec);
      if (ec)
        std::fprintf(stderr, "tessera: warning: cannot put %s back as %s: %s\n", entry.c_str(), committed.c_str(),
                     ec.message().c_str());
    }
    // anything else (no checkpoint.h5: a deletion cut short) is left for the loop below
  }
  static const std::regex re(R"(\.step-[0-9]+\.(partial|deleting)|\.latest\.tmp)");
  static const std::regex half_deleted(R"(\.step-[0-9]+\.replaced)");
  for (const fs::path& entry : ListDir(checkpoints_dir)) {
    std::string name = entry.filename().string();
    if (std::regex_match(name, re)) RemoveAll(entry);
    // A .replaced that still holds a checkpoint was not put back (the rename failed): keep it.
    else if (std::regex_match(name, half_deleted) && !fs::is_regular_file(entry / kFileName, ec)) RemoveAll(entry);
  }
}

std::string SetAsideCheckpoints(const std::string& checkpoints_dir) {
  fs::path dir = fs::path(checkpoints_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "a/checkpoints/" -> "a/checkpoints"
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, ".earlier-%Y%m%d-%H%M%S", &tm);
  fs::path aside = dir.string() + stamp;
  for (int k = 2; Exists(aside); ++k) aside = dir.string() + stamp + "-" + std::to_string(k);
  // One rename: a crash leaves either the old directory whole or nothing of it in the way.
  std::error_code ec;
  fs::rename(dir, aside, ec);
  if (ec) TESSERA_THROW(IoError, dir.string(), ": cannot move to ", aside.string(), ": ", ec.message());
  fs::path parent = fs::absolute(dir, ec).parent_path();
  if (!ec) FsyncPath(parent.string(), true);
  return aside.string();
}

std::string FindLatestCheckpoint(const std::string& checkpoints_dir) {
  std::error_code ec;
  fs::path dir(checkpoints_dir);
  if (!fs::is_directory(dir, ec)) return "";
  fs::path latest = dir / "latest";
  if (fs::is_symlink(latest, ec)) {
    fs::path target = fs::read_symlink(latest, ec);
    if (!ec) {
      fs::path file = target.is_absolute() ? target : dir / target;
      if (fs::is_regular_file(file, ec)) return file.lexically_normal().string();
    }
  }
  std::vector<std::string> all = ListCheckpoints(checkpoints_dir);
  return all.empty() ? "" : all.front();
}

std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir) {
  std::error_code ec;
  std::vector<std::pair<int64_t, std::string>> found;
  for (const fs::path& entry : ListDir(checkpoints_dir)) {
    int64_t s = ParseStepName(entry.filename().string());
    if (s >= 0 && fs::is_regular_file(entry / kFileName, ec))
      found.emplace_back(s, (entry / kFileName).lexically_normal().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string ResolveCheckpoint(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (!fs::exists(p, ec)) TESSERA_THROW(IoError, path, ": no such file or directory");
  if (!fs::is_directory(p, ec)) return path;
  if (fs::is_regular_file(p / kFileName, ec)) return (p / kFileName).string();
  std::string found = FindLatestCheckpoint(path);
  if (found.empty() && fs::is_directory(p / "checkpoints", ec)) found = FindLatestCheckpoint((p / "checkpoints").string());
  if (found.empty())
    TESSERA_THROW(IoError, path, ": no checkpoint there (expected a checkpoint file, a step-N directory, a "
                  "checkpoints directory or a run directory holding committed checkpoints)");
  return found;
}

// ---- reading --------------------------------------------------------------------------------

CheckpointInfo ReadCheckpointInfo(const std::string& path) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  return ReadInfoLocked(file.get(), path);
}

CheckpointInfo LoadCheckpoint(const std::string& path, const CheckpointLayout& layout) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  CheckpointInfo info = ReadInfoLocked(file.get(), path);
  std::map<std::string, const CheckpointTensor*> by_path;
  std::vector<std::string> file_optim_states;
  for (const CheckpointTensor& t : info.tensors) {
    by_path[t.path] = &t;
    if (t.path.rfind("/optim/", 0) == 0) {
      std::string state = t.path.substr(t.path.rfind('/') + 1);
      if (std::find(file_optim_states.begin(), file_optim_states.end(), state) == file_optim_states.end())
        file_optim_states.push_back(state);
    }
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? std::string("none") : s;
  };
  // The model must match exactly: same tensors, same shapes.
  std::map<std::string, const CheckpointLayout::Entry*> wanted;
  for (const auto& e : layout.entries) wanted[e.path] = &e;
  for (const CheckpointTensor& t : info.tensors)
    if (t.path.rfind("/model/", 0) == 0 && !wanted.count(t.path))
      TESSERA_THROW(ShapeError, path, ": ", t.path, " (shape ", ShapeString(t.shape),
                    ") is in the checkpoint but not in the model: the checkpoint is of a different model");
  const bool want_optim = std::any_of(layout.entries.begin(), layout.entries.end(),
                                      [](const auto& e) { return e.path.rfind("/optim/", 0) == 0; });
  if (want_optim && info.kind != "checkpoint")
    TESSERA_THROW(CheckpointFormatError, path, ": is an exported model (no optimizer state); training resumes from "
                  "a checkpoint");
  for (const auto& e : layout.entries) {
    auto it = by_path.find(e.path);
    if (it == by_path.end()) {
      if (e.path.rfind("/optim/", 0) == 0)
        TESSERA_THROW(ShapeError, path, ": ", e.path, " is not in the checkpoint: it holds optimizer state ",
                      join(file_optim_states), " (optimizer '", info.meta.optimizer,
                      "'); the job's optimizer differs");
      TESSERA_THROW(ShapeError, path, ": the model's tensor ", e.path, " (shape ", ShapeString(e.shape),
                    ") is not in the checkpoint: the checkpoint is of a different model");
    }
    if (it->second->shape != e.shape)
      TESSERA_THROW(ShapeError, path, ": ", e.path, ": the checkpoint has shape ", ShapeString(it->second->shape),
                    " but the model has shape ", ShapeString(e.shape));
  }
  // The CRCs are checked on a second thread while the next tensors are read.
  const auto t0 = Clock::now();
  CrcChecker checker;
  for (const auto& e : layout.entries) {
    const CheckpointLayout::Buffer& buf = layout.buffers[e.buffer];
    const int64_t numel = NumElements(e.shape);
    int64_t a = std::max(e.offset, buf.base), b = std::min(e.offset + numel, buf.base + buf.data.numel());
    Tensor direct;
    if (a == e.offset && b == e.offset + numel && buf.data.device().is_cpu())
      direct = buf.data.Slice0(a - buf.base, b - buf.base);
    const CheckpointTensor& t = *by_path[e.path];
    auto r = std::make_shared<TensorRead>(ReadTensorUncheckedLocked(file.get(), t, path, &direct));
    checker.Add([&t, r, &path] { CheckCrc(t, *r, path); });
    if (a >= b || (direct.defined() && r->data.storage() == direct.storage())) continue;
    Tensor part = r->data.Slice0(a - e.offset, b - e.offset);
    if (part.dtype() != buf.data.dtype()) part = part.Cast(buf.data.dtype());
    Tensor dst = buf.data.Slice0(a - buf.base, b - buf.base);
    dst.CopyFrom(part);
  }
  const auto t_read = Clock::now();
  checker.Finish();
  if (std::getenv("TESSERA_CHECKPOINT_TRACE"))
    std::fprintf(stderr, "checkpoint trace: load %s: reading %.2f ms, then waiting for CRC checks %.2f ms\n",
                 path.c_str(), Seconds(t0, t_read) * 1e3, Seconds(t_read, Clock::now()) * 1e3);
  return info;
}

std::vector<std::string> VerifyCheckpoint(const std::string& path) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  CheckpointInfo info = ReadInfoLocked(file.get(), path);
  std::vector<std::string> problems;
  std::map<std::string, bool> listed;
  for (const CheckpointTensor& t : info.tensors) {
    listed[t.path] = true;
    try {
      ReadTensorLocked(file.get(), t, path);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  for (const std::string& p : DatasetPaths(file.get(), path))
    if ((p.rfind("/model/", 0) == 0 || p.rfind("/optim/", 0) == 0) && !listed.count(p))
      problems.push_back(path + ": " + p + ": not listed in the manifest");
  // The manifest's own CRC, and the root attributes against the copy the manifest holds.
  Manifest man = ReadManifest(file.get(), path);
  if (!man.has_crc)
    problems.push_back(path + ": /manifest: the crc32 attribute is missing");
  else if (man.stored_crc != man.computed_crc)
    problems.push_back(detail::StrCat(path, ": /manifest: CRC-32 mismatch (stored ", Hex(man.stored_crc), ", computed ",
                                      Hex(man.computed_crc), "): the manifest is corrupt"));
  if (man.attributes.is_null()) {
    problems.push_back(path + ": /manifest: holds no copy of the root attributes");
  } else {
    json now = MetaJson(info.meta, info.kind);
    for (auto it = now.begin(); it != now.end(); ++it)
      if (!man.attributes.contains(it.key()) || man.attributes[it.key()] != it.value())
        problems.push_back(path + ": root attribute '" + it.key() + "' is " + it.value().dump() +
                           " but the manifest recorded " +
                           (man.attributes.contains(it.key()) ? man.attributes[it.key()].dump() : "nothing"));
  }
  if (info.kind == "checkpoint") {
    std::string where = path + ": /rng/rank_state";
    try {
      if (H5C(H5Lexists(file.get(), "rng", H5P_DEFAULT), where) <= 0 ||
          H5C(H5Lexists(file.get(), "rng/rank_state", H5P_DEFAULT), where) <= 0)
        TESSERA_THROW(IoError, where, ": missing");
      Hdf5Handle d(H5C(H5Dopen2(file.get(), "rng/rank_state", H5P_DEFAULT), where), H5Dclose);
      Shape shape = DatasetShape(d.get(), where);
      if (shape != Shape{info.meta.world_size, 2})
        TESSERA_THROW(IoError, where, ": has shape ", ShapeString(shape), ", expected [", info.meta.world_size, ", 2]");
      std::vector<uint64_t> rs(static_cast<size_t>(info.meta.world_size) * 2);
      H5C(H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs.data()), where);
      uint32_t crc = Crc(0, rs.data(), rs.size() * sizeof(uint64_t));
      uint32_t stored = ReadNumberAttr<uint32_t>(d.get(), "crc32", H5T_NATIVE_UINT32, where);
      if (crc != stored)
        TESSERA_THROW(IoError, where, ": CRC-32 mismatch (stored ", Hex(stored), ", computed ", Hex(crc), ")");
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  return problems;
}

void ExportModel(const std::string& checkpoint_path, const std::string& out_path) {
  std::vector<CheckpointTensor> model;
  std::vector<Tensor> data;
  CheckpointInfo info;
  {
    Hdf5Lock lock;
    Hdf5Handle file = OpenForRead(checkpoint_path);
    info = ReadInfoLocked(file.get(), checkpoint_path);
    for (const CheckpointTensor& t : info.tensors) {
      if (t.path.rfind("/model/", 0) != 0) continue;
      data.push_back(ReadTensorLocked(file.get(), t, checkpoint_path));
      model.push_back(t);
    }
  }
  if (model.empty()) TESSERA_THROW(CheckpointFormatError, checkpoint_path, ": holds no /model tensors");
  fs::path out(out_path);
  fs::path tmp = out.parent_path() / ("." + out.filename().string() + ".tmp-" + std::to_string(getpid()));
  std::string tmps = tmp.string();
  try {
    Hdf5Lock lock;
    Hdf5Handle fapl = FileAccess(tmps);
    Hdf5Handle file(H5C(H5Fcreate(tmps.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), tmps), H5Fclose);
    hid_t f = file.get();
    CheckpointMeta em;
    em.tessera_version = TESSERA_VERSION;
    em.created = UtcNow();
    em.step = info.meta.step;
    em.job_spec = info.meta.job_spec;
    em.dtype = info.meta.dtype;
    WriteAttr(f, "format", std::string(kModelFormat), tmps);
    WriteRootAttributes(f, MetaJson(em, "model"), tmps);
    WriteAttr(f, "source_checkpoint", fs::absolute(checkpoint_path).lexically_normal().string(), tmps);
    Hdf5Handle lcpl(H5C(H5Pcreate(H5P_LINK_CREATE), tmps), H5Pclose);
    H5C(H5Pset_create_intermediate_group(lcpl.get(), 1), tmps);
    for (size_t i = 0; i < model.size(); ++i) {
      std::string where = tmps + ": " + model[i].path;
      Hdf5Handle space = Space(model[i].shape, where);
      Hdf5Handle ds(H5C(H5Dcreate2(f, model[i].path.c_str(), FileType(model[i].dtype, where), space.get(), lcpl.get(),
                                   H5P_DEFAULT, H5P_DEFAULT),
                        where),
                    H5Dclose);
      if (data[i].numel() > 0)
        H5C(H5Dwrite(ds.get(), MemType(model[i].dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data[i].raw_data()), where);
      WriteAttrU32(ds.get(), "crc32", model[i].crc32, where);
    }
    WriteManifest(f, model, MetaJson(em, "model"), tmps);
    H5C(file.Close(), tmps);
  } catch (...) {
    RemoveAll(tmp);
    throw;
  }
  try {
    FsyncPath(tmps, false);
    std::error_code ec;
    fs::rename(tmp, out, ec);
    if (ec) TESSERA_THROW(IoError, out_path, ": cannot rename ", tmps, " into place: ", ec.message());
    FsyncPath(out.parent_path().empty() ? "." : out.parent_path().string(), true);
  } catch (...) {
    RemoveAll(tmp);
    throw;
  }
}

std::string DescribeCheckpoint(const CheckpointInfo& info) {
  const CheckpointMeta& m = info.meta;
  std::ostringstream s;
  s << info.path << ": tessera " << info.kind << ", format version " << m.format_version << ", written by tessera "
    << m.tessera_version << " at " << m.created << "\n";
  s << "  step " << m.step;
  if (info.kind == "checkpoint") {
    s << " (epoch " << m.epoch << ", step " << m.step_in_epoch << " of " << m.steps_per_epoch << " in the epoch; "
      << m.samples_seen << " samples seen; global batch " << m.global_batch << ", seed " << m.seed << ")\n";
    s << "  layout: world size " << m.world_size << " (data " << m.data_parallel << ", tensor " << m.tensor_parallel
      << ", pipeline " << m.pipeline_parallel << ", ZeRO stage " << m.zero_stage << ")\n";
    s << "  optimizer: " << m.optimizer << ", " << m.optimizer_step << " steps taken; schedule " << m.lr_schedule
      << ", last lr " << m.lr << "\n";
  } else {
    s << "\n";
  }
  int64_t model_params = 0, bytes = 0;
  size_t width = 0;
  for (const CheckpointTensor& t : info.tensors) width = std::max(width, t.path.size());
  s << "  tensors (" << info.tensors.size() << "):\n";
  for (const CheckpointTensor& t : info.tensors) {
    char line[512];
    std::snprintf(line, sizeof line, "    %-*s  %-8s %-20s crc32 %s\n", static_cast<int>(width), t.path.c_str(),
                  DTypeShort(t.dtype).c_str(), ShapeString(t.shape).c_str(), Hex(t.crc32).c_str());
    s << line;
    if (t.path.rfind("/model/", 0) == 0) model_params += NumElements(t.shape);
    bytes += t.bytes;
  }
  s << "  " << model_params << " model parameters; " << bytes << " bytes of tensors\n";
  return s.str();
}

std::string CheckpointInfoJson(const CheckpointInfo& info) {
  json j = MetaJson(info.meta, info.kind);
  j.erase("job_spec");  // long; `h5dump -a job_spec` or the run directory's job.pbtxt has it
  j["path"] = info.path;
  j["kind"] = info.kind;
  j["tensors"] = ManifestJson(info.tensors)["tensors"];
  return j.dump(2);
}

}  // namespace tessera::jobs
