#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "core/io/hdf5.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "datasets/sampler.h"
#include "tests/datasets/test_util.h"

namespace tessera::datasets {
namespace {
using io::Hdf5Handle;
using io::Hdf5Lock;

using testing::ScratchDir;
using testing::ThrownMessage;

// Writes HDF5 files through the C API, every call checked, under the HDF5 lock.
class Hdf5Writer {
 public:
  explicit Hdf5Writer(const std::string& path) : path_(path) {
    file_ = Hdf5Handle(
        TESSERA_H5_CHECK(IoError, H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), path), H5Fclose);
  }
  ~Hdf5Writer() { EXPECT_GE(file_.Close(), 0) << path_; }
  hid_t file() const { return file_.get(); }

  // Dataset `name` of `dims`, stored as `file_type`, from `data` of `mem_type`. With chunk_rows > 0,
  // chunked by that many rows and deflate-compressed.
  void Write(const std::string& name, hid_t file_type, hid_t mem_type, const std::vector<hsize_t>& dims,
             const void* data, hsize_t chunk_rows = 0) {
    Hdf5Handle space(
        TESSERA_H5_CHECK(IoError, H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), path_),
        H5Sclose);
    Hdf5Handle dcpl(TESSERA_H5_CHECK(IoError, H5Pcreate(H5P_DATASET_CREATE), path_), H5Pclose);
    if (chunk_rows > 0) {
      std::vector<hsize_t> chunk = dims;
      chunk[0] = chunk_rows;
      TESSERA_H5_CHECK(IoError, H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), path_);
      TESSERA_H5_CHECK(IoError, H5Pset_deflate(dcpl.get(), 6), path_);
    }
    Hdf5Handle lcpl(TESSERA_H5_CHECK(IoError, H5Pcreate(H5P_LINK_CREATE), path_), H5Pclose);
    TESSERA_H5_CHECK(IoError, H5Pset_create_intermediate_group(lcpl.get(), 1), path_);
    Hdf5Handle d(
        TESSERA_H5_CHECK(
            IoError, H5Dcreate2(file_.get(), name.c_str(), file_type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT),
            path_),
        H5Dclose);
    TESSERA_H5_CHECK(IoError, H5Dwrite(d.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path_);
  }

  void IntAttribute(const std::string& dataset, const std::string& name, int64_t value) {
    Hdf5Handle d(TESSERA_H5_CHECK(IoError, H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT), path_), H5Dclose);
    Hdf5Handle space(TESSERA_H5_CHECK(IoError, H5Screate(H5S_SCALAR), path_), H5Sclose);
    Hdf5Handle a(
        TESSERA_H5_CHECK(
            IoError, H5Acreate2(d.get(), name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), path_),
        H5Aclose);
    TESSERA_H5_CHECK(IoError, H5Awrite(a.get(), H5T_NATIVE_INT64, &value), path_);
  }

 private:
  Hdf5Lock lock_;  // declared first: held while the handles close
  std::string path_;
  Hdf5Handle file_;
};

constexpr int64_t kN = 7;
// Feature (n, c, x) of the [7, 2, 3] dataset.
float Feature(int64_t n, int64_t k) { return static_cast<float>(100 * n + k) + 0.25f; }
int32_t Label(int64_t n) { return static_cast<int32_t>((n * 3) % 4); }

std::vector<float> Features() {
  std::vector<float> f;
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t k = 0; k < 6; ++k) f.push_back(Feature(n, k));
  return f;
}
std::vector<int64_t> Labels() {
  std::vector<int64_t> l;
  for (int64_t n = 0; n < kN; ++n) l.push_back(Label(n));
  return l;
}

class Hdf5Test : public ::testing::Test {
 protected:
  // A file with float features [7, 2, 3] (chunked by one row and compressed when `chunked`), and
  // int64 labels [7] stored as 16-bit integers.
  std::string WriteGood(bool chunked = false) {
    std::vector<float> f = Features();
    std::vector<int64_t> l = Labels();
    Hdf5Writer w(path_);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN, 2, 3}, f.data(), chunked ? 1 : 0);
    w.Write("labels", H5T_STD_U16LE, H5T_NATIVE_INT64, {kN}, l.data());
    return path_;
  }
  void ExpectRows(Dataset& d, const std::vector<int64_t>& rows) {
    Tensor f, l;
    AllocateBatch(d, static_cast<int64_t>(rows.size()), &f, &l);
    d.Get(rows, f, l);
    std::vector<double> fv = f.ToVector(), lv = l.ToVector();
    for (size_t i = 0; i < rows.size(); ++i) {
      for (int64_t k = 0; k < 6; ++k) EXPECT_EQ(fv[i * 6 + k], Feature(rows[i], k)) << "row " << rows[i];
      EXPECT_EQ(lv[i], Label(rows[i])) << "row " << rows[i];
    }
  }

  ScratchDir dir_;
  std::string path_ = dir_.File("data.h5");
};

