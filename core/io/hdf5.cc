#include "core/io/hdf5.h"

#include <sys/stat.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace tessera::io {

std::mutex& Hdf5Mutex() {
  static std::mutex mu;
  // Before the library's first call (every HDF5 call is made under this mutex): no H5close at
  // exit. After a failed H5Fclose (a full disk) HDF5 keeps a half-closed file that its exit
  // handler then closes again and crashes in (H5F__close_cb, HDF5 1.10); every file tessera
  // opens is closed in scope, so the handler has nothing left to do but that.
  static const bool no_atexit = H5dont_atexit() >= 0;
  (void)no_atexit;
  return mu;
}

namespace {
thread_local bool t_held = false;  // whether this thread holds Hdf5Mutex() through an Hdf5Lock
}  // namespace

bool Hdf5LockHeldHere() { return t_held; }

Hdf5Lock::Hdf5Lock() {
  TESSERA_CHECK(!t_held, "Hdf5Lock nested on one thread (it is not recursive: this would deadlock)");
  lock_ = std::unique_lock<std::mutex>(Hdf5Mutex());
  t_held = true;
  try {
    TESSERA_H5_CHECK(IoError, H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_), "HDF5 error reporting");
    TESSERA_H5_CHECK(IoError, H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), "HDF5 error reporting");
  } catch (...) {
    t_held = false;  // the lock itself is released by lock_'s destructor
    throw;
  }
}

// A destructor cannot throw; failing to restore only changes whether HDF5 prints its stack.
Hdf5Lock::~Hdf5Lock() {
  (void)H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_);
  t_held = false;
}

Hdf5Handle& Hdf5Handle::operator=(Hdf5Handle&& o) noexcept {
  if (this != &o) {
    Reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Hdf5Handle::Reset() { Close(); }

herr_t Hdf5Handle::Close() {
  herr_t rc = 0;
  if (id_ >= 0 && close_ != nullptr) rc = close_(id_);
  id_ = H5I_INVALID_HID;
  return rc;
}

namespace {
herr_t CollectError(unsigned n, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  std::string func = e->func_name ? e->func_name : "?";
  std::string desc = e->desc ? e->desc : "";
  for (char& c : desc)  // some descriptions span lines (a failed write's "time = ...\n, filename = ...")
    if (c == '\n') c = ' ';
  out->push_back(func + ": " + desc);
  return 0;
}
}  // namespace

std::string Hdf5ErrorMessage() {
  std::vector<std::string> entries;  // from the API call down to the innermost function
  if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, &CollectError, &entries) < 0) return "";
  (void)H5Eclear2(H5E_DEFAULT);  // best effort: a failure is being reported already
  if (entries.empty()) return "";
  if (entries.size() == 1) return entries.front();
  return entries.front() + "; " + entries.back();
}

#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

// ---- opening ----------------------------------------------------------------------------------

Hdf5Handle FileAccess(const std::string& where) {
  Hdf5Handle fapl(H5C(H5Pcreate(H5P_FILE_ACCESS), where), H5Pclose);
#if H5_VERSION_GE(1, 10, 7)
  H5C(H5Pset_file_locking(fapl.get(), false, true), where);
#endif
  return fapl;
}

Hdf5Handle FileCreateAccess(const std::string& where) {
  Hdf5Handle fapl = FileAccess(where);
  H5C(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_LATEST), where);
  return fapl;
}

Hdf5Handle OpenForRead(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) TESSERA_THROW(IoError, path, ": no such file");
    TESSERA_THROW(IoError, path, ": cannot read: ", std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) TESSERA_THROW(IoError, path, ": is a directory, not an HDF5 file");
  if (!S_ISREG(st.st_mode))
    TESSERA_THROW(IoError, path, ": is not a regular file (a FIFO, device or socket); refusing to read it");
  if (st.st_size == 0) TESSERA_THROW(IoError, path, ": is empty (0 bytes): not an HDF5 file");
  htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) TESSERA_THROW(IoError, path, ": not an HDF5 file (no HDF5 signature; overwritten?)");
  Hdf5Handle fapl = FileAccess(path);
  // Closing the file closes whatever of it is still open, so that a damaged file whose objects
  // fail to close leaves nothing behind in a long-running process.
  H5C(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path);
  hid_t f = is_hdf5 > 0 ? H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()) : -1;
  if (f < 0) {
    std::string why = Hdf5ErrorMessage();
    TESSERA_THROW(IoError, path, ": cannot be opened as HDF5 (truncated or damaged?)", why.empty() ? "" : ": ", why);
  }
  return Hdf5Handle(f, H5Fclose);
}

