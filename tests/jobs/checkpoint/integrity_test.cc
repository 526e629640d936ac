// What each checksum and cross-check of the checkpoint format covers (docs/checkpoint-format.md):
// damage to /manifest or /rng/rank_state, a missing crc32 attribute, a dataset the manifest does
// not list, a changed optimizer_step, and the dtype, rng and layout root attributes.
#include <gtest/gtest.h>

#include "core/io/checksum.h"
#include "core/io/tensor_file.h"
#include "tests/jobs/checkpoint/fixture.h"

namespace tessera::jobs::ckpt_test {
namespace {

// Edits the HDF5 file `path` with the lock held.
template <typename F>
void EditFile(const std::string& path, F edit) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), path), H5Fclose);
  edit(f.get());
  ASSERT_GE(f.Close(), 0);
}

std::string ReadManifestText(const std::string& path) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path), H5Fclose);
  return io::ReadStringDataset(f.get(), "manifest", path);
}

// Replaces /manifest by `text`; with `crc` the new dataset gets that crc32 attribute, without it
// none.
void RewriteManifest(const std::string& path, const std::string& text, const uint32_t* crc) {
  EditFile(path, [&](hid_t h) {
    CHECK_H5(H5Ldelete(h, "manifest", H5P_DEFAULT), path);
    io::WriteStringDataset(h, "manifest", text, path);
    if (!crc) return;
    Hdf5Handle d(CHECK_H5(H5Dopen2(h, "manifest", H5P_DEFAULT), path), H5Dclose);
    io::WriteU32Attr(d.get(), "crc32", *crc, path);
  });
}

std::string Copy(const std::string& from, const std::string& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  return to;
}

// The manifest's own CRC catches a change that leaves it valid JSON with the same content (here:
// one indentation space made a tab), and a manifest without its crc32 attribute is damage too.
TEST_F(CheckpointTest, TheManifestsCrcCoversItsText) {
  State s = MakeMlp(201, OptKind::kAdam, 1);
  const std::string good = Save(s, 4);
  const std::string text = ReadManifestText(good);
  const size_t at = text.find("\n ");
  ASSERT_NE(at, std::string::npos) << text.substr(0, 200);
  std::string edited = text;
  edited[at + 1] = '\t';
  const uint32_t old_crc = CrcAttr(good, "/manifest");

  const std::string bad = Copy(good, Path("bad.h5"));
  RewriteManifest(bad, edited, &old_crc);
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_CONTAINS(problems[0], bad + ": /manifest: CRC-32 mismatch (stored " + io::Hex32(old_crc));
  EXPECT_CONTAINS(problems[0], "the manifest is corrupt");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }), "/manifest: CRC-32 mismatch");

  const std::string bare = Copy(good, Path("bare.h5"));
  RewriteManifest(bare, text, nullptr);
  problems = VerifyCheckpoint(bare);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_CONTAINS(problems[0], bare + ": /manifest: the crc32 attribute is missing");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bare, s.Layout()); }),
                  "/manifest: the crc32 attribute is missing");

  // The same text under its own CRC is sound again: the check is of the bytes, not of the edit.
  const std::string resealed = Copy(good, Path("resealed.h5"));
  RewriteManifest(resealed, text, &old_crc);
  EXPECT_TRUE(VerifyCheckpoint(resealed).empty());
}

// /rng/rank_state: a changed next-example position fails its CRC wherever the file is read.
TEST_F(CheckpointTest, TheRankStateCrcCoversEveryRanksPosition) {
  State s = MakeMlp(202, OptKind::kAdam, 1);
  const std::string good = Save(s, 4);
  const std::string bad = Copy(good, Path("bad.h5"));
  EditFile(bad, [&](hid_t h) {
    Hdf5Handle d(CHECK_H5(H5Dopen2(h, "rng/rank_state", H5P_DEFAULT), bad), H5Dclose);
    uint64_t rs[2] = {0, 0};
    CHECK_H5(H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs), bad);
    rs[1] += 32;  // one batch further on
    CHECK_H5(H5Dwrite(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs), bad);
  });
  const std::string want = bad + ": /rng/rank_state: CRC-32 mismatch (stored ";
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { VerifyCheckpoint(bad); }), want);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }), want);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadCheckpointInfo(bad); }), want);
}

// A tensor whose crc32 attribute was removed: its data is unchanged and the manifest still holds
// its CRC, but the file no longer is what tessera writes.
TEST_F(CheckpointTest, ATensorWithoutItsCrcAttributeIsDamage) {
  State s = MakeMlp(203, OptKind::kAdam, 1);
  const std::string good = Save(s, 4);
  const std::string bad = Copy(good, Path("bad.h5"));
  EditFile(bad, [&](hid_t h) {
    Hdf5Handle d(CHECK_H5(H5Dopen2(h, "optim/3.weight/exp_avg", H5P_DEFAULT), bad), H5Dclose);
    CHECK_H5(H5Adelete(d.get(), "crc32"), bad);
  });
  const std::string want = bad + ": /optim/3.weight/exp_avg: the crc32 attribute is missing";
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_CONTAINS(problems[0], want);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }), want);
}

