// Every way a checkpoint can be wrong, as a reader meets it (missing, truncated, not HDF5,
// another kind, a corrupt tensor, another model or optimizer, a newer format, inconsistent
// attributes), and export of the model alone.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/jobs/checkpoint/fixture.h"

namespace tessera::jobs::ckpt_test {
namespace {

// The root attributes (step, optimizer_step, ...) are covered by the manifest's CRC.
TEST_F(CheckpointTest, AChangedRootAttributeIsReportedByVerify) {
  State s = MakeMlp(87, OptKind::kAdam, 1);
  const std::string good = Save(s, 6);
  EXPECT_TRUE(VerifyCheckpoint(good).empty());
  const std::string bad = Path("bad.h5");
  fs::copy_file(good, bad);
  RewriteRootI64(bad, "step", 7);
  std::vector<std::string> problems = VerifyCheckpoint(bad);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_CONTAINS(problems[0], "root attribute 'step' is 7 but the manifest recorded 6");
  EXPECT_CONTAINS(problems[1], "do not add up to step 7");
  // A load refuses it too (a trainer then falls back to an older checkpoint), naming the problem.
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }),
                  "root attribute 'step' is 7 but the manifest recorded 6");
}

// A checkpoint whose step disagrees with the step-N directory holding it is refused at load.
TEST_F(CheckpointTest, TheStepMustMatchTheStepDirectory) {
  State s = MakeMlp(88, OptKind::kAdam, 1);
  const std::string good = Save(s, 6);
  const std::string moved = Path("ckpts/step-00000009/checkpoint.h5");
  fs::create_directories(Path("ckpts/step-00000009"));
  fs::copy_file(good, moved);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(moved, s.Layout()); }),
                  "the directory step-00000009 says step 9 but the checkpoint's step attribute is 6");
  EXPECT_EQ(VerifyCheckpoint(moved).size(), 1u);
}

inline void RewriteDatasetI64Attr(const std::string& file, const std::string& dataset, const char* name,
                                  int64_t value, bool remove = false) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle d(CHECK_H5(H5Dopen2(f.get(), dataset.c_str(), H5P_DEFAULT), file + ": " + dataset), H5Dclose);
  if (remove) {
    CHECK_H5(H5Adelete(d.get(), name), file + ": " + dataset + " @" + name);
  } else {
    Hdf5Handle a(CHECK_H5(H5Aopen(d.get(), name, H5P_DEFAULT), file + ": " + dataset + " @" + name), H5Aclose);
    CHECK_H5(H5Awrite(a.get(), H5T_NATIVE_INT64, &value), file + ": " + dataset + " @" + name);
  }
  d.Reset();
  ASSERT_GE(f.Close(), 0);
}

inline int64_t ReadDatasetI64Attr(const std::string& file, const std::string& dataset, const char* name) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle d(CHECK_H5(H5Dopen2(f.get(), dataset.c_str(), H5P_DEFAULT), file + ": " + dataset), H5Dclose);
  return io::ReadIntAttr(d.get(), name, file + ": " + dataset);
}