int64_t FileSize(hid_t file, const std::string& where) {
  hsize_t size = 0;
  H5C(H5Fget_filesize(file, &size), where);
  return static_cast<int64_t>(size);
}

// ---- attributes -------------------------------------------------------------------------------

namespace {

const char* ClassName(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "an integer";
    case H5T_FLOAT: return "a float";
    case H5T_STRING: return "a string";
    case H5T_COMPOUND: return "a compound";
    case H5T_ENUM: return "an enum";
    case H5T_ARRAY: return "an array type";
    case H5T_VLEN: return "a variable-length sequence";
    case H5T_REFERENCE: return "a reference";
    case H5T_OPAQUE: return "opaque data";
    case H5T_BITFIELD: return "a bitfield";
    default: return "of an unknown type";
  }
}

// Opens attribute `name` of `obj`, requiring exactly one element of class `want` (or `also`).
Hdf5Handle OpenSingleAttr(hid_t obj, const char* name, const std::string& where, H5T_class_t want,
                          H5T_class_t also, const char* expected) {
  const std::string at = where + " @" + name;
  if (!HasAttr(obj, name, where)) TESSERA_THROW(IoError, where, ": attribute '", name, "' is missing");
  Hdf5Handle attr(H5C(H5Aopen(obj, name, H5P_DEFAULT), at), H5Aclose);
  Hdf5Handle space(H5C(H5Aget_space(attr.get()), at), H5Sclose);
  H5S_class_t sc = H5Sget_simple_extent_type(space.get());
  hssize_t n = H5C(H5Sget_simple_extent_npoints(space.get()), at);
  if (sc == H5S_NULL || n != 1)
    TESSERA_THROW(IoError, at, ": holds ", sc == H5S_NULL ? 0 : n, " values; expected a single ", expected);
  Hdf5Handle type(H5C(H5Aget_type(attr.get()), at), H5Tclose);
  H5T_class_t cls = H5C(H5Tget_class(type.get()), at);
  if (cls != want && cls != also) TESSERA_THROW(IoError, at, ": is ", ClassName(cls), "; expected ", expected);
  return attr;
}

void WriteAttr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value, const std::string& where) {
  Hdf5Handle space(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  Hdf5Handle attr(H5C(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), where + " @" + name),
                  H5Aclose);
  H5C(H5Awrite(attr.get(), mem_type, value), where + " @" + name);
}

Hdf5Handle VlenString(const std::string& where) {
  Hdf5Handle t(H5C(H5Tcopy(H5T_C_S1), where), H5Tclose);
  H5C(H5Tset_size(t.get(), H5T_VARIABLE), where);
  H5C(H5Tset_cset(t.get(), H5T_CSET_UTF8), where);
  return t;
}

// A fixed-length UTF-8 string type that holds `s` (null-padded, at least one byte).
Hdf5Handle FixedString(const std::string& s, const std::string& where) {
  Hdf5Handle t(H5C(H5Tcopy(H5T_C_S1), where), H5Tclose);
  H5C(H5Tset_size(t.get(), std::max<size_t>(1, s.size())), where);
  H5C(H5Tset_strpad(t.get(), H5T_STR_NULLPAD), where);
  H5C(H5Tset_cset(t.get(), H5T_CSET_UTF8), where);
  return t;
}

