// Shared by the checkpoint suites (tests/jobs/checkpoint/*_test.cc, one binary): models with
// trained optimizer state, checkpoint metadata, raw HDF5 and file helpers, and the fixture that
// gives each test a scratch directory.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/io/hdf5.h"
#include "core/models.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "jobs/checkpoint.h"
#include "tests/datasets/test_util.h"  // ThrownMessage, EXPECT_CONTAINS

namespace tessera::jobs::ckpt_test {

namespace fs = std::filesystem;
using datasets::testing::ThrownMessage;
using io::Hdf5Handle;
using io::Hdf5Lock;

// ---- model and optimizer state ----------------------------------------------------------------

enum class OptKind { kNone, kAdam, kAdamW, kSgdMomentum, kRmsprop };

inline const char* OptName(OptKind k) {
  switch (k) {
    case OptKind::kNone: return "none";
    case OptKind::kAdam: return "adam";
    case OptKind::kAdamW: return "adamw";
    case OptKind::kSgdMomentum: return "sgd";
    case OptKind::kRmsprop: return "rmsprop";
  }
  return "?";
}

// A model, its flat parameters and an optimizer over them (or over the slice [opt_lo, opt_hi) of
// the flat buffers when opt_hi >= 0: the ZeRO-style shard one rank owns).
struct State {
  std::unique_ptr<nn::Sequential> net;
  std::unique_ptr<nn::FlatParameters> params;
  std::unique_ptr<optim::Optimizer> opt;
  int64_t opt_base = 0;
  CheckpointLayout Layout() { return MakeCheckpointLayout(*params, opt.get(), opt_base); }
};

inline models::MlpConfig Mlp(std::vector<int64_t> hidden = {16, 12}) {
  models::MlpConfig c;
  c.in_features = 8;
  c.hidden = std::move(hidden);
  c.out_features = 3;
  return c;
}

inline models::CnnConfig Cnn() {
  models::CnnConfig c;
  c.in_channels = 2;
  c.height = c.width = 8;
  c.channels = {3, 4};
  c.hidden = {10};
  c.out_features = 3;
  return c;
}

// Fills the gradients of every parameter (not the padding) with N(0, 1) draws.
inline void RandomGrads(nn::FlatParameters& p, PhiloxGenerator& g) {
  p.ZeroGrad();
  for (const auto& e : p.entries()) {
    for (int64_t i = 0; i < e.numel; ++i) {
      if (p.grads().dtype() == DType::kF64) p.grads().data<double>()[e.offset + i] = g.Normal();
      else p.grads().data<float>()[e.offset + i] = static_cast<float>(g.Normal());
    }
  }
}

// Builds the model from `seed` and takes `steps` optimizer steps on random gradients, so that
// every parameter and every state tensor holds non-trivial values.
inline State MakeState(std::unique_ptr<nn::Sequential> net, uint64_t seed, OptKind kind, int steps,
                DType dtype = DType::kF32, int64_t opt_lo = 0, int64_t opt_hi = -1) {
  State s;
  s.net = std::move(net);
  s.params = std::make_unique<nn::FlatParameters>(*s.net, Device::CPU(), dtype, seed);
  Tensor pv = s.params->values(), pg = s.params->grads();
  if (opt_hi >= 0) {
    pv = pv.Slice0(opt_lo, opt_hi);
    pg = pg.Slice0(opt_lo, opt_hi);
    s.opt_base = opt_lo;
  }
  switch (kind) {
    case OptKind::kNone: break;
    case OptKind::kAdam: s.opt = std::make_unique<optim::Adam>(pv, pg); break;
    case OptKind::kAdamW: s.opt = std::make_unique<optim::AdamW>(pv, pg); break;
    case OptKind::kSgdMomentum: {
      optim::SgdOptions o;
      o.momentum = 0.9;
      s.opt = std::make_unique<optim::Sgd>(pv, pg, o);
      break;
    }
    case OptKind::kRmsprop: {
      optim::RmspropOptions o;
      o.momentum = 0.5;
      o.centered = true;
      s.opt = std::make_unique<optim::Rmsprop>(pv, pg, o);
      break;
    }
  }
  PhiloxGenerator g(seed * 7919 + 1);
  for (int i = 0; i < steps && s.opt; ++i) {
    RandomGrads(*s.params, g);
    s.opt->Step(0.01);
  }
  return s;
}

inline State MakeMlp(uint64_t seed, OptKind kind, int steps, DType dtype = DType::kF32) {
  return MakeState(models::BuildMlp(Mlp()), seed, kind, steps, dtype);
}

// The bytes of flat position `pos` of layout buffer `b`.
inline const char* BytesAt(const CheckpointLayout& l, int b, int64_t pos) {
  const CheckpointLayout::Buffer& buf = l.buffers[b];
  return static_cast<const char*>(buf.data.raw_data()) + (pos - buf.base) * SizeOf(buf.data.dtype());
}

// The path of the first entry whose bytes differ between two layouts of the same model (each
// holding every entry whole), or "" when all are bitwise equal.
inline std::string FirstDifference(const CheckpointLayout& want, const CheckpointLayout& got) {
  if (want.entries.size() != got.entries.size()) return "(different entry counts)";
  for (size_t i = 0; i < want.entries.size(); ++i) {
    const auto& w = want.entries[i];
    const auto& g = got.entries[i];
    if (w.path != g.path || w.shape != g.shape) return "(different entries: " + w.path + " vs " + g.path + ")";
    const DType dt = want.buffers[w.buffer].data.dtype();
    if (got.buffers[g.buffer].data.dtype() != dt) return w.path + " (dtype)";
    const size_t n = static_cast<size_t>(NumElements(w.shape)) * SizeOf(dt);
    if (std::memcmp(BytesAt(want, w.buffer, w.offset), BytesAt(got, g.buffer, g.offset), n) != 0) return w.path;
  }
  return "";
}

inline int64_t TensorBytes(const CheckpointLayout& l) {
  int64_t n = 0;
  for (const auto& e : l.entries) n += NumElements(e.shape) * static_cast<int64_t>(SizeOf(l.buffers[e.buffer].data.dtype()));
  return n;
}

inline CheckpointMeta MakeMeta(int64_t step, const optim::Optimizer* opt) {
  CheckpointMeta m;
  m.tessera_version = "test";
  m.step = step;
  m.steps_per_epoch = 7;
  m.epoch = step / 7;
  m.step_in_epoch = step % 7;
  m.global_batch = 32;
  m.samples_seen = step * 32;
  m.seed = 0xF00DFACECAFEBEEFull;  // the top bit set: stored as int64, must come back unchanged
  m.rank_next_example = {step * 32 + 5};
  m.world_size = 1;
  m.optimizer = opt ? opt->name() : "";
  m.optimizer_step = opt ? opt->step_count() : 0;
  m.lr_schedule = "cosine(lr=0.001, warmup=100, total=1000, min_lr=0)";
  m.lr = 0.00123;
  m.job_spec = "name: \"ckpt \\\"test\\\"\"\nmodel {\n  mlp { in_features: 8 hidden: 16 hidden: 12 }\n}\n# \xc3\xbcnicode \xe2\x9c\x93\n";
  return m;  // dtype: Save takes it from the parameters
}

// ---- raw HDF5 (always under the HDF5 lock) ----------------------------------------------------

#define CHECK_H5(call, where) TESSERA_H5_CHECK(IoError, call, where)

// The byte offset in the file of dataset `dataset`'s data (contiguous layout).
inline int64_t DataOffset(const std::string& file, const std::string& dataset) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle d(CHECK_H5(H5Dopen2(f.get(), dataset.c_str(), H5P_DEFAULT), file + ": " + dataset), H5Dclose);
  haddr_t a = H5Dget_offset(d.get());
  if (a == HADDR_UNDEF) ADD_FAILURE() << file << ": " << dataset << ": no contiguous storage";
  return a == HADDR_UNDEF ? -1 : static_cast<int64_t>(a);
}

