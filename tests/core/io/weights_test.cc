// The weights reader (core/io/weights.h) against hostile files: every crafted file gets an IoError
// (or FormatError) naming the file, the object and what is wrong -- never a crash, an overrun or
// an allocation sized by what the file merely declares. Built twice: as io_test, and as
// io_asan_test under AddressSanitizer and UBSan (no other tessera library is linked into it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/io/checksum.h"
#include "core/io/hdf5.h"
#include "core/io/weights.h"
#include "tests/datasets/test_util.h"  // ThrownMessage (exact error class), EXPECT_CONTAINS

#if defined(__SANITIZE_ADDRESS__)
// HDF5 and Open MPI keep process-lifetime allocations: leaks are not what this test looks for.
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

namespace tessera::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

#define H5T(call) TESSERA_H5_CHECK(IoError, call, "test")

using datasets::testing::ThrownMessage;

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "tessera_weights_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    w0_.resize(12);
    b0_.resize(3);
    for (size_t i = 0; i < w0_.size(); ++i) w0_[i] = 0.25f * static_cast<float>(i) - 1.0f;
    for (size_t i = 0; i < b0_.size(); ++i) b0_[i] = static_cast<double>(i) / 7.0;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // A valid two-tensor weights file.
  std::string Good(const std::string& name = "good.h5") {
    WeightsMeta m;
    m.step = 42;
    m.job_spec = "name: \"x\"";
    std::string path = Path(name);
    WriteWeightsFile(path, m, {{"0.weight", {3, 4}, DType::kF32, w0_.data()}, {"0.bias", {3}, DType::kF64, b0_.data()}});
    return path;
  }
  // A copy of a good file edited with the HDF5 lock held.
  std::string Edited(const std::string& name, const std::function<void(hid_t)>& edit) {
    std::string path = Path(name);
    fs::copy_file(Good(name + ".src"), path, fs::copy_options::overwrite_existing);
    Hdf5Lock lock;
    Hdf5Handle f(H5T(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)), H5Fclose);
    edit(f.get());
    EXPECT_GE(f.Close(), 0);
    return path;
  }
  // Reads every tensor, counting how many buffers the reader asked for.
  WeightsInfo ReadAll(const std::string& path, int* asked = nullptr) {
    bufs_.clear();
    return ReadWeights(path, [&](const TensorRecord& t) -> void* {
      if (asked) ++*asked;
      bufs_.emplace_back(static_cast<size_t>(t.bytes));
      return bufs_.back().data();
    });
  }
  // Replaces /manifest with `text` (and a CRC that matches it, so only its content is wrong).
  static void SetManifest(hid_t f, const std::string& text) {
    H5T(H5Ldelete(f, "manifest", H5P_DEFAULT));
    WriteStringDataset(f, "manifest", text, "test");
    Hdf5Handle d(H5T(H5Dopen2(f, "manifest", H5P_DEFAULT)), H5Dclose);
    WriteU32Attr(d.get(), "crc32", Crc32(text.data(), text.size()), "test");
  }
  static std::string ManifestText(hid_t f) { return ReadStringDataset(f, "manifest", "test"); }
  static void ReplaceAttrWithArray(hid_t obj, const char* name, int n) {
    H5T(H5Adelete(obj, name));
    hsize_t dims = static_cast<hsize_t>(n);
    Hdf5Handle space(H5T(H5Screate_simple(1, &dims, nullptr)), H5Sclose);
    Hdf5Handle a(H5T(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
    std::vector<int64_t> v(static_cast<size_t>(n), 7);
    H5T(H5Awrite(a.get(), H5T_NATIVE_INT64, v.data()));
  }

  fs::path dir_;
  std::vector<float> w0_;
  std::vector<double> b0_;
  std::vector<std::vector<char>> bufs_;
};

TEST_F(WeightsTest, RoundTripIsBitwiseWithCrcsAndMetadata) {
  const std::string path = Good();
  WeightsInfo info = ReadAll(path);
  EXPECT_EQ(info.meta.step, 42);
  EXPECT_EQ(info.meta.job_spec, "name: \"x\"");
  ASSERT_EQ(info.tensors.size(), 2u);
  EXPECT_EQ(info.tensors[0].path, "/model/0.weight");
  EXPECT_EQ(info.tensors[0].shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(info.tensors[1].dtype, DType::kF64);
  EXPECT_EQ(std::memcmp(bufs_[0].data(), w0_.data(), 48), 0);
  EXPECT_EQ(std::memcmp(bufs_[1].data(), b0_.data(), 24), 0);
  EXPECT_EQ(info.tensors[0].crc32, Crc32(w0_.data(), 48));
  EXPECT_TRUE(VerifyWeights(path).empty());
  for (const fs::directory_entry& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << "temporary left: " << e.path();
}

TEST_F(WeightsTest, AnArrayWhereAScalarAttributeBelongsIsRefused) {
  // The stack overrun of a scalar read into an 8-byte variable: refused before any read.
  for (int n : {2, 1000}) {
    const std::string path = Edited("array.h5", [&](hid_t f) { ReplaceAttrWithArray(f, "step", n); });
    std::string msg = ThrownMessage<IoError>([&] { ReadWeightsInfo(path); });
    EXPECT_CONTAINS(msg, path + " @step: holds " + std::to_string(n) + " values; expected a single integer");
  }
  const std::string crc = Edited("crc_array.h5", [&](hid_t f) {
    Hdf5Handle d(H5T(H5Dopen2(f, "model/0.weight", H5P_DEFAULT)), H5Dclose);
    ReplaceAttrWithArray(d.get(), "crc32", 64);
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(crc); }), "/model/0.weight @crc32: holds 64 values");
}

TEST_F(WeightsTest, AnAttributeOfTheWrongTypeIsRefused) {
  const std::string path = Edited("string_step.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "step"));
    WriteStringAttr(f, "step", "forty-two", "test");
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(path); }), "@step: is a string; expected integer");
  const std::string neg = Edited("neg_step.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "step"));
    WriteIntAttr(f, "step", -5, "test");
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(neg); }), "@step: -5 is outside [0, ");
  const std::string job = Edited("int_job.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "job_spec"));
    WriteIntAttr(f, "job_spec", 3, "test");
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(job); }), "@job_spec: is an integer; expected string");
}