// Reads one string from an attribute or dataset whose type is `type` (class string).
template <typename ReadFn>
std::string ReadOneString(hid_t type, hid_t space, const std::string& where, bool allow_vlen, ReadFn read) {
  if (H5Tis_variable_str(type) > 0) {
    if (!allow_vlen)
      TESSERA_THROW(IoError, where, ": is a variable-length string; tessera files of this format hold fixed-length "
                    "strings (HDF5 cannot read damaged variable-length data safely, so it is refused)");
    Hdf5Handle mem = VlenString(where);
    H5C(H5Tset_cset(mem.get(), H5Tget_cset(type)), where);  // no conversion between character sets
    char* p = nullptr;
    H5C(read(mem.get(), &p), where);
    size_t n = p ? strnlen(p, static_cast<size_t>(kMaxStringBytes) + 1) : 0;
    std::string s = p ? std::string(p, n) : "";
    if (p) H5Dvlen_reclaim(mem.get(), space, H5P_DEFAULT, &p);
    if (static_cast<int64_t>(n) > kMaxStringBytes)
      TESSERA_THROW(IoError, where, ": the string is longer than ", kMaxStringBytes, " bytes");
    return s;
  }
  size_t n = H5Tget_size(type);
  if (n == 0 || static_cast<int64_t>(n) > kMaxStringBytes)
    TESSERA_THROW(IoError, where, ": a fixed-length string of ", n, " bytes (at most ", kMaxStringBytes, ")");
  std::string s(n, '\0');
  H5C(read(type, s.data()), where);
  return s.substr(0, s.find('\0'));
}

}  // namespace

bool HasAttr(hid_t obj, const char* name, const std::string& where) { return H5C(H5Aexists(obj, name), where) > 0; }

int64_t ReadIntAttr(hid_t obj, const char* name, const std::string& where, int64_t lo, int64_t hi) {
  Hdf5Handle attr = OpenSingleAttr(obj, name, where, H5T_INTEGER, H5T_INTEGER, "integer");
  int64_t v = 0;
  H5C(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), where + " @" + name);
  if (v < lo || v > hi) TESSERA_THROW(IoError, where, " @", name, ": ", v, " is outside [", lo, ", ", hi, "]");
  return v;
}

double ReadRealAttr(hid_t obj, const char* name, const std::string& where) {
  Hdf5Handle attr = OpenSingleAttr(obj, name, where, H5T_FLOAT, H5T_INTEGER, "number");
  double v = 0;
  H5C(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v), where + " @" + name);
  return v;
}

std::string ReadStringAttr(hid_t obj, const char* name, const std::string& where, bool allow_vlen) {
  Hdf5Handle attr = OpenSingleAttr(obj, name, where, H5T_STRING, H5T_STRING, "string");
  const std::string at = where + " @" + name;
  Hdf5Handle type(H5C(H5Aget_type(attr.get()), at), H5Tclose);
  Hdf5Handle space(H5C(H5Aget_space(attr.get()), at), H5Sclose);
  return ReadOneString(type.get(), space.get(), at, allow_vlen,
                       [&](hid_t mem, void* buf) { return H5Aread(attr.get(), mem, buf); });
}

void WriteIntAttr(hid_t obj, const char* name, int64_t v, const std::string& where) {
  WriteAttr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, where);
}
void WriteU32Attr(hid_t obj, const char* name, uint32_t v, const std::string& where) {
  WriteAttr(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &v, where);
}
void WriteRealAttr(hid_t obj, const char* name, double v, const std::string& where) {
  WriteAttr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, where);
}
void WriteStringAttr(hid_t obj, const char* name, const std::string& v, const std::string& where) {
  Hdf5Handle t = FixedString(v, where);
  std::string padded = v;
  padded.resize(std::max<size_t>(1, v.size()), '\0');
  WriteAttr(obj, name, t.get(), t.get(), padded.data(), where);
}

// ---- datasets ---------------------------------------------------------------------------------

bool PathExists(hid_t file, const std::string& path, const std::string& where) {
  if (path.empty() || path[0] != '/') TESSERA_THROW(IoError, where, ": '", path, "' is not an absolute HDF5 path");
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string prefix = path.substr(0, slash);
    if (H5C(H5Lexists(file, prefix.c_str(), H5P_DEFAULT), where) <= 0) return false;
    // Soft and external links could point anywhere, another file included: tessera writes none.
    H5L_info_t info;
    H5C(H5Lget_info(file, prefix.c_str(), &info, H5P_DEFAULT), where);
    if (info.type != H5L_TYPE_HARD)
      TESSERA_THROW(IoError, where, ": ", prefix, " is a soft or external link; tessera files hold only hard links");
    if (slash == std::string::npos) return true;
  }
}