// flat_offset is not covered by a CRC: verify checks it against the other tensors'.
TEST_F(CheckpointTest, AWrongOrMissingFlatOffsetIsReportedByVerify) {
  State s = MakeMlp(89, OptKind::kAdam, 1);  // Linear(8 -> 16), ReLU, Linear(16 -> 12), ...
  const std::string good = Save(s, 3);
  ASSERT_TRUE(VerifyCheckpoint(good).empty());
  // The first layer's bias follows its weight, at the next multiple of 16 elements.
  const int64_t bias = ReadDatasetI64Attr(good, "/model/1.bias", "flat_offset");
  ASSERT_EQ(ReadDatasetI64Attr(good, "/model/1.weight", "flat_offset"), 0);
  ASSERT_EQ(bias, 8 * 16);
  const std::string b = std::to_string(bias);
  const std::string bad = Path("bad.h5");
  struct Case {
    std::string dataset;
    int64_t value;
    bool remove;
    std::string want;
  };
  for (const Case& c : std::vector<Case>{
           {"/model/1.bias", bias + 16, false,
            "/model/1.bias: flat_offset is " + std::to_string(bias + 16) + " but the model's tensors before it end at "
            "element " + b + ", so it should be " + b + " (the next multiple of 16): a gap"},
           {"/model/1.bias", bias - 16, false, "so it should be " + b + " (the next multiple of 16): the tensors overlap"},
           {"/model/1.bias", bias + 1, false, "so it should be " + b},
           {"/optim/1.bias/exp_avg", 0, false,
            "/optim/1.bias/exp_avg: flat_offset is 0 but its parameter /model/1.bias starts at " + b},
           {"/optim/1.weight/exp_avg_sq", -5, false, "/optim/1.weight/exp_avg_sq @flat_offset"},
           {"/model/1.weight", 0, true, "/model/1.weight: has no flat_offset attribute"}}) {
    SCOPED_TRACE(c.dataset + " " + std::to_string(c.value));
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    RewriteDatasetI64Attr(bad, c.dataset, "flat_offset", c.value, c.remove);
    std::vector<std::string> problems = VerifyCheckpoint(bad);
    ASSERT_GE(problems.size(), 1u);
    EXPECT_CONTAINS(problems[0], bad + ": ");
    EXPECT_CONTAINS(problems[0], c.want);
  }
}

// ---- errors -----------------------------------------------------------------------------------

TEST_F(CheckpointTest, MissingFileIsAnIoErrorNamingIt) {
  State s = MakeMlp(91, OptKind::kAdam, 0);
  const std::string missing = Path("nope/checkpoint.h5");
  for (const std::string& msg : {ThrownMessage<IoError>([&] { ReadCheckpointInfo(missing); }),
                                 ThrownMessage<IoError>([&] { LoadCheckpoint(missing, s.Layout()); }),
                                 ThrownMessage<IoError>([&] { VerifyCheckpoint(missing); }),
                                 ThrownMessage<IoError>([&] { ExportModel(missing, Path("m.h5")); })}) {
    EXPECT_CONTAINS(msg, missing);
    EXPECT_CONTAINS(msg, "no such");
  }
  EXPECT_FALSE(fs::exists(Path("m.h5")));
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadCheckpointInfo(dir_.string()); }), "is a directory");
}

TEST_F(CheckpointTest, TruncatedFileIsAnIoErrorSayingSo) {
  State s = MakeMlp(101, OptKind::kAdam, 1);
  const std::string good = Save(s, 1);
  const auto size = static_cast<off_t>(fs::file_size(good));
  for (off_t keep : {size / 2, size - 1, off_t{100}}) {
    SCOPED_TRACE("truncated to " + std::to_string(keep) + " of " + std::to_string(size) + " bytes");
    const std::string bad = Path("cut.h5");  // a name without the word the message must hold
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    ASSERT_EQ(truncate(bad.c_str(), keep), 0);
    for (const std::string& msg : {ThrownMessage<IoError>([&] { ReadCheckpointInfo(bad); }),
                                   ThrownMessage<IoError>([&] { LoadCheckpoint(bad, s.Layout()); }),
                                   ThrownMessage<IoError>([&] { VerifyCheckpoint(bad); })}) {
      EXPECT_CONTAINS(msg, bad);
      EXPECT_CONTAINS(msg, "cannot be opened as HDF5 (truncated or damaged?)");
      EXPECT_CONTAINS(msg, "truncated file");  // HDF5's own diagnosis: the end of file is short of its end of data
    }
  }
}

