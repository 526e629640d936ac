#include "datasets/idx.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "datasets/dataset.h"
#include "tests/datasets/test_util.h"

namespace tessera::datasets {
namespace {

using testing::ScratchDir;
using testing::ThrownMessage;

// The bytes of an IDX file: magic 0 0 type ndim, big-endian dims, then `data`.
std::vector<uint8_t> IdxBytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data,
                              uint8_t type = 0x08) {
  std::vector<uint8_t> b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(d >> shift));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void WritePlain(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  ASSERT_EQ(std::fclose(f), 0);
}

void WriteGzip(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::vector<uint8_t> out;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  int c;
  while ((c = std::fgetc(f)) != EOF) out.push_back(static_cast<uint8_t>(c));
  std::fclose(f);
  return out;
}

// Three 2 x 3 images with pixel (n, y, x) = 10 * n + 3 * y + x + 200 * (n == 2), labels 2, 0, 1.
std::vector<uint8_t> Pixels() {
  std::vector<uint8_t> p;
  for (int n = 0; n < 3; ++n)
    for (int k = 0; k < 6; ++k) p.push_back(static_cast<uint8_t>(10 * n + k + (n == 2 ? 200 : 0)));
  return p;
}
const std::vector<uint8_t> kLabels = {2, 0, 1};

class IdxTest : public ::testing::Test {
 protected:
  ScratchDir dir_;
  std::string images_ = dir_.File("images-idx3-ubyte.gz"), labels_ = dir_.File("labels-idx1-ubyte.gz");
};

TEST_F(IdxTest, GzippedFilesReadBackAsRawPixels) {
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels()));
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::unique_ptr<Dataset> d = OpenIdx(images_, labels_);
  EXPECT_EQ(d->size(), 3);
  EXPECT_EQ(d->example_shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(d->num_classes(), 3);
  EXPECT_EQ(d->Describe(), "idx " + images_ + " (3 x [1, 2, 3], 3 classes)");

  Tensor f, l;
  AllocateBatch(*d, 3, &f, &l);
  d->Get({2, 0, 2}, f, l);
  std::vector<double> fv = f.ToVector(), lv = l.ToVector();
  const std::vector<uint8_t> px = Pixels();
  int order[] = {2, 0, 2};
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 6; ++k) EXPECT_EQ(fv[i * 6 + k], px[order[i] * 6 + k]) << i << " " << k;
    EXPECT_EQ(lv[i], kLabels[order[i]]);
  }
  EXPECT_EQ(fv[0], 220.0);  // raw, not scaled to [0, 1]
}

TEST_F(IdxTest, LoadIdxImagesStillScalesAndReadsUncompressed) {
  std::string images = dir_.File("plain-images"), labels = dir_.File("plain-labels");
  WritePlain(images, IdxBytes({3, 2, 3}, Pixels()));
  WritePlain(labels, IdxBytes({3}, kLabels));
  ImageClassification d = LoadIdxImages(images, labels);
  EXPECT_EQ(d.images.shape(), (Shape{3, 1, 2, 3}));
  EXPECT_EQ(d.num_classes, 3);
  EXPECT_FLOAT_EQ(d.images.ToVector()[7], 11.0f / 255.0f);  // image 1, pixel 1
  EXPECT_FLOAT_EQ(d.images.ToVector()[13], 221.0f / 255.0f);
  EXPECT_EQ(d.labels.ToVector(), (std::vector<double>{2, 0, 1}));
}

TEST_F(IdxTest, TruncatedBodyNamesFileAndExpectedSize) {
  std::vector<uint8_t> bytes = IdxBytes({3, 2, 3}, Pixels());
  bytes.resize(bytes.size() - 5);
  WriteGzip(images_, bytes);
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_);
  EXPECT_CONTAINS(msg, "truncated");
  EXPECT_CONTAINS(msg, "needs 18 data bytes");
  EXPECT_CONTAINS(msg, "got 13");
}