std::vector<int64_t> DatasetShape(hid_t dset, const std::string& where) {
  Hdf5Handle space(H5C(H5Dget_space(dset), where), H5Sclose);
  H5S_class_t sc = H5Sget_simple_extent_type(space.get());
  if (sc == H5S_NULL) TESSERA_THROW(IoError, where, ": has a null dataspace (no data)");
  int nd = H5C(H5Sget_simple_extent_ndims(space.get()), where);
  if (nd > kMaxTensorRank) TESSERA_THROW(IoError, where, ": has ", nd, " dimensions (at most ", kMaxTensorRank, ")");
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  if (nd > 0) H5C(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where);
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (hsize_t d : dims) {
    const auto limit = static_cast<hsize_t>(std::numeric_limits<int64_t>::max() / 16);
    if (d > limit || (d > 0 && static_cast<hsize_t>(numel) > limit / d))
      TESSERA_THROW(IoError, where, ": a dimension of ", d, " makes the element count overflow");
    numel *= static_cast<int64_t>(d);
    shape.push_back(static_cast<int64_t>(d));
  }
  return shape;
}

DType DatasetTensorType(hid_t dset, const std::string& where) {
  Hdf5Handle type(H5C(H5Dget_type(dset), where), H5Tclose);
  H5T_class_t cls = H5C(H5Tget_class(type.get()), where);
  if (cls == H5T_FLOAT) {
    if (H5C(H5Tequal(type.get(), H5T_IEEE_F32LE), where) > 0 || H5C(H5Tequal(type.get(), H5T_IEEE_F32BE), where) > 0)
      return DType::kF32;
    if (H5C(H5Tequal(type.get(), H5T_IEEE_F64LE), where) > 0 || H5C(H5Tequal(type.get(), H5T_IEEE_F64BE), where) > 0)
      return DType::kF64;
  }
  if (cls == H5T_INTEGER && H5Tget_size(type.get()) == 1 && H5Tget_sign(type.get()) == H5T_SGN_2) return DType::kI8;
  TESSERA_THROW(IoError, where, ": is ", ClassName(cls), " of ", H5Tget_size(type.get()),
                " bytes, not IEEE float32 or float64 (or int8)");
}

int64_t CheckContiguousStorage(hid_t dset, int64_t bytes, int64_t file_size, const std::string& where) {
  if (bytes == 0) return -1;
  Hdf5Handle dcpl(H5C(H5Dget_create_plist(dset), where), H5Pclose);
  H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout < 0) TESSERA_THROW(IoError, where, ": cannot read the storage layout: ", Hdf5ErrorMessage());
  if (layout != H5D_CONTIGUOUS && !(layout == H5D_COMPACT && bytes <= 65536))
    TESSERA_THROW(IoError, where, ": is stored ", layout == H5D_CHUNKED ? "in chunks" : "in an unusual layout",
                  "; tessera files store each tensor contiguous and uncompressed");
  if (H5C(H5Pget_nfilters(dcpl.get()), where) > 0)
    TESSERA_THROW(IoError, where, ": is filtered (compressed); tessera files store tensors uncompressed");
  if (H5C(H5Pget_external_count(dcpl.get()), where) > 0)
    TESSERA_THROW(IoError, where, ": keeps its data in external files; tessera files hold their own data");
  const auto stored = static_cast<int64_t>(H5Dget_storage_size(dset));
  if (stored != bytes)
    TESSERA_THROW(IoError, where, ": declares ", bytes, " bytes of data but stores ", stored,
                  stored == 0 ? " (never written)" : "");
  if (layout == H5D_COMPACT) return -1;  // inside the object header, which HDF5 has already read
  haddr_t at = H5Dget_offset(dset);
  if (at == HADDR_UNDEF) TESSERA_THROW(IoError, where, ": has no data in the file");
  const auto offset = static_cast<int64_t>(at);
  if (offset < 0 || offset > file_size || bytes > file_size - offset)
    TESSERA_THROW(IoError, where, ": its ", bytes, " bytes at offset ", offset, " lie beyond the end of the file (",
                  file_size, " bytes): truncated?");
  return offset;
}

