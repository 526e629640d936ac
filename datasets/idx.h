// The IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed), and image/label pairs
// read from it.
//
// IDX: a 4-byte magic (0, 0, element type, number of dimensions), one big-endian uint32 per
// dimension, then the elements in row-major order. Only unsigned bytes (type 0x08) occur in the
// MNIST family, and only those are accepted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tessera::datasets {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

// Reads a whole IDX file (gzip is detected by its magic bytes). Throws DataError naming the file,
// the byte offset and what was expected for a wrong magic, a truncated header or body, or
// trailing bytes; IoError when the file cannot be opened.
IdxArray ReadIdx(const std::string& path);

// Images [N, 1, H, W] as f32 scaled to [0, 1] and labels [N] as i32. (OpenIdx in
// datasets/dataset.h reads the same files as a Dataset with raw pixel values.)
struct ImageClassification {
  Tensor images;
  Tensor labels;
  int num_classes = 0;
};

// Reads an images file (3-D IDX) and a labels file (1-D IDX) and checks that they agree.
ImageClassification LoadIdxImages(const std::string& images_path, const std::string& labels_path);

// The Fashion-MNIST split ("train" or "t10k") in `dir`, by its standard file names.
ImageClassification LoadFashionMnist(const std::string& dir, const std::string& split);

// Where Debian's dataset-fashion-mnist package installs the files.
inline const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

}  // namespace tessera::datasets