// A 4 MB gzip file once inflated whole to 4.3 GB before its header was looked at. The reader now
// stops where the header says the data ends: 256 MB of zeros after 18 declared bytes are refused
// with a bounded read, and the process's peak memory does not grow by the inflated size.
TEST_F(IdxTest, DataBeyondTheHeaderIsNeverInflated) {
  {
    gzFile f = gzopen(images_.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::vector<uint8_t> head = IdxBytes({3, 2, 3}, Pixels());
    ASSERT_EQ(gzwrite(f, head.data(), static_cast<unsigned>(head.size())), static_cast<int>(head.size()));
    std::vector<uint8_t> zeros(1 << 20, 0);
    for (int i = 0; i < 256; ++i) ASSERT_EQ(gzwrite(f, zeros.data(), 1u << 20), 1 << 20);
    ASSERT_EQ(gzclose(f), Z_OK);
  }
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  struct rusage before {};
  getrusage(RUSAGE_SELF, &before);
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  struct rusage after {};
  getrusage(RUSAGE_SELF, &after);
  EXPECT_CONTAINS(msg, images_ + ": at least 4096 unexpected bytes after the 18 data bytes that the header ([3, 2, 3])");
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 << 10) << "KiB of peak RSS growth";
}

// A 10-byte file declaring 200 MB of labels (found by fuzzing) once had them allocated up front: it
// is truncated, and reading it holds no more than what it holds.
TEST_F(IdxTest, DeclaredSizeIsNotAllocatedBeforeTheDataArrives) {
  WritePlain(labels_, IdxBytes({200000000u}, {1, 2}));
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels()));
  struct rusage before {};
  getrusage(RUSAGE_SELF, &before);
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  struct rusage after {};
  getrusage(RUSAGE_SELF, &after);
  EXPECT_CONTAINS(msg, labels_ + ": truncated: byte 10 ends the file but the header ([200000000]) needs 200000000");
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 << 10) << "KiB of peak RSS growth";
}

// A header that declares more than the machine holds is refused before anything is allocated.
TEST_F(IdxTest, HeaderDeclaringMoreThanMemoryIsRefused) {
  WriteGzip(images_, IdxBytes({4000000000u, 1000000u, 1000000u}, {}));
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_ + ": the header declares [4000000000, 1000000, 1000000]: more than 2^64 bytes");
  WriteGzip(images_, IdxBytes({400000u, 100000u, 100000u}, {}));
  msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, "4000000000000000 bytes");
  EXPECT_CONTAINS(msg, "more than this machine's");
}

TEST_F(IdxTest, TruncatedCompressedStreamNamesFile) {
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels()));
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::vector<uint8_t> gz = ReadBytes(images_);
  ASSERT_GT(gz.size(), 20u);
  gz.resize(gz.size() - 12);  // cuts the CRC and length trailer and some data
  WritePlain(images_, gz);
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_);
  EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("corrupt") != std::string::npos) << msg;
}

TEST_F(IdxTest, WrongMagicNamesFileAndExpectedBytes) {
  std::vector<uint8_t> bytes = IdxBytes({3, 2, 3}, Pixels());
  bytes[0] = 0x1f;
  bytes[1] = 0x42;
  WritePlain(images_, bytes);
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_);
  EXPECT_CONTAINS(msg, "not an IDX file");
  EXPECT_CONTAINS(msg, "expected 0 0");
}

TEST_F(IdxTest, WrongElementTypeNamesExpectedType) {
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels(), 0x0D));
  WriteGzip(labels_, IdxBytes({3}, kLabels));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_);
  EXPECT_CONTAINS(msg, "expected 0x08");
}

TEST_F(IdxTest, ImageLabelCountMismatchNamesBothFiles) {
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels()));
  WriteGzip(labels_, IdxBytes({2}, {0, 1}));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, images_ + " holds 3 images");
  EXPECT_CONTAINS(msg, labels_ + " holds 2 labels");
  EXPECT_CONTAINS(msg, "must match");
}

TEST_F(IdxTest, LabelsOfWrongRankAreRejected) {
  WriteGzip(images_, IdxBytes({3, 2, 3}, Pixels()));
  WriteGzip(labels_, IdxBytes({3, 1}, kLabels));
  std::string msg = ThrownMessage<DataError>([&] { OpenIdx(images_, labels_); });
  EXPECT_CONTAINS(msg, labels_);
  EXPECT_CONTAINS(msg, "labels must be 1-D [N]");
}

TEST_F(IdxTest, MissingFileIsAnIoError) {
  std::string msg = ThrownMessage<IoError>([&] { OpenIdx(dir_.File("nope"), labels_); });
  EXPECT_CONTAINS(msg, dir_.File("nope"));
  EXPECT_CONTAINS(msg, "cannot open");
}

}  // namespace
}  // namespace tessera::datasets
