#include "datasets/hdf5_util.h"

#include <vector>

namespace tessera::datasets {

std::mutex& Hdf5Mutex() {
  static std::mutex mu;
  return mu;
}

Hdf5Lock::Hdf5Lock() : lock_(Hdf5Mutex()) {
  TESSERA_H5_CHECK(IoError, H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_), "HDF5 error reporting");
  TESSERA_H5_CHECK(IoError, H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), "HDF5 error reporting");
}

// A destructor cannot throw; failing to restore only changes whether HDF5 prints its stack.
Hdf5Lock::~Hdf5Lock() { (void)H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_); }

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

}  // namespace tessera::datasets
