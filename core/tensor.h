// Tensor: a contiguous, row-major block of elements on one device.
//
// A Tensor is a cheap handle (shared ownership of its Storage, an element offset, a shape and a
// dtype). Copying a Tensor shares the data; Clone() copies it. View() and Reshape() return handles
// onto the same storage: this is how each named parameter becomes a slice of one flat buffer
// (see nn/flat_parameters.h), how ZeRO shards are taken, and how checkpoints address hyperslabs.
//
// Tensors are always contiguous; there are no strides. Thread safety: handles may be copied
// across threads; concurrent writes to the same elements are the caller's problem.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace tessera {

using Shape = std::vector<int64_t>;

std::string ShapeString(const Shape& shape);
int64_t NumElements(const Shape& shape);

// Owns one allocation on one device; returns it to that device's caching allocator when freed.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory from the device's caching allocator.
  static Tensor Empty(const Shape& shape, DType dtype = DType::kF32, Device device = Device::CPU());
  static Tensor Zeros(const Shape& shape, DType dtype = DType::kF32, Device device = Device::CPU());
  static Tensor Full(const Shape& shape, double value, DType dtype = DType::kF32,
                     Device device = Device::CPU());
  // A host tensor holding `values` (converted to dtype), reshaped to `shape`.
  static Tensor FromVector(const std::vector<double>& values, const Shape& shape,
                           DType dtype = DType::kF32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU(); }
  size_t nbytes() const { return static_cast<size_t>(numel_) * SizeOf(dtype_); }
  int64_t storage_offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;
  // Typed pointer; throws ShapeError if T does not match dtype().
  template <typename T>
  T* data() const {
    if (DTypeOf<T>::value != dtype_)
      TESSERA_THROW(ShapeError, "tensor of dtype ", DTypeName(dtype_), " accessed as ",
                    DTypeName(DTypeOf<T>::value));
    return static_cast<T*>(raw_data());
  }

  // A tensor of `shape` sharing storage, starting `offset` elements past this one's start. It must
  // lie within this tensor's elements.
  Tensor View(int64_t offset, const Shape& shape) const;
  // Same elements, new shape (one dimension may be -1).
  Tensor Reshape(const Shape& shape) const;
  // Rows [begin, end) along dimension 0.
  Tensor Slice0(int64_t begin, int64_t end) const;
  Tensor Flatten() const { return Reshape({numel_}); }

  Tensor Clone() const;
  // Copy to another device (or the same: a clone).
  Tensor To(Device device) const;
  // Converted to another dtype on the same device.
  Tensor Cast(DType dtype) const;
  // Copies src's elements into this tensor; shapes must have the same element count and dtypes
  // must match. Either side may be on any device.
  void CopyFrom(const Tensor& src);
  void Fill(double value);
  void Zero() { Fill(0.0); }

  // Host-side convenience for tests and tools (copies off the device if needed).
  std::vector<double> ToVector() const;
  double Item() const;  // the single element of a one-element tensor

  std::string ShapeStr() const { return ShapeString(shape_); }
  std::string Describe() const;  // "f32[128, 784] on cpu"

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
};

}  // namespace tessera