// Damage (not HDF5, empty) is an IoError: a trainer falls back to an older checkpoint. An intact
// HDF5 file of another kind is a CheckpointFormatError: the trainer stops.
TEST_F(CheckpointTest, NonHdf5FilesAreDamageAndOtherFilesFormatErrors) {
  State s = MakeMlp(111, OptKind::kAdam, 0);
  const std::string text = Path("notes.csv"), empty = Path("empty.h5"), other = Path("other.h5");
  std::ofstream(text) << "a,b,label\n1,2,3\n";
  std::ofstream{empty};
  for (const std::string& f : {text, empty}) {
    SCOPED_TRACE(f);
    for (const std::string& msg : {ThrownMessage<IoError>([&] { ReadCheckpointInfo(f); }),
                                   ThrownMessage<IoError>([&] { LoadCheckpoint(f, s.Layout()); }),
                                   ThrownMessage<IoError>([&] { VerifyCheckpoint(f); })}) {
      EXPECT_CONTAINS(msg, f);
      EXPECT_CONTAINS(msg, f == empty ? "is empty (0 bytes)" : "no HDF5 signature");
    }
  }
  {  // A valid HDF5 file that is not a tessera checkpoint.
    Hdf5Lock lock;
    Hdf5Handle f(CHECK_H5(H5Fcreate(other.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), other), H5Fclose);
    Hdf5Handle space(CHECK_H5(H5Screate(H5S_SCALAR), other), H5Sclose);
    Hdf5Handle d(CHECK_H5(H5Dcreate2(f.get(), "x", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), other),
                 H5Dclose);
    d.Reset();
    ASSERT_GE(f.Close(), 0);
  }
  // No `format` attribute at all: damage, as far as anyone can tell.
  std::string msg = ThrownMessage<IoError>([&] { LoadCheckpoint(other, s.Layout()); });
  EXPECT_CONTAINS(msg, other);
  EXPECT_CONTAINS(msg, "not a tessera file (the root has no 'format' attribute)");
  {  // A format this build does not know.
    Hdf5Lock lock;
    Hdf5Handle f(CHECK_H5(H5Fopen(other.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), other), H5Fclose);
    io::WriteStringAttr(f.get(), "format", "someone.else", other);
    io::WriteIntAttr(f.get(), "format_version", 2, other);
    ASSERT_GE(f.Close(), 0);
  }
  msg = ThrownMessage<CheckpointFormatError>([&] { LoadCheckpoint(other, s.Layout()); });
  EXPECT_CONTAINS(msg, "not a tessera checkpoint (format is 'someone.else')");
}

TEST_F(CheckpointTest, AFlippedByteInAnyTensorIsCaughtAndNamed) {
  State s = MakeMlp(121, OptKind::kAdam, 2);
  const std::string good = Save(s, 2);
  ASSERT_TRUE(VerifyCheckpoint(good).empty());
  CheckpointInfo info = ReadCheckpointInfo(good);
  ASSERT_EQ(info.tensors.size(), 18u);  // 6 parameters, each with exp_avg and exp_avg_sq
  const std::string bad = Path("flipped.h5");
  for (const CheckpointTensor& t : info.tensors) {
    SCOPED_TRACE(t.path);
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    const int64_t offset = DataOffset(bad, t.path);
    ASSERT_GE(offset, 0);
    FlipByte(bad, offset + t.bytes / 2);
    std::vector<std::string> problems = VerifyCheckpoint(bad);
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_CONTAINS(problems[0], bad + ": " + t.path + ": CRC-32 mismatch");
    EXPECT_CONTAINS(problems[0], "stored 0x");
    State fresh = MakeMlp(122, OptKind::kAdam, 0);
    std::string msg = ThrownMessage<IoError>([&] { LoadCheckpoint(bad, fresh.Layout()); });
    EXPECT_CONTAINS(msg, bad);
    EXPECT_CONTAINS(msg, t.path + ": CRC-32 mismatch");
  }
}

