#include "datasets/idx.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "datasets/dataset.h"

namespace tessera::datasets {
namespace {

// A (possibly gzip-compressed) file read in order. Reads stop where the header says the data
// ends: a small file that inflates to gigabytes is never inflated past what it declares.
class GzStream {
 public:
  explicit GzStream(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {
    if (f_ == nullptr) TESSERA_THROW(IoError, path, ": cannot open: ", std::strerror(errno));
  }
  ~GzStream() {
    if (f_) gzclose(f_);
  }
  GzStream(const GzStream&) = delete;
  GzStream& operator=(const GzStream&) = delete;

  // Up to n bytes into out; fewer only at the end of the stream.
  size_t Read(uint8_t* out, size_t n) {
    size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 30));
      int r = gzread(f_, out + got, chunk);
      if (r < 0) {
        int err = 0;
        std::string msg = gzerror(f_, &err);
        TESSERA_THROW(DataError, path_, ": corrupt or truncated compressed data after ", offset_ + got, " bytes: ", msg);
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    offset_ += got;
    return got;
  }
  // The end: zlib reports a gzip stream cut short only through gzclose's status.
  void Close() {
    int rc = gzclose(f_);
    f_ = nullptr;
    if (rc != Z_OK)
      TESSERA_THROW(DataError, path_, ": the compressed stream ends early (truncated file) after ", offset_, " bytes");
  }
  size_t offset() const { return offset_; }

 private:
  std::string path_;
  gzFile f_;
  size_t offset_ = 0;
};

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// The data bytes a header's dimensions declare, refused before any allocation when they overflow
// or exceed this machine's memory (the pixels are later held again as float32: 4 bytes each).
size_t DeclaredBytes(const std::string& path, const Shape& dims) {
  uint64_t count = 1;
  bool overflow = false;
  for (int64_t d : dims) overflow |= __builtin_mul_overflow(count, static_cast<uint64_t>(d), &count);
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (overflow)
    TESSERA_THROW(DataError, path, ": the header declares ", ShapeString(dims), ": more than 2^64 bytes; not reading it");
  if (memory > 0 && 5.0 * static_cast<double>(count) > memory)
    TESSERA_THROW(DataError, path, ": the header declares ", ShapeString(dims), ", ", count, " bytes (",
                  5.0 * static_cast<double>(count) / 1e9, " GB held as bytes and float32): more than this machine's ",
                  memory / 1e9, " GB of memory; not reading it");
  return static_cast<size_t>(count);
}

}  // namespace

IdxArray ReadIdx(const std::string& path) {
  GzStream in(path);
  uint8_t head[4 + 4 * 4];
  const size_t got = in.Read(head, 4);
  if (got < 4) TESSERA_THROW(DataError, path, ": ", got, " bytes is too short for an IDX header (4-byte magic expected)");
  if (head[0] != 0 || head[1] != 0)
    TESSERA_THROW(DataError, path, ": byte 0: not an IDX file (magic starts with ", int(head[0]), " ", int(head[1]),
                  ", expected 0 0)");
  if (head[2] != 0x08)
    TESSERA_THROW(DataError, path, ": byte 2: element type 0x", std::hex, int(head[2]),
                  " is not supported (expected 0x08, unsigned byte)");
  int ndim = head[3];
  if (ndim < 1 || ndim > 4) TESSERA_THROW(DataError, path, ": byte 3: ", ndim, " dimensions (expected 1 to 4)");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (size_t more = in.Read(head + 4, header - 4); more < header - 4)
    TESSERA_THROW(DataError, path, ": truncated header: ", 4 + more, " bytes, expected ", header, " for ", ndim,
                  " dimensions");
  IdxArray a;
  for (int i = 0; i < ndim; ++i) a.dims.push_back(BigEndian32(&head[4 + 4 * i]));
  const size_t count = DeclaredBytes(path, a.dims);
  // Grown as the data arrives, not allocated from the header: a 30-byte file that declares
  // gigabytes fails as truncated having held only what it holds (found by fuzzing).
  size_t body = 0;
  while (body < count) {
    const size_t chunk = std::min<size_t>(count - body, size_t{16} << 20);
    a.data.resize(body + chunk);
    const size_t got = in.Read(a.data.data() + body, chunk);
    body += got;
    if (got < chunk) break;
  }
  a.data.resize(body);
  if (body < count)
    TESSERA_THROW(DataError, path, ": truncated: byte ", header + body, " ends the file but the header (",
                  ShapeString(a.dims), ") needs ", count, " data bytes after offset ", header, ", got ", body);
  uint8_t extra[4096];
  if (size_t n = in.Read(extra, sizeof extra); n > 0)
    TESSERA_THROW(DataError, path, ": ", n == sizeof extra ? "at least " : "", n, " unexpected bytes after the ", count,
                  " data bytes that the header (", ShapeString(a.dims), ") describes");
  in.Close();
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
