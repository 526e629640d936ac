// Datasets: examples with fixed-shape float features and an integer class label, or windows of
// token ids with the next token of each position (a language model's), and the readers that open
// them (IDX, CSV, HDF5, token files: datasets/tokens.h).
//
// A Dataset hands out examples by index into caller-allocated host tensors; what it holds in
// memory is the reader's business (IDX and CSV load everything, HDF5 reads rows on demand).
// Feature values are raw (IDX pixels are 0..255): normalisation belongs to the Loader.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tessera::datasets {

// Thread-compatible: a Dataset may be used from any thread, one thread at a time. While a Loader
// runs over a dataset, the loader's thread is the one that calls Get.
// The most classes a dataset may have: a label is an integer in [0, kMaxClasses). (Larger labels
// once wrapped the class count to a negative int.) The model's output layer is that wide.
constexpr int64_t kMaxClasses = int64_t{1} << 24;

class Dataset {
 public:
  virtual ~Dataset() = default;
  // Number of examples; indices are 0 .. size() - 1.
  virtual int64_t size() const = 0;
  // The features of one example, e.g. {1, 28, 28} for images or {13} for a table row.
  virtual Shape example_shape() const = 0;
  // Max label + 1, or the count the file declares (a token dataset: its vocabulary).
  virtual int num_classes() const = 0;
  // f32 feature values, or i32 token ids.
  virtual DType feature_dtype() const { return DType::kF32; }
  // The labels of one example: {} (one class) or {T} (a token dataset: the next token after each
  // of the T positions).
  virtual Shape label_shape() const { return {}; }
  // Copies examples `indices` (any order, repeats allowed) into `features` (feature_dtype() [n,
  // example_shape...]) and `labels` (i32 [n, label_shape...]), host tensors that the caller
  // allocates (see AllocateBatch). Throws ValueError for an index outside [0, size()), ShapeError for tensors of
  // the wrong shape, dtype or device, DataError/IoError when the underlying file fails.
  virtual void Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) = 0;
  // One line for logs: "idx /path/train-images... (60000 x [1, 28, 28], 10 classes)".
  virtual std::string Describe() const = 0;
  // The names of the feature columns, in example order, where the file has them (CSV); else empty.
  virtual std::vector<std::string> feature_names() const { return {}; }
};

// Host tensors of the right shapes and dtypes for Get of `n` examples of `dataset`.
void AllocateBatch(const Dataset& dataset, int64_t n, Tensor* features, Tensor* labels);

// Examples held in host memory: features f32 [N, ...] (N >= 1) and labels i32 or i64 [N] with
// values in [0, num_classes). Throws ShapeError / DataError when they do not fit together.
class InMemoryDataset : public Dataset {
 public:
  InMemoryDataset(Tensor features, Tensor labels, int num_classes, std::string description);
  int64_t size() const override { return size_; }
  Shape example_shape() const override { return example_shape_; }
  int num_classes() const override { return num_classes_; }
  void Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) override;
  std::string Describe() const override;
  std::vector<std::string> feature_names() const override { return feature_names_; }
  void set_feature_names(std::vector<std::string> names) { feature_names_ = std::move(names); }

  const Tensor& features() const { return features_; }
  const Tensor& labels() const { return labels_; }

 private:
  Tensor features_, labels_;  // f32 [N, ...] and i32 [N], on the host
  int64_t size_ = 0;
  Shape example_shape_;
  int num_classes_ = 0;
  std::string description_;
  std::vector<std::string> feature_names_;
};

// IDX images ([N, H, W], optionally gzip-compressed) and labels ([N]), held in memory as features
// [1, H, W] with the raw pixel values 0..255 as f32. num_classes is max label + 1. Errors as
// ReadIdx and LoadIdxImages (datasets/idx.h).
std::unique_ptr<Dataset> OpenIdx(const std::string& images_path, const std::string& labels_path);

// A CSV file with a header row; every column is numeric. `label_column` (by header name) holds
// integer class labels >= 0; every other column, in file order (or by name: see feature_order), is
// a feature: example_shape is
// {columns - 1}. Fields are separated by commas and may be surrounded by spaces; header names may
// be double-quoted; blank lines are skipped; CRLF line ends are accepted. Held in memory.
// Throws IoError when the file cannot be read, and DataError naming the file, the line (1-based,
// the header is line 1), the column and what was expected for: an empty file, a missing or
// repeated label column, a row with the wrong number of fields, a non-numeric or non-finite
// field, a negative or non-integer label, no data rows.
// `feature_order`: the training file's feature_names(); the test file's columns are then matched to
// them by name (in any order), and a column missing on either side is a DataError.
std::unique_ptr<Dataset> OpenCsv(const std::string& path, const std::string& label_column,
                                 const std::vector<std::string>& feature_order = {});

// An HDF5 file with a dataset `features_dataset` of shape [N, ...] (float of any width, or
// unsigned 8-bit integers, read as f32 with their raw values) and an integer dataset
// `labels_dataset` of shape [N] (values >= 0). Labels are read when the file is opened (they are
// small, and num_classes needs them: max label + 1, or the integer attribute `num_classes` of
// the labels dataset when present); features are read on demand, only the rows asked for (the
// requested indices are sorted, and the runs of consecutive rows, as a union of hyperslabs, are
// one read), never the whole dataset. The file stays open while the Dataset lives. Every HDF5 call holds Hdf5Mutex().
// Errors name the file and the dataset: IoError when the file cannot be opened, DataError for a
// missing dataset, a wrong rank, an N mismatch, an unsupported type, a negative label, or a read
// that fails (a corrupt file).
std::unique_ptr<Dataset> OpenHdf5(const std::string& path, const std::string& features_dataset,
                                  const std::string& labels_dataset);

namespace internal {
// Checks Get's arguments against a dataset of `size` examples of `example_shape`: every index in
// range, features `feature_dtype` [n, example_shape...] and labels i32 [n, label_shape...] on the
// host. `what` names the dataset in messages.
void CheckGetArgs(const std::string& what, int64_t size, const Shape& example_shape,
                  const std::vector<int64_t>& indices, const Tensor& features, const Tensor& labels,
                  DType feature_dtype = DType::kF32, const Shape& label_shape = {});
}  // namespace internal

}  // namespace tessera::datasets