// A dataset that was never written (HDF5 allocates contiguous storage late) with a manifest that
// agrees about its size: the reader must refuse before asking for a buffer, both when the sizes
// together exceed the file and when they fit in it but the data is not there.
TEST_F(WeightsTest, DeclaredSizesWithoutTheDataAllocateNothing) {
  auto unwritten = [&](const std::string& name, hsize_t rows, hsize_t cols) {
    return Edited(name, [&](hid_t f) {
      H5T(H5Ldelete(f, "model/0.weight", H5P_DEFAULT));
      hsize_t dims[2] = {rows, cols};
      Hdf5Handle space(H5T(H5Screate_simple(2, dims, nullptr)), H5Sclose);
      Hdf5Handle d(H5T(H5Dcreate2(f, "model/0.weight", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)),
                   H5Dclose);
      json m = json::parse(ManifestText(f));
      m["tensors"][0]["shape"] = {rows, cols};
      m["tensors"][0]["bytes"] = static_cast<int64_t>(rows * cols * 4);
      SetManifest(f, m.dump());
    });
  };
  const std::string huge = unwritten("huge.h5", hsize_t{1} << 20, hsize_t{1} << 20);  // 4 TiB declared
  EXPECT_LT(fs::file_size(huge), 100000u);
  int asked = 0;
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(huge, &asked); }), "/manifest lists 4398046511104 bytes of tensors");
  const std::string small = unwritten("small.h5", 10, 20);  // fits in the file, but is not in it
  ASSERT_GT(fs::file_size(small), 800u + 24u);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(small, &asked); }), "/model/0.weight: declares 800 bytes of data but stores 0");
  EXPECT_EQ(asked, 0) << "a buffer was requested for a tensor the file does not hold";
  std::vector<std::string> problems = VerifyWeights(small);
  ASSERT_FALSE(problems.empty());
  EXPECT_CONTAINS(problems[0], "declares 800 bytes");
}