TEST_F(CheckpointTest, ADifferentModelIsAShapeErrorNamingTheTensorAndBothShapes) {
  State s = MakeMlp(131, OptKind::kAdam, 1);
  const std::string path = Save(s, 1);
  {  // Wider first hidden layer: same tensors, other shapes.
    State wider = MakeState(models::BuildMlp(Mlp({20, 12})), 132, OptKind::kAdam, 0);
    std::string msg = ThrownMessage<ShapeError>([&] { LoadCheckpoint(path, wider.Layout()); });
    EXPECT_CONTAINS(msg, path);
    EXPECT_CONTAINS(msg, "/model/1.weight");
    EXPECT_CONTAINS(msg, "[16, 8]");
    EXPECT_CONTAINS(msg, "[20, 8]");
  }
  {  // One hidden layer fewer: the checkpoint has tensors the model lacks.
    State shallower = MakeState(models::BuildMlp(Mlp({16})), 133, OptKind::kAdam, 0);
    std::string msg = ThrownMessage<ShapeError>([&] { LoadCheckpoint(path, shallower.Layout()); });
    EXPECT_CONTAINS(msg, "/model/");
    EXPECT_CONTAINS(msg, "different model");
  }
  {  // One hidden layer more: the model has tensors the checkpoint lacks.
    State deeper = MakeState(models::BuildMlp(Mlp({16, 12, 6})), 134, OptKind::kNone, 0);
    std::string msg = ThrownMessage<ShapeError>([&] { LoadCheckpoint(path, deeper.Layout()); });
    EXPECT_CONTAINS(msg, "/model/5.weight");
    EXPECT_CONTAINS(msg, "[6, 12]");
    EXPECT_CONTAINS(msg, "[3, 12]");
  }
}

TEST_F(CheckpointTest, ADifferentOptimizerIsAnErrorNamingTheState) {
  State adam = MakeMlp(141, OptKind::kAdam, 1);
  const std::string adam_path = Save(adam, 1, "adam");
  State sgd = MakeMlp(142, OptKind::kSgdMomentum, 0);
  std::string msg = ThrownMessage<ShapeError>([&] { LoadCheckpoint(adam_path, sgd.Layout()); });
  EXPECT_CONTAINS(msg, adam_path);
  EXPECT_CONTAINS(msg, "/optim/1.weight/momentum_buffer");
  EXPECT_CONTAINS(msg, "exp_avg, exp_avg_sq");
  EXPECT_CONTAINS(msg, "optimizer 'adam'");

  State sgd_saved = MakeMlp(143, OptKind::kSgdMomentum, 1);
  const std::string sgd_path = Save(sgd_saved, 1, "sgd");
  State adam2 = MakeMlp(144, OptKind::kAdam, 0);
  msg = ThrownMessage<ShapeError>([&] { LoadCheckpoint(sgd_path, adam2.Layout()); });
  EXPECT_CONTAINS(msg, "/optim/1.weight/exp_avg");
  EXPECT_CONTAINS(msg, "momentum_buffer");
  EXPECT_CONTAINS(msg, "optimizer 'sgd'");
}

TEST_F(CheckpointTest, ANewerFormatVersionIsRefusedClearly) {
  State s = MakeMlp(151, OptKind::kAdam, 1);
  const std::string good = Save(s, 1);
  const std::string newer = Path("newer.h5");
  fs::copy_file(good, newer);
  // A newer format: its own manifest, which this build cannot read (here: none at all).
  RewriteRootI64(newer, "format_version", 99);
  {
    Hdf5Lock lock;
    Hdf5Handle f(CHECK_H5(H5Fopen(newer.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), newer), H5Fclose);
    CHECK_H5(H5Ldelete(f.get(), "manifest", H5P_DEFAULT), newer);
    ASSERT_GE(f.Close(), 0);
  }
  for (const std::string& msg : {ThrownMessage<CheckpointFormatError>([&] { ReadCheckpointInfo(newer); }),
                                 ThrownMessage<CheckpointFormatError>([&] { LoadCheckpoint(newer, s.Layout()); }),
                                 ThrownMessage<CheckpointFormatError>([&] { VerifyCheckpoint(newer); }),
                                 ThrownMessage<CheckpointFormatError>([&] { ExportModel(newer, Path("m.h5")); })}) {
    EXPECT_CONTAINS(msg, newer);
    EXPECT_CONTAINS(msg, "tessera.checkpoint format version 99");
    EXPECT_CONTAINS(msg, "newer");
  }
  // The attribute alone changed, the manifest recording the real version: damage.
  const std::string damaged = Path("damaged.h5");
  fs::copy_file(good, damaged);
  RewriteRootI64(damaged, "format_version", 99);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { LoadCheckpoint(damaged, s.Layout()); }),
                  "format_version is 99 but the manifest recorded 2: the attribute is damaged");
  RewriteRootI64(damaged, "format_version", 0);
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ReadCheckpointInfo(damaged); }), "invalid format_version 0");
}