TEST_F(Hdf5Test, ReadsScrambledRowsOnDemand) {
  std::unique_ptr<Dataset> d = OpenHdf5(WriteGood(), "features", "labels");
  EXPECT_EQ(d->size(), kN);
  EXPECT_EQ(d->example_shape(), (Shape{2, 3}));
  EXPECT_EQ(d->num_classes(), 4);
  EXPECT_EQ(d->Describe(), "hdf5 " + path_ + ":features (7 x [2, 3], 4 classes)");
  // Runs of consecutive rows, a repeat, out of order.
  ExpectRows(*d, {5, 0, 3, 3, 1, 6, 2, 4});
  ExpectRows(*d, {6, 1, 4, 4, 2});  // runs [1, 3), 4, 6
  ExpectRows(*d, {6});
  ExpectRows(*d, {});
}

TEST_F(Hdf5Test, Uint8FeaturesNestedPathsAndDeclaredClassCount) {
  std::vector<uint8_t> f = {0, 255, 7, 8, 9, 10};
  std::vector<int32_t> l = {1, 0, 1};
  {
    Hdf5Writer w(path_);
    w.Write("/train/x", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3, 2}, f.data());
    w.Write("/train/y", H5T_STD_I32LE, H5T_NATIVE_INT32, {3}, l.data());
    w.IntAttribute("/train/y", "num_classes", 10);
  }
  std::unique_ptr<Dataset> d = OpenHdf5(path_, "/train/x", "train/y");
  EXPECT_EQ(d->num_classes(), 10);
  EXPECT_EQ(d->example_shape(), (Shape{2}));
  Tensor ft, lt;
  AllocateBatch(*d, 2, &ft, &lt);
  d->Get({2, 0}, ft, lt);
  EXPECT_EQ(ft.ToVector(), (std::vector<double>{9, 10, 0, 255}));  // raw values, not scaled
  EXPECT_EQ(lt.ToVector(), (std::vector<double>{1, 1}));
}

TEST_F(Hdf5Test, MissingDatasetNamesFileDatasetAndContents) {
  WriteGood();
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "images", "labels"); });
  EXPECT_CONTAINS(msg, path_);
  EXPECT_CONTAINS(msg, "no dataset 'images'");
  EXPECT_CONTAINS(msg, "'features', 'labels'");
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "/nope/labels"); });
  EXPECT_CONTAINS(msg, path_);
  EXPECT_CONTAINS(msg, "no dataset '/nope/labels'");
}

TEST_F(Hdf5Test, WrongRankMismatchAndTypeAreNamed) {
  std::vector<float> f = Features();
  std::vector<int64_t> l = Labels();
  std::vector<int32_t> ints(kN * 6, 1);
  {
    Hdf5Writer w(path_);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN, 2, 3}, f.data());
    w.Write("flat", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN * 6}, f.data());
    w.Write("ints", H5T_STD_I32LE, H5T_NATIVE_INT32, {kN, 6}, ints.data());
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN}, l.data());
    w.Write("labels2d", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN, 1}, l.data());
    w.Write("short_labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN - 1}, l.data());
    w.Write("float_labels", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN}, f.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels2d"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'labels2d': rank 2");
  EXPECT_CONTAINS(msg, "expected 1 dimension [N]");
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "flat", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'flat': rank 1");
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "short_labels"); });
  EXPECT_CONTAINS(msg, path_);
  EXPECT_CONTAINS(msg, "'short_labels' holds 6 labels but dataset 'features' holds 7 examples");
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "ints", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'ints': unsupported type signed integer of 4 bytes");
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "float_labels"); });
  EXPECT_CONTAINS(msg, "dataset 'float_labels': unsupported type float of 4 bytes");
}