TEST_F(WeightsTest, DataBeyondTheEndOfTheFileIsTruncation) {
  const std::string good = Good("t.h5");
  const auto size = fs::file_size(good);
  // Truncating anywhere: an IoError, whatever HDF5 makes of the remains.
  std::vector<uintmax_t> cuts = {0, 1, 7, 100, 500, size / 4, size / 2, size - 100, size - 1};
  for (uintmax_t cut : cuts) {
    SCOPED_TRACE("truncated to " + std::to_string(cut) + " of " + std::to_string(size));
    const std::string bad = Path("cut.h5");
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    fs::resize_file(bad, cut);
    ThrownMessage<IoError>([&] { ReadAll(bad); });
  }
}

TEST_F(WeightsTest, ALyingManifestIsCaughtEntryByEntry) {
  struct Case {
    const char* name;
    std::function<std::string(json)> lie;  // the manifest as written -> its replacement
    const char* message;
  };
  auto edit = [](std::function<void(json&)> f) {
    return [f](json m) {
      f(m);
      return m.dump();
    };
  };
  const std::vector<Case> cases = {
      {"not JSON", [](json) { return std::string("{\"tensors\": [ {"); }, "/manifest is not valid JSON"},
      {"not an object", [](json) { return std::string("[1, 2]"); }, "/manifest is not a JSON object"},
      {"no tensors", [](json) { return std::string("{}"); }, "/manifest has no 'tensors' list"},
      {"tensors not a list", edit([](json& m) { m["tensors"] = 5; }), "has no 'tensors' list"},
      {"entry not an object", edit([](json& m) { m["tensors"][0] = 7; }), "tensor #0: is not a JSON object"},
      {"entry without a path", edit([](json& m) { m["tensors"][0].erase("path"); }), "tensor #0: has no 'path'"},
      {"path not a string", edit([](json& m) { m["tensors"][0]["path"] = 12; }), "'path' is not a string"},
      {"relative path", edit([](json& m) { m["tensors"][0]["path"] = "model/0.weight"; }), "is not an HDF5 dataset path"},
      {"missing dataset", edit([](json& m) { m["tensors"][0]["path"] = "/model/9.weight"; }),
       "/model/9.weight: listed in the manifest but missing from the file"},
      {"negative size", edit([](json& m) { m["tensors"][0]["shape"] = {-3, 4}; }), "'shape' holds -3, not a size >= 0"},
      {"size not a number", edit([](json& m) { m["tensors"][0]["shape"] = {"3", 4}; }), "'shape' holds \"3\""},
      {"overflowing shape", edit([](json& m) { m["tensors"][0]["shape"] = {int64_t{1} << 32, int64_t{1} << 32, 16}; }),
       "has more elements than any file could hold"},
      {"too many dimensions", edit([](json& m) { m["tensors"][0]["shape"] = std::vector<int>(10, 1); }),
       "'shape' is not a list of at most 8 sizes"},
      {"shape differs from the dataset", edit([](json& m) { m["tensors"][0]["shape"] = {4, 3}; }),
       "the dataset has shape [3,4] but the manifest says [4,3]"},
      {"bytes disagree", edit([](json& m) { m["tensors"][0]["bytes"] = 4800; }), "'bytes' is 4800 but shape"},
      {"unknown dtype", edit([](json& m) { m["tensors"][0]["dtype"] = "uint8"; }),
       "dtype \"uint8\" is not \"float32\", \"float64\" or \"int8\""},
      {"a dtype the dataset is not", edit([](json& m) {
         m["tensors"][0]["dtype"] = "int8";
         m["tensors"][0]["bytes"] = 12;
       }),
       "the dataset is float32 but the manifest says int8"},
      {"dtype differs", edit([](json& m) {
         m["tensors"][0]["dtype"] = "float64";
         m["tensors"][0]["bytes"] = 96;
       }),
       "the dataset is float32 but the manifest says float64"},
      {"crc out of range", edit([](json& m) { m["tensors"][0]["crc32"] = int64_t{99999999999}; }),
       "is not a 32-bit unsigned value"},
      {"a tensor twice", edit([](json& m) { m["tensors"][1]["path"] = m["tensors"][0]["path"]; }), "twice"},
      {"a checkpoint's tensor in a model file", edit([](json& m) { m["tensors"][0]["path"] = "/optim/0.weight/exp_avg"; }),
       "a model file holds /model tensors only"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = Edited("lie.h5", [&](hid_t f) { SetManifest(f, c.lie(json::parse(ManifestText(f)))); });
    std::string msg = ThrownMessage<IoError>([&] { ReadAll(path); });
    EXPECT_CONTAINS(msg, path);
    EXPECT_CONTAINS(msg, c.message);
  }
}

TEST_F(WeightsTest, ADatasetOfTheWrongTypeOrLayoutIsRefused) {
  const std::string ints = Edited("ints.h5", [&](hid_t f) {
    H5T(H5Ldelete(f, "model/0.bias", H5P_DEFAULT));
    hsize_t n = 3;
    Hdf5Handle space(H5T(H5Screate_simple(1, &n, nullptr)), H5Sclose);
    Hdf5Handle d(H5T(H5Dcreate2(f, "model/0.bias", H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)),
                 H5Dclose);
    int64_t v[3] = {1, 2, 3};
    H5T(H5Dwrite(d.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v));
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(ints); }), "/model/0.bias: is an integer of 8 bytes, not IEEE float32 or float64");
  const std::string chunked = Edited("chunked.h5", [&](hid_t f) {
    H5T(H5Ldelete(f, "model/0.bias", H5P_DEFAULT));
    hsize_t n = 3, chunk = 3;
    Hdf5Handle space(H5T(H5Screate_simple(1, &n, nullptr)), H5Sclose);
    Hdf5Handle dcpl(H5T(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
    H5T(H5Pset_chunk(dcpl.get(), 1, &chunk));
    H5T(H5Pset_deflate(dcpl.get(), 6));
    Hdf5Handle d(H5T(H5Dcreate2(f, "model/0.bias", H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)),
                 H5Dclose);
    H5T(H5Dwrite(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, b0_.data()));
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(chunked); }), "/model/0.bias: is stored in chunks");
  // A soft or external link in a tensor's place could point anywhere, another file included.
  for (bool external : {false, true}) {
    const std::string linked = Edited("linked.h5", [&](hid_t f) {
      H5T(H5Ldelete(f, "model/0.bias", H5P_DEFAULT));
      if (external) H5T(H5Lcreate_external("/etc/passwd", "/x", f, "model/0.bias", H5P_DEFAULT, H5P_DEFAULT));
      else H5T(H5Lcreate_soft("/model/0.weight", f, "model/0.bias", H5P_DEFAULT, H5P_DEFAULT));
    });
    EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(linked); }), "/model/0.bias is a soft or external link");
  }
}