// A tensor the manifest does not list is reported by verify: the file holds state nobody checks.
TEST_F(CheckpointTest, ADatasetTheManifestDoesNotListIsReportedByVerify) {
  State s = MakeMlp(204, OptKind::kAdam, 1);
  const std::string good = Save(s, 4);
  const std::string bad = Copy(good, Path("bad.h5"));
  EditFile(bad, [&](hid_t h) {
    hsize_t n = 3;
    Hdf5Handle space(CHECK_H5(H5Screate_simple(1, &n, nullptr), bad), H5Sclose);
    Hdf5Handle d(CHECK_H5(H5Dcreate2(h, "model/9.weight", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                     H5P_DEFAULT), bad), H5Dclose);
    const float v[3] = {1, 2, 3};
    CHECK_H5(H5Dwrite(d.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), bad);
  });
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_EQ(problems[0], bad + ": /model/9.weight: not listed in the manifest");
}

// optimizer_step is covered by the manifest's copy of the root attributes, and must not exceed
// the step.
TEST_F(CheckpointTest, AChangedOptimizerStepIsCaught) {
  State s = MakeMlp(205, OptKind::kAdam, 3);  // 3 optimizer steps, saved as step 6
  const std::string good = Save(s, 6);
  ASSERT_EQ(ReadCheckpointInfo(good).meta.optimizer_step, 3);
  const std::string bad = Copy(good, Path("bad.h5"));
  RewriteRootI64(bad, "optimizer_step", 4);
  const std::string want = "root attribute 'optimizer_step' is 4 but the manifest recorded 3";
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_CONTAINS(problems[0], want);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }), want);
  // Beyond the step: refused even where the manifest's copy agrees (both rewritten, the manifest
  // under a fresh CRC).
  RewriteRootI64(bad, "optimizer_step", 7);
  std::string text = ReadManifestText(bad);
  const size_t at = text.find("\"optimizer_step\": 3");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 19, "\"optimizer_step\": 7");
  const uint32_t crc = io::Crc32(text.data(), text.size());
  RewriteManifest(bad, text, &crc);
  problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 1u) << ::testing::PrintToString(problems);
  EXPECT_EQ(problems[0], bad + ": optimizer_step 7 exceeds step 6");
}

// The dtype root attribute is the model's parameter dtype, taken from the tensors being saved; a
// caller that claims another is refused, and a file whose attribute disagrees with its tensors is
// damage.
TEST_F(CheckpointTest, TheDtypeAttributeIsTheParametersDtype) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    const std::string name = io::DTypeFileName(dt);
    SCOPED_TRACE(name);
    State s = MakeMlp(206, OptKind::kAdam, 1, dt);
    const std::string path = Save(s, 2, "ckpts-" + name);
    EXPECT_EQ(ReadCheckpointInfo(path).meta.dtype, name);
    for (const CheckpointTensor& t : ReadCheckpointInfo(path).tensors) EXPECT_EQ(t.dtype, dt) << t.path;
  }
  State f64 = MakeMlp(207, OptKind::kAdam, 1, DType::kF64);
  CheckpointMeta meta = MakeMeta(2, f64.opt.get());
  meta.dtype = "float32";
  CheckpointWriterOptions o;
  o.dir = Path("claimed");
  CheckpointWriter w(o);
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { w.Save(f64.Layout(), meta); }),
                  "the checkpoint's dtype is given as float32 but the model's parameters are float64");
  EXPECT_FALSE(fs::exists(Path("claimed/step-00000002")));

  // The attribute and the manifest's copy both changed (no CRC covers them together with the
  // tensors' dtypes): the tensors disagree.
  State s = MakeMlp(208, OptKind::kAdam, 1);
  const std::string good = Save(s, 2);
  const std::string bad = Copy(good, Path("bad.h5"));
  std::string text = ReadManifestText(good);
  const size_t at = text.find("\"dtype\": \"float32\"");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 18, "\"dtype\": \"float64\"");
  const uint32_t crc = io::Crc32(text.data(), text.size());
  RewriteManifest(bad, text, &crc);
  EditFile(bad, [&](hid_t h) {
    CHECK_H5(H5Adelete(h, "dtype"), bad);
    io::WriteStringAttr(h, "dtype", "float64", bad);
  });
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_GE(problems.size(), 1u);
  EXPECT_CONTAINS(problems[0], bad + ": root attribute 'dtype' is float64 but the model's tensors are float32 (");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }), "root attribute 'dtype' is float64");
}

// rng and layout describe how the file came about, for a reader without tessera.
TEST_F(CheckpointTest, TheRngAndLayoutAttributesDescribeTheRun) {
  State s = MakeMlp(209, OptKind::kAdam, 1);
  const std::string path = Save(s, 2);
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path), H5Fclose);
  const std::string rng = io::ReadStringAttr(f.get(), "rng", path);
  EXPECT_CONTAINS(rng, "philox4x32-10");
  EXPECT_CONTAINS(rng, "(seed, epoch)");
  EXPECT_CONTAINS(rng, "dropout by (seed, example position)");
  EXPECT_EQ(io::ReadStringAttr(f.get(), "layout", path),
            "each of the 1 ranks wrote a contiguous 1/1 of the flat buffers (" + std::to_string(s.params->values().numel()) +
                " elements)");
}

}  // namespace
}  // namespace tessera::jobs::ckpt_test