TEST_F(Hdf5Test, NegativeLabelIsRejected) {
  std::vector<float> f = Features();
  std::vector<int64_t> l = Labels();
  l[4] = -2;
  {
    Hdf5Writer w(path_);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN, 2, 3}, f.data());
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN}, l.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'labels': label -2 at row 4");
  // 2^31 - 1 once made num_classes INT_MIN, slipping past the class-count check.
  l[4] = 2147483647;
  {
    Hdf5Writer w(path_);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN, 2, 3}, f.data());
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN}, l.data());
  }
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, "label 2147483647 at row 4; expected a class label: an integer in [0, 16777216)");
}

// NaN features once trained silently into NaN weights; the rows around them still read.
TEST_F(Hdf5Test, NonFiniteFeatureIsADataErrorNamingTheExample) {
  std::vector<float> f = Features();
  f[5 * 6 + 4] = std::numeric_limits<float>::quiet_NaN();
  {
    Hdf5Writer w(path_);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {kN, 2, 3}, f.data());
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {kN}, Labels().data());
  }
  std::unique_ptr<Dataset> d = OpenHdf5(path_, "features", "labels");
  std::string msg = ThrownMessage<DataError>([&] {
    Tensor x, y;
    AllocateBatch(*d, 2, &x, &y);
    d->Get({2, 5}, x, y);
  });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features': example 5 holds nan at position 4 of 6");
  ExpectRows(*d, {4, 6, 0});
}

// Training data opens without HDF5's file locking, as checkpoints do (flock fails on NFS and Lustre
// mounted without it): a file another process holds an exclusive flock on still reads.
TEST_F(Hdf5Test, OpensWithoutFileLocking) {
  const std::string path = WriteGood();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  std::unique_ptr<Dataset> d = OpenHdf5(path, "features", "labels");  // with locking: "unable to lock file"
  ExpectRows(*d, {1, 3});
  close(fd);
}