TEST_F(WeightsTest, WhatIsNotARegularFileIsRefusedWithoutReading) {
  const std::string fifo = Path("fifo.h5");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(fifo); }), "is not a regular file (a FIFO, device or socket)");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(dir_.string()); }), "is a directory");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(Path("missing.h5")); }), "no such file");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo("/dev/zero"); }), "is not a regular file");
  std::ofstream(Path("text.h5")) << "not hdf5";
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(Path("text.h5")); }), "not an HDF5 file");
}

TEST_F(WeightsTest, ANewerFormatIsAFormatErrorAndCorruptDataIsNamed) {
  // A newer format (whose manifest this build cannot read): a FormatError, the reader stops.
  const std::string newer = Edited("newer.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "format_version"));
    WriteIntAttr(f, "format_version", 7, "test");
    H5T(H5Ldelete(f, "manifest", H5P_DEFAULT));
  });
  EXPECT_CONTAINS(ThrownMessage<FormatError>([&] { ReadWeightsInfo(newer); }), "tessera.model format version 7");
  // The same attribute damaged, with a sound manifest recording format 2: damage, an IoError.
  const std::string damaged = Edited("damaged.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "format_version"));
    WriteIntAttr(f, "format_version", 7, "test");
  });
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(damaged); }),
             "format_version is 7 but the manifest recorded 2: the attribute is damaged");
  const std::string other = Edited("other.h5", [&](hid_t f) {
    H5T(H5Adelete(f, "format"));
    WriteStringAttr(f, "format", "pytorch.pickle", "test");
  });
  EXPECT_CONTAINS(ThrownMessage<FormatError>([&] { ReadWeightsInfo(other); }), "format is 'pytorch.pickle'");
  // One flipped byte inside a tensor: the CRC names it.
  const std::string flipped = Path("flipped.h5");
  fs::copy_file(Good("f.h5"), flipped);
  int64_t offset = -1;
  {
    Hdf5Lock lock;
    Hdf5Handle f = OpenForRead(flipped);
    Hdf5Handle d(H5T(H5Dopen2(f.get(), "model/0.weight", H5P_DEFAULT)), H5Dclose);
    offset = static_cast<int64_t>(H5Dget_offset(d.get()));
  }
  int fd = open(flipped.c_str(), O_RDWR);
  char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, offset + 5), 1);
  c ^= 0x10;
  ASSERT_EQ(pwrite(fd, &c, 1, offset + 5), 1);
  close(fd);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadAll(flipped); }), "/model/0.weight: CRC-32 mismatch");
  std::vector<std::string> problems = VerifyWeights(flipped);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_CONTAINS(problems[0], "/model/0.weight: CRC-32 mismatch");
}

