// Shared HDF5 plumbing: the process-wide lock, owned identifiers, and checked calls.
//
// HDF5 as Debian builds it (the Open MPI flavour above all) is not thread-safe, so every HDF5 call
// in the process -- dataset readers and checkpoints alike -- is made while holding Hdf5Mutex(),
// normally through an Hdf5Lock. Every call's status goes through TESSERA_H5_CHECK, which turns a
// failure into an exception carrying the call, the file (and object) and HDF5's own reason.
#pragma once

#include <hdf5.h>

#include <mutex>
#include <string>

#include "core/error.h"

namespace tessera::datasets {

// The one mutex around all HDF5 calls in this process.
std::mutex& Hdf5Mutex();

// Holds Hdf5Mutex() and, while held, switches off HDF5's automatic printing of its error stack on
// this thread (failures are reported by TESSERA_H5_CHECK instead); the destructor restores the
// previous printing and unlocks. Not recursive: never nest two on one thread.
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

}  // namespace tessera::datasets

// TESSERA_H5_CHECK(IoError, H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), path): the call's result,
// or ErrorType naming `where` (the file, and the object in it) and the call.
#define TESSERA_H5_CHECK(ErrorType, call, where) ::tessera::datasets::Hdf5Check<ErrorType>((call), #call, (where))
