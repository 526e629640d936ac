#include "datasets/dataset.h"

#include <cstring>
#include <utility>

namespace tessera::datasets {

void AllocateBatch(const Dataset& dataset, int64_t n, Tensor* features, Tensor* labels) {
  Shape shape = dataset.example_shape();
  shape.insert(shape.begin(), n);
  *features = Tensor::Empty(shape, dataset.feature_dtype());
  Shape label_shape = dataset.label_shape();
  label_shape.insert(label_shape.begin(), n);
  *labels = Tensor::Empty(label_shape, DType::kI32);
}

namespace internal {

void CheckGetArgs(const std::string& what, int64_t size, const Shape& example_shape,
                  const std::vector<int64_t>& indices, const Tensor& features, const Tensor& labels,
                  DType feature_dtype, const Shape& label_shape) {
  const int64_t n = static_cast<int64_t>(indices.size());
  Shape want = example_shape, want_labels = label_shape;
  want.insert(want.begin(), n);
  want_labels.insert(want_labels.begin(), n);
  if (!features.defined() || features.dtype() != feature_dtype || !features.device().is_cpu() || features.shape() != want)
    TESSERA_THROW(ShapeError, what, ": Get of ", n, " examples needs host features ", DTypeName(feature_dtype),
                  ShapeString(want), ", got ", features.defined() ? features.Describe() : std::string("an undefined tensor"));
  if (!labels.defined() || labels.dtype() != DType::kI32 || !labels.device().is_cpu() || labels.shape() != want_labels)
    TESSERA_THROW(ShapeError, what, ": Get of ", n, " examples needs host labels i32", ShapeString(want_labels),
                  ", got ", labels.defined() ? labels.Describe() : std::string("an undefined tensor"));
  for (size_t i = 0; i < indices.size(); ++i)
    if (indices[i] < 0 || indices[i] >= size)
      TESSERA_THROW(ValueError, what, ": index ", indices[i], " (position ", i, " of the request) is outside [0, ",
                    size, ")");
}

}  // namespace internal

InMemoryDataset::InMemoryDataset(Tensor features, Tensor labels, int num_classes, std::string description)
    : num_classes_(num_classes), description_(std::move(description)) {
  if (!features.defined() || features.ndim() < 2 || features.dtype() != DType::kF32)
    TESSERA_THROW(ShapeError, description_, ": features must be f32 [N, ...] with at least 2 dimensions, got ",
                  features.defined() ? features.Describe() : std::string("an undefined tensor"));
  if (!labels.defined() || labels.ndim() != 1 || (labels.dtype() != DType::kI32 && labels.dtype() != DType::kI64))
    TESSERA_THROW(ShapeError, description_, ": labels must be i32 or i64 [N], got ",
                  labels.defined() ? labels.Describe() : std::string("an undefined tensor"));
  size_ = features.dim(0);
  if (size_ < 1) TESSERA_THROW(DataError, description_, ": no examples (features ", features.Describe(), ")");
  if (labels.dim(0) != size_)
    TESSERA_THROW(ShapeError, description_, ": ", size_, " examples of features but ", labels.dim(0), " labels");
  if (num_classes < 1) TESSERA_THROW(ValueError, description_, ": num_classes must be >= 1, got ", num_classes);
  example_shape_.assign(features.shape().begin() + 1, features.shape().end());
  features_ = features.device().is_cpu() ? features : features.To(Device::CPU());
  labels_ = labels.dtype() == DType::kI32 ? labels : labels.Cast(DType::kI32);
  if (!labels_.device().is_cpu()) labels_ = labels_.To(Device::CPU());
  const int32_t* l = labels_.data<int32_t>();
  for (int64_t i = 0; i < size_; ++i)
    if (l[i] < 0 || l[i] >= num_classes)
      TESSERA_THROW(DataError, description_, ": label ", l[i], " of example ", i, " is outside [0, ", num_classes, ")");
}

void InMemoryDataset::Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) {
  internal::CheckGetArgs(description_, size_, example_shape_, indices, features, labels);
  const int64_t row = NumElements(example_shape_);
  const float* src = features_.data<float>();
  const int32_t* lsrc = labels_.data<int32_t>();
  float* dst = features.data<float>();
  int32_t* ldst = labels.data<int32_t>();
  for (size_t i = 0; i < indices.size(); ++i) {
    std::memcpy(dst + i * row, src + indices[i] * row, row * sizeof(float));
    ldst[i] = lsrc[indices[i]];
  }
}

std::string InMemoryDataset::Describe() const {
  return detail::StrCat(description_, " (", size_, " x ", ShapeString(example_shape_), ", ", num_classes_, " classes)");
}

}  // namespace tessera::datasets