// Variable-length strings live in HDF5's global heap, which has no checksum; HDF5 1.10 overruns a
// buffer reading a damaged one. Files of format 2 hold none: one there is refused unread. Legacy
// files (format 1, written that way) are still read.
TEST_F(WeightsTest, VariableLengthStringsOnlyInLegacyFiles) {
  auto with_vlen_job_spec = [&](const std::string& name, int64_t version) {
    return Edited(name, [&](hid_t f) {
      H5T(H5Adelete(f, "job_spec"));
      Hdf5Handle t(H5T(H5Tcopy(H5T_C_S1)), H5Tclose);
      H5T(H5Tset_size(t.get(), H5T_VARIABLE));
      Hdf5Handle space(H5T(H5Screate(H5S_SCALAR)), H5Sclose);
      Hdf5Handle a(H5T(H5Acreate2(f, "job_spec", t.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
      const char* v = "name: \"x\"";
      H5T(H5Awrite(a.get(), t.get(), &v));
      H5T(H5Adelete(f, "format_version"));
      WriteIntAttr(f, "format_version", version, "test");
    });
  };
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadWeightsInfo(with_vlen_job_spec("v2.h5", 2)); }),
             "@job_spec: is a variable-length string; tessera files of this format hold fixed-length strings");
  const std::string v1 = with_vlen_job_spec("v1.h5", 1);
  EXPECT_CONTAINS(ThrownMessage<FormatError>([&] { ReadWeightsInfo(v1); }), "format version 1");  // not for a store or server
  WeightsInfo legacy = ReadWeightsInfo(v1, WeightsReadOptions{false, true});
  EXPECT_EQ(legacy.meta.format_version, 1);
  EXPECT_EQ(legacy.meta.job_spec, "name: \"x\"");
}

// Random damage anywhere in the file: every read ends in a result or an IoError, never a crash
// (under io_asan_test: never an overrun either).
TEST_F(WeightsTest, RandomByteDamageNeverCrashes) {
  const std::string good = Good("r.h5");
  const auto size = static_cast<int64_t>(fs::file_size(good));
  std::mt19937_64 rng(12345);
  int errors = 0, reads = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const std::string bad = Path("random.h5");
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    int fd = open(bad.c_str(), O_RDWR);
    for (int k = 0; k < 1 + trial % 4; ++k) {
      int64_t at = static_cast<int64_t>(rng() % static_cast<uint64_t>(size));
      unsigned char b = static_cast<unsigned char>(rng());
      ASSERT_EQ(pwrite(fd, &b, 1, at), 1);
    }
    close(fd);
    try {
      ReadAll(bad);
      VerifyWeights(bad);
      ++reads;
    } catch (const IoError&) {
      ++errors;
    }
    // Nothing of the damaged file stays open: a server reads files for months.
    Hdf5Lock lock;
    for (H5I_type_t t : {H5I_FILE, H5I_GROUP, H5I_DATASET, H5I_ATTR, H5I_DATASPACE}) {
      hsize_t open_ids = 0;
      H5Inmembers(t, &open_ids);
      EXPECT_EQ(open_ids, 0u) << "trial " << trial << ": HDF5 identifiers of type " << t << " left open";
    }
  }
  EXPECT_GT(errors, 50) << "most damage should be detected";
  EXPECT_EQ(errors + reads, 300);
}

}  // namespace
}  // namespace tessera::io