inline bool LinkExists(const std::string& file, const std::string& name) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), file), H5Fclose);
  return CHECK_H5(H5Lexists(f.get(), name.c_str(), H5P_DEFAULT), file) > 0;
}

inline void RewriteRootI64(const std::string& file, const char* name, int64_t value) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle a(CHECK_H5(H5Aopen(f.get(), name, H5P_DEFAULT), file + " @" + name), H5Aclose);
  CHECK_H5(H5Awrite(a.get(), H5T_NATIVE_INT64, &value), file + " @" + name);
  a.Reset();
  ASSERT_GE(f.Close(), 0);
}

inline std::vector<uint64_t> ReadU64Dataset(const std::string& file, const std::string& dataset, std::vector<hsize_t>* dims) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle d(CHECK_H5(H5Dopen2(f.get(), dataset.c_str(), H5P_DEFAULT), file + ": " + dataset), H5Dclose);
  Hdf5Handle space(CHECK_H5(H5Dget_space(d.get()), file), H5Sclose);
  int nd = CHECK_H5(H5Sget_simple_extent_ndims(space.get()), file);
  dims->assign(nd, 0);
  CHECK_H5(H5Sget_simple_extent_dims(space.get(), dims->data(), nullptr), file);
  hsize_t n = 1;
  for (hsize_t x : *dims) n *= x;
  std::vector<uint64_t> out(n);
  CHECK_H5(H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), file + ": " + dataset);
  return out;
}

