#include "datasets/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "datasets/dataset.h"

namespace tessera::datasets {
namespace {

// Reads the whole (possibly gzip-compressed) file.
std::vector<uint8_t> ReadAll(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) TESSERA_THROW(IoError, path, ": cannot open: ", std::strerror(errno));
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  for (;;) {
    int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      TESSERA_THROW(DataError, path, ": corrupt or truncated compressed data after ", out.size(),
                    " bytes: ", msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  // zlib reports a gzip stream cut short only through gzerror/Z_BUF_ERROR at close.
  int rc = gzclose(f);
  if (rc != Z_OK)
    TESSERA_THROW(DataError, path, ": the compressed stream ends early (truncated file) after ",
                  out.size(), " bytes");
  return out;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

IdxArray ReadIdx(const std::string& path) {
  std::vector<uint8_t> bytes = ReadAll(path);
  if (bytes.size() < 4)
    TESSERA_THROW(DataError, path, ": ", bytes.size(), " bytes is too short for an IDX header (4-byte magic expected)");
  if (bytes[0] != 0 || bytes[1] != 0)
    TESSERA_THROW(DataError, path, ": byte 0: not an IDX file (magic starts with ", int(bytes[0]), " ",
                  int(bytes[1]), ", expected 0 0)");
  if (bytes[2] != 0x08)
    TESSERA_THROW(DataError, path, ": byte 2: element type 0x", std::hex, int(bytes[2]),
                  " is not supported (expected 0x08, unsigned byte)");
  int ndim = bytes[3];
  if (ndim < 1 || ndim > 4)
    TESSERA_THROW(DataError, path, ": byte 3: ", ndim, " dimensions (expected 1 to 4)");
  size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (bytes.size() < header)
    TESSERA_THROW(DataError, path, ": truncated header: ", bytes.size(), " bytes, expected ", header,
                  " for ", ndim, " dimensions");
  IdxArray a;
  size_t count = 1;
  for (int i = 0; i < ndim; ++i) {
    uint32_t d = BigEndian32(&bytes[4 + 4 * i]);
    a.dims.push_back(d);
    count *= d;
  }
  size_t body = bytes.size() - header;
  if (body < count)
    TESSERA_THROW(DataError, path, ": truncated: byte ", bytes.size(), " ends the file but the header (",
                  ShapeString(a.dims), ") needs ", count, " data bytes after offset ", header, ", got ", body);
  if (body > count)
    TESSERA_THROW(DataError, path, ": ", body - count, " unexpected bytes after the ", count,
                  " data bytes that the header (", ShapeString(a.dims), ") describes");
  a.data.assign(bytes.begin() + header, bytes.end());
  return a;
}

namespace {

// Images [N, H, W] and labels [N] read from a pair of IDX files that agree on N.
struct IdxPair {
  IdxArray images, labels;
};

IdxPair ReadIdxPair(const std::string& images_path, const std::string& labels_path) {
  IdxPair p{ReadIdx(images_path), ReadIdx(labels_path)};
  if (p.images.dims.size() != 3)
    TESSERA_THROW(DataError, images_path, ": images must be 3-D [N, H, W], the header says ",
                  ShapeString(p.images.dims));
  if (p.labels.dims.size() != 1)
    TESSERA_THROW(DataError, labels_path, ": labels must be 1-D [N], the header says ", ShapeString(p.labels.dims));
  if (p.images.dims[0] != p.labels.dims[0])
    TESSERA_THROW(DataError, images_path, " holds ", p.images.dims[0], " images but ", labels_path, " holds ",
                  p.labels.dims[0], " labels; they must match");
  return p;
}

// Pixels as f32 times `scale`, labels as i32, and max label + 1.
ImageClassification ToTensors(const IdxPair& p, float scale) {
  int64_t n = p.images.dims[0], h = p.images.dims[1], w = p.images.dims[2];
  ImageClassification out;
  out.images = Tensor::Empty({n, 1, h, w});
  float* px = out.images.data<float>();
  for (size_t i = 0; i < p.images.data.size(); ++i) px[i] = p.images.data[i] * scale;
  out.labels = Tensor::Empty({n}, DType::kI32);
  int32_t* l = out.labels.data<int32_t>();
  int max_label = 0;
  for (int64_t i = 0; i < n; ++i) {
    l[i] = p.labels.data[i];
    max_label = std::max(max_label, static_cast<int>(p.labels.data[i]));
  }
  out.num_classes = max_label + 1;
  return out;
}

}  // namespace

ImageClassification LoadIdxImages(const std::string& images_path, const std::string& labels_path) {
  return ToTensors(ReadIdxPair(images_path, labels_path), 1.0f / 255.0f);
}

std::unique_ptr<Dataset> OpenIdx(const std::string& images_path, const std::string& labels_path) {
  ImageClassification d = ToTensors(ReadIdxPair(images_path, labels_path), 1.0f);
  if (d.images.dim(0) == 0)
    TESSERA_THROW(DataError, images_path, ": the header says 0 images; a dataset needs at least one");
  return std::make_unique<InMemoryDataset>(d.images, d.labels, d.num_classes, "idx " + images_path);
}

ImageClassification LoadFashionMnist(const std::string& dir, const std::string& split) {
  if (split != "train" && split != "t10k")
    TESSERA_THROW(ValueError, "Fashion-MNIST split must be 'train' or 't10k', got '", split, "'");
  auto file = [&](const char* kind) { return dir + "/" + split + "-" + kind + "-idx" + (kind[0] == 'i' ? "3" : "1") + "-ubyte.gz"; };
  ImageClassification d = LoadIdxImages(file("images"), file("labels"));
  d.num_classes = 10;
  return d;
}

}  // namespace tessera::datasets