// ---- export -----------------------------------------------------------------------------------

TEST_F(CheckpointTest, ExportHoldsTheModelTensorsOnlyAndVerifies) {
  State s = MakeMlp(161, OptKind::kAdam, 2);
  const std::string ckpt = Save(s, 8);
  const std::string out = Path("export/model.h5");
  fs::create_directories(Path("export"));
  ExportModel(ckpt, out);
  EXPECT_EQ(DirNames(Path("export")), (std::set<std::string>{"model.h5"})) << "no temporary file left";
  EXPECT_TRUE(VerifyCheckpoint(out).empty());
  CheckpointInfo info = ReadCheckpointInfo(out);
  EXPECT_EQ(info.kind, "model");
  EXPECT_EQ(info.meta.step, 8);
  EXPECT_EQ(info.meta.job_spec, MakeMeta(8, nullptr).job_spec);
  CheckpointInfo src = ReadCheckpointInfo(ckpt);
  std::vector<CheckpointTensor> src_model;
  for (const auto& t : src.tensors)
    if (t.path.rfind("/model/", 0) == 0) src_model.push_back(t);
  ASSERT_EQ(info.tensors.size(), src_model.size());
  ASSERT_EQ(info.tensors.size(), s.params->entries().size());
  for (size_t i = 0; i < info.tensors.size(); ++i) {
    EXPECT_EQ(info.tensors[i].path, src_model[i].path);
    EXPECT_EQ(info.tensors[i].shape, src_model[i].shape);
    EXPECT_EQ(info.tensors[i].crc32, src_model[i].crc32);
  }
  EXPECT_TRUE(LinkExists(out, "model"));
  EXPECT_FALSE(LinkExists(out, "optim"));
  EXPECT_FALSE(LinkExists(out, "rng"));
  // The tensors load bitwise into the model; training cannot resume from an export.
  State fresh = MakeMlp(162, OptKind::kNone, 0);
  LoadCheckpoint(out, fresh.Layout());
  EXPECT_EQ(FirstDifference(MakeCheckpointLayout(*s.params, nullptr), fresh.Layout()), "");
  State with_opt = MakeMlp(163, OptKind::kAdam, 0);
  EXPECT_CONTAINS(ThrownMessage<CheckpointFormatError>([&] { LoadCheckpoint(out, with_opt.Layout()); }),
                  "exported model");
  // Exporting again replaces the file.
  ExportModel(ckpt, out);
  EXPECT_TRUE(VerifyCheckpoint(out).empty());
}

TEST_F(CheckpointTest, ExportOfACorruptCheckpointThrowsAndWritesNothing) {
  State s = MakeMlp(171, OptKind::kAdam, 1);
  const std::string good = Save(s, 1);
  const std::string bad = Path("bad.h5");
  fs::copy_file(good, bad);
  FlipByte(bad, DataOffset(bad, "/model/3.bias") + 5);
  fs::create_directories(Path("export"));
  std::string msg = ThrownMessage<IoError>([&] { ExportModel(bad, Path("export/model.h5")); });
  EXPECT_CONTAINS(msg, "/model/3.bias: CRC-32 mismatch");
  EXPECT_TRUE(DirNames(Path("export")).empty());
}

}  // namespace
}  // namespace tessera::jobs::ckpt_test