// HDF5 opens a dataset of any shape (rows are read on demand): one example of 2^31 values (found
// by fuzzing, as 0x600000000000000 bytes for a batch) is refused before a batch is allocated.
TEST_F(Hdf5Test, HugeExampleShapeIsRefusedBeforeAllocating) {
  {
    Hdf5Writer w(path_);
    hsize_t dims[3] = {2, 1u << 16, 1u << 15}, maxdims[3] = {2, 1u << 16, 1u << 15}, chunk[3] = {1, 1, 64};
    Hdf5Handle space(H5Screate_simple(3, dims, maxdims), H5Sclose);
    Hdf5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(dcpl.get(), 3, chunk);
    Hdf5Handle d(H5Dcreate2(w.file(), "features", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                 H5Dclose);
    ASSERT_GE(d.get(), 0);
    std::vector<int64_t> l = {0, 1};
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, l.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, "dataset 'features': shape [2, 65536, 32768]: examples of [65536, 32768] are more than 268435456 values");
}

// Sets the size that the chunk index records for the chunk holding row `row` of a chunked
// dataset of rank `rank` to 0xFFFFFFFF, as a fuzzed file did. The default (earliest) format
// indexes chunks with a version 1 B-tree, whose keys are {u32 size, u32 filter mask,
// u64 offset per dimension and one more} and precede the address of the chunk they describe.
void CorruptChunkIndexSize(const std::string& path, const std::string& name, hsize_t row, int rank) {
  haddr_t addr = 0;
  hsize_t size = 0;
  {
    Hdf5Lock lock;
    Hdf5Handle file(TESSERA_H5_CHECK(IoError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path), H5Fclose);
    Hdf5Handle d(TESSERA_H5_CHECK(IoError, H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), path), H5Dclose);
    std::vector<hsize_t> offset(rank, 0);
    offset[0] = row;
    unsigned mask = 0;
    TESSERA_H5_CHECK(IoError, H5Dget_chunk_info_by_coord(d.get(), offset.data(), &mask, &addr, &size), path);
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t key = 8 + 8 * (rank + 1);
  size_t at = std::string::npos;
  for (size_t pos = key; pos + 8 <= bytes.size(); ++pos) {
    uint64_t a = 0;
    uint32_t s = 0;
    std::memcpy(&a, bytes.data() + pos, 8);
    std::memcpy(&s, bytes.data() + pos - key, 4);
    if (a == addr && s == size) at = pos - key;
  }
  ASSERT_NE(at, std::string::npos) << "no B-tree key for the chunk at " << addr << " of " << size << " bytes";
  std::memset(bytes.data() + at, 0xFF, 4);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST_F(Hdf5Test, ChunkIndexClaimingMoreThanTheFileIsRefusedBeforeReading) {
  WriteGood(/*chunked=*/true);
  CorruptChunkIndexSize(path_, "features", 4, 3);
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features': its storage index records 42949");
  EXPECT_CONTAINS(msg, "the file is damaged");
}

// HDF5's API never makes an extent larger than its maximum, so this patches one into the file: the
// default (earliest) format's version 1 dataspace message, which has no checksum, stores the
// dimensions and then the maxima as 64-bit integers.
TEST_F(Hdf5Test, AnExtentPastItsDeclaredMaximumIsRefused) {
  {
    Hdf5Writer w(path_);
    hsize_t dims[2] = {2, 4}, maxdims[2] = {2, 8}, chunk[2] = {1, 4};
    Hdf5Handle space(H5Screate_simple(2, dims, maxdims), H5Sclose);
    Hdf5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    ASSERT_GE(H5Pset_chunk(dcpl.get(), 2, chunk), 0);
    Hdf5Handle d(H5Dcreate2(w.file(), "features", H5T_STD_U8LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                 H5Dclose);
    ASSERT_GE(d.get(), 0);
    std::vector<int64_t> l = {0, 1};
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, l.data());
  }
  std::unique_ptr<Dataset> good = OpenHdf5(path_, "features", "labels");
  EXPECT_EQ(good->size(), 2);
  good.reset();
  std::ifstream in(path_, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const uint64_t extent[4] = {2, 4, 2, 8};
  const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(extent), sizeof extent));
  ASSERT_NE(at, std::string::npos);
  const uint64_t wide = 1 << 18;
  std::memcpy(bytes.data() + at + 8, &wide, 8);
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features': dimension 1 is 262144 but its declared maximum is 8; the file is damaged");
}

// libhdf5 allocates conversion buffers by element size (a fuzzed label type of 4 GB per integer).
TEST_F(Hdf5Test, ElementsWiderThanAnyNumberAreRefused) {
  {
    Hdf5Writer w(path_);
    std::vector<float> f(8, 1.0f);
    w.Write("features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {2, 4}, f.data());
    Hdf5Handle wide(H5Tcopy(H5T_STD_I64LE), H5Tclose);
    ASSERT_GE(H5Tset_size(wide.get(), 32), 0);
    std::vector<int64_t> l = {0, 1};
    w.Write("labels", wide.get(), H5T_NATIVE_INT64, {2}, l.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'labels': elements of 32 bytes; tessera reads numbers of 1 to 16 bytes");
}

TEST_F(Hdf5Test, HugeChunksAreRefused) {
  {
    Hdf5Writer w(path_);
    hsize_t dims[2] = {2, 4}, maxdims[2] = {H5S_UNLIMITED, 4}, chunk[2] = {hsize_t{1} << 27, 4};
    Hdf5Handle space(H5Screate_simple(2, dims, maxdims), H5Sclose);
    Hdf5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    ASSERT_GE(H5Pset_chunk(dcpl.get(), 2, chunk), 0);
    Hdf5Handle d(H5Dcreate2(w.file(), "features", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                 H5Dclose);
    ASSERT_GE(d.get(), 0);
    std::vector<int64_t> l = {0, 1};
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, l.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, "dataset 'features': chunks of [134217728, 4] are more than 1073741824 bytes each");
}

TEST_F(Hdf5Test, ExternalStorageIsRefused) {
  const std::string raw = dir_.File("raw.bin");
  std::ofstream(raw, std::ios::binary) << std::string(2 * 4 * 4, '\0');
  {
    Hdf5Writer w(path_);
    hsize_t dims[2] = {2, 4};
    Hdf5Handle space(H5Screate_simple(2, dims, nullptr), H5Sclose);
    Hdf5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    ASSERT_GE(H5Pset_external(dcpl.get(), raw.c_str(), 0, 2 * 4 * 4), 0);
    Hdf5Handle d(H5Dcreate2(w.file(), "features", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                 H5Dclose);
    ASSERT_GE(d.get(), 0);
    std::vector<int64_t> l = {0, 1};
    w.Write("labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, l.data());
  }
  std::string msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features': its data is stored in external files");
}

TEST_F(Hdf5Test, MissingAndNonHdf5Files) {
  std::string msg = ThrownMessage<IoError>([&] { OpenHdf5(dir_.File("none.h5"), "features", "labels"); });
  EXPECT_CONTAINS(msg, dir_.File("none.h5"));
  std::ofstream(path_) << "not hdf5 at all\n";
  msg = ThrownMessage<DataError>([&] { OpenHdf5(path_, "features", "labels"); });
  EXPECT_CONTAINS(msg, path_ + ": not an HDF5 file");
}

// Overwrites the start of the compressed chunk that holds row `row` of dataset `name`.
void CorruptChunk(const std::string& path, const std::string& name, hsize_t row) {
  haddr_t addr = 0;
  hsize_t size = 0;
  {
    Hdf5Lock lock;
    Hdf5Handle file(TESSERA_H5_CHECK(IoError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path), H5Fclose);
    Hdf5Handle d(TESSERA_H5_CHECK(IoError, H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), path), H5Dclose);
    hsize_t offset[3] = {row, 0, 0};
    unsigned mask = 0;
    TESSERA_H5_CHECK(IoError, H5Dget_chunk_info_by_coord(d.get(), offset, &mask, &addr, &size), path);
  }
  ASSERT_GT(size, 2u);
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fseek(f, static_cast<long>(addr), SEEK_SET), 0);
  const unsigned char junk[2] = {0xFF, 0xFF};  // not a zlib header
  ASSERT_EQ(std::fwrite(junk, 1, 2, f), 2u);
  ASSERT_EQ(std::fclose(f), 0);
}

TEST_F(Hdf5Test, CorruptRowIsADataErrorAndOtherRowsAreNeverRead) {
  WriteGood(/*chunked=*/true);
  CorruptChunk(path_, "features", 3);
  std::unique_ptr<Dataset> d = OpenHdf5(path_, "features", "labels");
  // Only the rows asked for are read: every row but 3 still loads.
  ExpectRows(*d, {6, 0, 2, 1, 4, 5});
  Tensor f, l;
  AllocateBatch(*d, 3, &f, &l);
  std::string msg = ThrownMessage<DataError>([&] { d->Get({5, 3, 4}, f, l); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features', rows [3, 6)");
  EXPECT_CONTAINS(msg, ": H5Dread failed: ");
  msg = ThrownMessage<DataError>([&] { d->Get({5, 3, 0}, f, l); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features', rows 0, 3, 5: H5Dread failed");
  // The reader stays usable after a failed read.
  ExpectRows(*d, {4, 2});
}

TEST_F(Hdf5Test, CorruptReadInTheLoaderThreadReachesNext) {
  WriteGood(/*chunked=*/true);
  CorruptChunk(path_, "features", 5);
  std::unique_ptr<Dataset> d = OpenHdf5(path_, "features", "labels");
  DistributedSampler sampler(kN, 2, /*seed=*/0, /*shuffle=*/false, /*drop_last=*/false);
  Loader loader(*d, sampler, LoaderOptions{});
  loader.StartEpoch(0);
  Batch b;
  ASSERT_TRUE(loader.Next(&b));
  ASSERT_TRUE(loader.Next(&b));
  EXPECT_EQ(b.indices, (std::vector<int64_t>{2, 3}));
  std::string msg = ThrownMessage<DataError>([&] { loader.Next(&b); });
  EXPECT_CONTAINS(msg, path_ + ", dataset 'features', rows [4, 6)");
}

TEST(Hdf5Mutex, IsOneProcessWideMutex) {
  EXPECT_EQ(&io::Hdf5Mutex(), &io::Hdf5Mutex());
  auto try_lock_elsewhere = [] {
    bool locked = false;
    std::thread t([&] {
      locked = io::Hdf5Mutex().try_lock();
      if (locked) io::Hdf5Mutex().unlock();
    });
    t.join();
    return locked;
  };
  {
    Hdf5Lock lock;
    EXPECT_FALSE(try_lock_elsewhere());
  }
  EXPECT_TRUE(try_lock_elsewhere());
}

}  // namespace
}  // namespace tessera::datasets
