// HDF5 plumbing shared by every reader and writer: the process-wide lock, owned identifiers,
// checked calls, and readers that treat the file as hostile.
//
// HDF5 as Debian builds it (the Open MPI flavour above all) is not thread-safe, so every HDF5 call
// in the process -- dataset readers, checkpoints, the model store -- is made while holding
// Hdf5Mutex(), normally through an Hdf5Lock. Every call's status goes through TESSERA_H5_CHECK,
// which turns a failure into an exception carrying the call, the file (and object) and HDF5's own
// reason.
//
// Hostile files. Any file tessera reads may come from elsewhere. The Read* helpers below check an
// object's type and element count before reading it into memory, and a dataset's declared size
// against its real storage in the file, so a crafted file gets an IoError naming the file, the
// object and what is wrong -- never a stack overrun or an allocation sized by a lie.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace tessera::io {

// A file that is intact but of a kind or version this build cannot use: written by a newer
// tessera, or a tessera file of another kind (a model where a checkpoint is needed). Damage --
// truncation, bad checksums, missing or malformed objects -- is a plain IoError.
class FormatError : public IoError {
  using IoError::IoError;
};

// The one mutex around all HDF5 calls in this process.
std::mutex& Hdf5Mutex();

// Holds Hdf5Mutex() and, while held, switches off HDF5's automatic printing of its error stack on
// this thread (failures are reported by TESSERA_H5_CHECK instead); the destructor restores the
// previous printing and unlocks. Not recursive: nesting two on one thread is a fatal check.
class Hdf5Lock {
 public:
  Hdf5Lock();
  ~Hdf5Lock();
  Hdf5Lock(const Hdf5Lock&) = delete;
  Hdf5Lock& operator=(const Hdf5Lock&) = delete;

 private:
  std::unique_lock<std::mutex> lock_;
  H5E_auto2_t saved_func_ = nullptr;
  void* saved_data_ = nullptr;
};

// Whether the calling thread holds Hdf5Mutex() through an Hdf5Lock.
bool Hdf5LockHeldHere();

