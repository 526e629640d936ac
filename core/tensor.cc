#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/allocator.h"
#include "core/ops/kernels.h"

namespace tessera {

std::string ShapeString(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) TESSERA_THROW(ShapeError, "negative dimension in shape ", ShapeString(shape));
    n *= d;
  }
  return n;
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  data_ = GetAllocator(device).Allocate(bytes);
}

Storage::~Storage() { GetAllocator(device_).Free(data_, bytes_); }

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = NumElements(shape);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  t.Fill(0.0);
  return t;
}

Tensor Tensor::Full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  t.Fill(value);
  return t;
}

Tensor Tensor::FromVector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  if (NumElements(shape) != static_cast<int64_t>(values.size()))
    TESSERA_THROW(ShapeError, "FromVector: ", values.size(), " values do not fill shape ",
                  ShapeString(shape));
  Tensor f64 = Empty(shape, DType::kF64);
  if (!values.empty()) std::memcpy(f64.raw_data(), values.data(), values.size() * sizeof(double));  // data() may be null
  return dtype == DType::kF64 ? f64 : f64.Cast(dtype);
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    TESSERA_THROW(ShapeError, "dimension ", i, " out of range for shape ", ShapeStr());
  return shape_[j];
}

void* Tensor::raw_data() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(SizeOf(dtype_));
}

Tensor Tensor::View(int64_t offset, const Shape& shape) const {
  int64_t n = NumElements(shape);
  if (offset < 0 || offset + n > numel_)
    TESSERA_THROW(ShapeError, "View: ", n, " elements at offset ", offset,
                  " do not fit in a tensor of shape ", ShapeStr());
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.shape_ = shape;
  t.numel_ = n;
  return t;
}

Tensor Tensor::Reshape(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0) TESSERA_THROW(ShapeError, "Reshape: more than one -1 in ", ShapeString(shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel_ % known != 0)
      TESSERA_THROW(ShapeError, "Reshape: cannot reshape ", ShapeStr(), " to ", ShapeString(shape));
    s[infer] = numel_ / known;
  }
  if (NumElements(s) != numel_)
    TESSERA_THROW(ShapeError, "Reshape: cannot reshape ", ShapeStr(), " (", numel_,
                  " elements) to ", ShapeString(shape));
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::Slice0(int64_t begin, int64_t end) const {
  if (ndim() == 0 || begin < 0 || end < begin || end > shape_[0])
    TESSERA_THROW(ShapeError, "Slice0: rows [", begin, ", ", end, ") out of range for shape ",
                  ShapeStr());
  int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  Shape s = shape_;
  s[0] = end - begin;
  return View(begin * row, s);
}

Tensor Tensor::Clone() const { return To(device()); }

Tensor Tensor::To(Device device) const {
  Tensor t = Empty(shape_, dtype_, device);
  t.CopyFrom(*this);
  return t;
}

Tensor Tensor::Cast(DType dtype) const {
  Tensor t = Empty(shape_, dtype, device());
  if (dtype == dtype_) {
    t.CopyFrom(*this);
  } else {
    KernelsFor(device()).cast(t, *this);
  }
  return t;
}

void Tensor::CopyFrom(const Tensor& src) {
  if (src.numel() != numel_ || src.dtype() != dtype_)
    TESSERA_THROW(ShapeError, "CopyFrom: cannot copy ", src.Describe(), " into ", Describe());
  if (numel_ == 0) return;
  Device d = device().is_cuda() ? device() : src.device();
  KernelsFor(d).copy(*this, src);
}

void Tensor::Fill(double value) {
  if (numel_ == 0) return;
  KernelsFor(device()).fill(*this, value);
}

std::vector<double> Tensor::ToVector() const {
  Tensor host = device().is_cpu() ? *this : To(Device::CPU());
  std::vector<double> out(static_cast<size_t>(numel_));
  switch (dtype_) {
    case DType::kF64:
      if (numel_ > 0) std::memcpy(out.data(), host.raw_data(), nbytes());
      break;
    case DType::kF32: {
      const float* p = host.data<float>();
      for (int64_t i = 0; i < numel_; ++i) out[i] = p[i];
      break;
    }
    case DType::kBF16: {
      const uint16_t* p = static_cast<const uint16_t*>(host.raw_data());
      for (int64_t i = 0; i < numel_; ++i) out[i] = BF16ToFloat(p[i]);
      break;
    }
    case DType::kF16: {
      const uint16_t* p = static_cast<const uint16_t*>(host.raw_data());
      for (int64_t i = 0; i < numel_; ++i) out[i] = HalfToFloat(p[i]);
      break;
    }
    case DType::kI32: {
      const int32_t* p = host.data<int32_t>();
      for (int64_t i = 0; i < numel_; ++i) out[i] = p[i];
      break;
    }
    case DType::kI64: {
      const int64_t* p = host.data<int64_t>();
      for (int64_t i = 0; i < numel_; ++i) out[i] = static_cast<double>(p[i]);
      break;
    }
    case DType::kI8: {
      const int8_t* p = host.data<int8_t>();
      for (int64_t i = 0; i < numel_; ++i) out[i] = p[i];
      break;
    }
  }
  return out;
}

double Tensor::Item() const {
  if (numel_ != 1) TESSERA_THROW(ShapeError, "Item: tensor of shape ", ShapeStr(), " is not one element");
  return ToVector()[0];
}

std::string Tensor::Describe() const {
  return detail::StrCat(DTypeName(dtype_), ShapeStr(), " on ", device().str());
}

}  // namespace tessera