std::string ReadStringDataset(hid_t file, const char* name, const std::string& where, bool allow_vlen) {
  const std::string at = where + ": /" + name;
  Hdf5Handle d(H5C(H5Dopen2(file, name, H5P_DEFAULT), at), H5Dclose);
  Hdf5Handle type(H5C(H5Dget_type(d.get()), at), H5Tclose);
  H5T_class_t cls = H5C(H5Tget_class(type.get()), at);
  if (cls != H5T_STRING) TESSERA_THROW(IoError, at, ": is ", ClassName(cls), "; expected a string");
  Hdf5Handle space(H5C(H5Dget_space(d.get()), at), H5Sclose);
  hssize_t n = H5C(H5Sget_simple_extent_npoints(space.get()), at);
  if (H5Sget_simple_extent_type(space.get()) == H5S_NULL || n != 1)
    TESSERA_THROW(IoError, at, ": holds ", n, " strings; expected one");
  if (H5Tis_variable_str(type.get()) <= 0)  // fixed-length: its bytes must lie inside the file
    CheckContiguousStorage(d.get(), static_cast<int64_t>(H5Tget_size(type.get())), FileSize(file, at), at);
  return ReadOneString(type.get(), space.get(), at, allow_vlen, [&](hid_t mem, void* buf) {
    return H5Dread(d.get(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  });
}

void WriteStringDataset(hid_t file, const char* name, const std::string& text, const std::string& where) {
  const std::string at = where + ": /" + name;
  Hdf5Handle type = FixedString(text, where);
  Hdf5Handle space(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  Hdf5Handle dcpl(H5C(H5Pcreate(H5P_DATASET_CREATE), where), H5Pclose);
  H5C(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS), where);  // not compact: a manifest can exceed 64 KiB
  Hdf5Handle d(H5C(H5Dcreate2(file, name, type.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), at),
               H5Dclose);
  std::string padded = text;
  padded.resize(std::max<size_t>(1, text.size()), '\0');
  H5C(H5Dwrite(d.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()), at);
}

namespace {
struct LinkCollector {
  std::vector<std::string> names;
  bool too_many = false;
};
herr_t CollectHardLink(hid_t, const char* name, const H5L_info_t* info, void* data) {
  auto* c = static_cast<LinkCollector*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;  // never followed
  if (static_cast<int64_t>(c->names.size()) >= kMaxObjects) {
    c->too_many = true;
    return 1;  // stop
  }
  c->names.push_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> DatasetPaths(hid_t file, const std::string& where) {
  LinkCollector c;
  H5C(H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, CollectHardLink, &c), where);
  if (c.too_many) TESSERA_THROW(IoError, where, ": holds more than ", kMaxObjects, " objects");
  std::vector<std::string> out;
  for (const std::string& n : c.names) {
    H5O_info_t info;
    H5C(H5Oget_info_by_name(file, n.c_str(), &info, H5P_DEFAULT), where + ": " + n);
    if (info.type == H5O_TYPE_DATASET) out.push_back("/" + n);
  }
  return out;
}

Hdf5Handle Dataspace(const std::vector<int64_t>& shape, const std::string& where) {
  if (shape.empty()) return Hdf5Handle(H5C(H5Screate(H5S_SCALAR), where), H5Sclose);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Hdf5Handle(H5C(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), where), H5Sclose);
}

Hdf5Handle PreallocatedContiguous(const std::string& where) {
  Hdf5Handle dcpl(H5C(H5Pcreate(H5P_DATASET_CREATE), where), H5Pclose);
  H5C(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS), where);
  H5C(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), where);
  H5C(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), where);
  return dcpl;
}

hid_t FileTensorType(DType t, const std::string& what) {
  switch (t) {
    case DType::kF32: return H5T_IEEE_F32LE;
    case DType::kF64: return H5T_IEEE_F64LE;
    case DType::kI8: return H5T_STD_I8LE;
    default: TESSERA_THROW(ValueError, what, ": tessera files hold f32, f64 and i8 tensors, not ", DTypeName(t));
  }
}

hid_t MemTensorType(DType t) {
  switch (t) {
    case DType::kF64: return H5T_NATIVE_DOUBLE;
    case DType::kI8: return H5T_NATIVE_SCHAR;
    default: return H5T_NATIVE_FLOAT;
  }
}

}  // namespace tessera::io