// An owned HDF5 identifier (file, group, dataset, dataspace, datatype, attribute, property list),
// closed by the matching H5?close. Move-only. Destroy or Reset it while holding Hdf5Mutex(). A
// failing close is ignored (there is nothing useful to do about it in a destructor); when a close
// must be checked -- a file being written -- call Close().
class Hdf5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Hdf5Handle() = default;
  Hdf5Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Hdf5Handle() { Reset(); }
  Hdf5Handle(Hdf5Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Hdf5Handle& operator=(Hdf5Handle&& o) noexcept;
  Hdf5Handle(const Hdf5Handle&) = delete;
  Hdf5Handle& operator=(const Hdf5Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void Reset();
  // Closes now and returns the close's status (negative on failure); the handle is then empty.
  herr_t Close();

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// HDF5's description of the error on this thread's default error stack ("" when empty), e.g.
// "H5Dopen2: unable to open dataset; H5G__traverse_real: object 'x' doesn't exist"; clears it.
std::string Hdf5ErrorMessage();

// Returns `status` when it is >= 0 (hid_t, herr_t, htri_t, ssize_t and the enum results all
// signal failure that way); otherwise throws ErrorType "<where>: <function> failed:
// <Hdf5ErrorMessage()>", where <function> is `call` up to its first '('.
template <typename ErrorType, typename T>
T Hdf5Check(T status, const char* call, const std::string& where) {
  if (status < 0) {
    std::string function(call);
    function = function.substr(0, function.find('('));
    std::string why = Hdf5ErrorMessage();
    TESSERA_THROW(ErrorType, where, ": ", function, " failed", why.empty() ? "" : ": ", why);
  }
  return status;
}

}  // namespace tessera::io

// TESSERA_H5_CHECK(IoError, H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), path): the call's result,
// or ErrorType naming `where` (the file, and the object in it) and the call.
#define TESSERA_H5_CHECK(ErrorType, call, where) ::tessera::io::Hdf5Check<ErrorType>((call), #call, (where))

namespace tessera::io {

// ---- limits on what a file may declare --------------------------------------------------------
constexpr int kMaxTensorRank = 8;
constexpr int64_t kMaxStringBytes = int64_t{1} << 26;  // 64 MiB: a manifest or job spec, never more
constexpr int64_t kMaxObjects = 1 << 20;              // datasets listed in one file
constexpr int kMaxJsonDepth = 32;                     // nesting of a manifest's JSON

// ---- opening (call with the lock held) --------------------------------------------------------

// File access with HDF5's own file locking off: tessera never has two processes open a file it is
// writing (hidden temporary names and renames see to that), and flock() fails on file systems
// mounted without it (Lustre without -o flock, NFS without lockd).
Hdf5Handle FileAccess(const std::string& where);
// The same for creating a file, in HDF5's 1.10 file format: superblock, object headers, B-trees
// and heaps then carry checksums that HDF5 verifies on every read, so damage to the file's
// structure is an error instead of garbage that HDF5 would go on to parse.
Hdf5Handle FileCreateAccess(const std::string& where);

// Opens `path` read-only, refusing what is not a regular file (a directory, a FIFO, a device)
// before HDF5 touches it. IoError for a missing, empty, truncated, damaged or non-HDF5 file, each
// with its own message.
Hdf5Handle OpenForRead(const std::string& path);

// The size in bytes of the open file (what declared sizes are checked against).
int64_t FileSize(hid_t file, const std::string& where);

// ---- attributes (call with the lock held) ------------------------------------------------------

bool HasAttr(hid_t obj, const char* name, const std::string& where);
// A single integer (a scalar, or an array of exactly one element) of any integer type. IoError
// naming `where @name` when it is missing, an array, not an integer, or outside [lo, hi].
int64_t ReadIntAttr(hid_t obj, const char* name, const std::string& where, int64_t lo = INT64_MIN,
                    int64_t hi = INT64_MAX);
// A single real (integers are accepted and converted).
double ReadRealAttr(hid_t obj, const char* name, const std::string& where);
// A single fixed-length string of at most kMaxStringBytes. A variable-length string is refused
// unless `allow_vlen` (legacy files only): its bytes live in HDF5's global heap, which has no
// checksum, and HDF5 1.10 overruns its buffers reading a damaged one.
std::string ReadStringAttr(hid_t obj, const char* name, const std::string& where, bool allow_vlen = false);

void WriteIntAttr(hid_t obj, const char* name, int64_t v, const std::string& where);
void WriteU32Attr(hid_t obj, const char* name, uint32_t v, const std::string& where);
void WriteRealAttr(hid_t obj, const char* name, double v, const std::string& where);
// Strings are written fixed-length (UTF-8, null-padded); h5py reads them as bytes.
void WriteStringAttr(hid_t obj, const char* name, const std::string& v, const std::string& where);

// ---- datasets (call with the lock held) --------------------------------------------------------

// Whether the object at `path` ("/model/0.weight") exists, checking each group on the way (where
// H5Lexists alone fails rather than saying no).
bool PathExists(hid_t file, const std::string& path, const std::string& where);
// The dataset's shape: rank at most kMaxTensorRank, element count checked for overflow.
std::vector<int64_t> DatasetShape(hid_t dset, const std::string& where);
// kF32 or kF64 for an IEEE float dataset of either byte order, kI8 for a signed 8-bit integer one
// (quantised weights); IoError otherwise.
DType DatasetTensorType(hid_t dset, const std::string& where);
// Checks that a dataset declared as `bytes` bytes is stored contiguously, uncompressed, with all
// of its bytes inside the file (so reading it cannot allocate more than the file holds). Returns
// the data's byte offset in the file, or -1 for an empty dataset.
int64_t CheckContiguousStorage(hid_t dset, int64_t bytes, int64_t file_size, const std::string& where);
// A scalar string dataset (the manifest), at most kMaxStringBytes, stored inside the file;
// variable-length only with `allow_vlen`, as for attributes.
std::string ReadStringDataset(hid_t file, const char* name, const std::string& where, bool allow_vlen = false);
void WriteStringDataset(hid_t file, const char* name, const std::string& text, const std::string& where);
// Every dataset below the root, as "/model/0.weight"; at most kMaxObjects.
std::vector<std::string> DatasetPaths(hid_t file, const std::string& where);

// A dataspace of `shape` (scalar for an empty shape).
Hdf5Handle Dataspace(const std::vector<int64_t>& shape, const std::string& where);
// Dataset creation for data written straight to the file by pwrite: contiguous, allocated when the
// dataset is created (so H5Dget_offset names its place), never filled.
Hdf5Handle PreallocatedContiguous(const std::string& where);

// The file and memory types of the dtypes tessera stores (f32, f64, and i8 in model files).
hid_t FileTensorType(DType t, const std::string& what);
hid_t MemTensorType(DType t);

}  // namespace tessera::io