inline uint32_t CrcAttr(const std::string& file, const std::string& dataset) {
  Hdf5Lock lock;
  Hdf5Handle f(CHECK_H5(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), file), H5Fclose);
  Hdf5Handle d(CHECK_H5(H5Dopen2(f.get(), dataset.c_str(), H5P_DEFAULT), file + ": " + dataset), H5Dclose);
  Hdf5Handle a(CHECK_H5(H5Aopen(d.get(), "crc32", H5P_DEFAULT), file + ": " + dataset + " @crc32"), H5Aclose);
  uint32_t v = 0;
  CHECK_H5(H5Aread(a.get(), H5T_NATIVE_UINT32, &v), file);
  return v;
}

// ---- files ------------------------------------------------------------------------------------

inline void FlipByte(const std::string& file, int64_t offset) {
  int fd = open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << file;
  unsigned char b = 0;
  ASSERT_EQ(pread(fd, &b, 1, offset), 1);
  b ^= 0x01;
  ASSERT_EQ(pwrite(fd, &b, 1, offset), 1);
  close(fd);
}

inline std::set<std::string> DirNames(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// Every test works in a fresh directory of its own, removed at the end.
class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "tessera_ckpt_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Saves `state` at `step` under `checkpoints` (a new writer) and returns the committed file.
  std::string Save(State& state, int64_t step, const std::string& checkpoints = "ckpts", int keep_last = 3) {
    CheckpointWriterOptions o;
    o.dir = Path(checkpoints);
    o.keep_last = keep_last;
    CheckpointWriter w(o);
    w.Save(state.Layout(), MakeMeta(step, state.opt.get()));
    w.Wait();
    std::vector<CheckpointSaveReport> r = w.TakeReports();
    EXPECT_EQ(r.size(), 1u);
    return r.empty() ? "" : r[0].path;
  }

  fs::path dir_;
};

// Saves a trained state, loads it into a state built from another seed (and with a fresh
// optimizer), and checks every parameter and optimizer state tensor bitwise.
inline void ExpectBitwiseRoundTrip(const std::string& path, State& saved, State& fresh) {
  CheckpointLayout want = saved.Layout(), got = fresh.Layout();
  ASSERT_EQ(want.entries.size(), got.entries.size());
  ASSERT_NE(FirstDifference(want, got), "") << "the fresh state must differ before loading";
  CheckpointInfo info = LoadCheckpoint(path, got);
  EXPECT_EQ(FirstDifference(want, got), "") << "differs after loading";
  EXPECT_EQ(info.meta.optimizer_step, saved.opt ? saved.opt->step_count() : 0);
  // Every state tensor of the optimizer is in the layout (and so was compared).
  if (saved.opt) {
    std::set<std::string> paths;
    for (const auto& e : got.entries) paths.insert(e.path);
    for (const auto& [name, state] : saved.opt->State())
      for (const auto& p : saved.params->entries())
        EXPECT_TRUE(paths.count("/optim/" + p.name + "/" + name)) << p.name << "/" << name;
  }
}

}  // namespace tessera::jobs::ckpt_test
