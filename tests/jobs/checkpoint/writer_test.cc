// The checkpoint writer: several ranks writing one checkpoint over an in-process process
// group, the asynchronous writer (snapshots, reports, failures, the same step saved again), and
// no HDF5 call outside the HDF5 lock.
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "dist/process_group.h"
#include "dist/threads/thread_process_group.h"
#include "tests/jobs/checkpoint/fixture.h"

namespace tessera::jobs::ckpt_test {
namespace {

// ---- several ranks writing one checkpoint ----------------------------------------------------

// Each rank holds only the slice it owns of `full`, [r n / w, (r + 1) n / w): it cannot write more.
std::vector<CheckpointLayout> RankSlices(const CheckpointLayout& full, int world) {
  std::vector<CheckpointLayout> layouts;
  const int64_t n = full.flat_size;
  for (int r = 0; r < world; ++r) {
    const int64_t lo = n * r / world, hi = n * (r + 1) / world;
    CheckpointLayout l = full;
    for (auto& b : l.buffers) b = {b.data.Slice0(lo, hi).Clone(), lo};
    layouts.push_back(l);
  }
  return layouts;
}

struct ThreadSave {
  std::vector<std::string> errors;  // per rank; empty when it saved
  std::vector<std::vector<CheckpointSaveReport>> reports;
};

// Rank r of layouts.size() saves layouts[r] as step 3 of `opt`'s state on its own thread, all
// over one in-process group, with writer options `o` (dir, timeouts). With `rank0_last`, rank 0
// calls Save only after every other rank's Save has returned, so they all wait in the first
// collective for rank 0's snapshot and its creation of the file.
ThreadSave SaveOnThreads(const std::vector<CheckpointLayout>& layouts, const optim::Optimizer* opt,
                         const CheckpointWriterOptions& o, bool rank0_last = false) {
  const int world = static_cast<int>(layouts.size());
  std::vector<std::unique_ptr<dist::ProcessGroup>> groups = dist::MakeThreadGroups(world);
  ThreadSave out;
  out.errors.resize(world);
  out.reports.resize(world);
  std::mutex mu;
  std::condition_variable cv;
  int saved = 0;  // ranks other than 0 whose Save returned
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        if (rank0_last && r == 0) {
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [&] { return saved == world - 1; });
        }
        CheckpointWriterOptions ro = o;
        ro.group = groups[r].get();
        CheckpointWriter w(ro);
        CheckpointMeta m = MakeMeta(3, opt);
        m.world_size = world;
        m.data_parallel = world;
        m.zero_stage = 1;
        m.rank_next_example.clear();
        for (int k = 0; k < world; ++k) m.rank_next_example.push_back(100 + k);
        // No lock here: the ranks' Saves run at once, as they would in one process of several
        // ranks; Save() makes no HDF5 call on the caller's thread
        // (SaveMakesNoHdf5CallOutsideTheHdf5Lock), and each background write takes the lock itself.
        w.Save(layouts[r], m);
        if (r != 0) {
          std::lock_guard<std::mutex> l(mu);
          ++saved;
          cv.notify_all();
        }
        w.Wait();
        out.reports[r] = w.TakeReports();
      } catch (const std::exception& e) {
        out.errors[r] = e.what();
        if (r != 0) {  // rank 0 must not wait for a Save that failed
          std::lock_guard<std::mutex> l(mu);
          ++saved;
          cv.notify_all();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

TEST_F(CheckpointTest, SeveralRanksEachWriteTheirSliceOfOneCheckpoint) {
  State saved = MakeMlp(51, OptKind::kAdam, 3);
  const CheckpointLayout full = saved.Layout();
  for (int world : {2, 3, 5}) {
    SCOPED_TRACE("world " + std::to_string(world));
    CheckpointWriterOptions o;
    o.dir = Path("world" + std::to_string(world));
    o.timeout_s = 10;  // a rank that fails alone makes the others time out, not hang
    ThreadSave run = SaveOnThreads(RankSlices(full, world), saved.opt.get(), o);
    for (int r = 0; r < world; ++r)
      if (!run.errors[r].empty()) ADD_FAILURE() << "rank " << r << ": " << run.errors[r];
    const auto& reports = run.reports;
    int64_t rank_bytes = 0;
    for (int r = 0; r < world; ++r) {
      ASSERT_EQ(reports[r].size(), 1u) << "rank " << r;
      EXPECT_EQ(reports[r][0].step, 3);
      EXPECT_EQ(reports[r][0].bytes, TensorBytes(full));
      EXPECT_EQ(reports[r][0].path.empty(), r != 0);
      rank_bytes += reports[r][0].rank_bytes;
    }
    EXPECT_EQ(rank_bytes, TensorBytes(full)) << "every byte written exactly once";
    const std::string path = reports[0][0].path;
    EXPECT_TRUE(VerifyCheckpoint(path).empty());
    CheckpointInfo info = ReadCheckpointInfo(path);
    EXPECT_EQ(info.meta.world_size, world);
    EXPECT_EQ(info.meta.zero_stage, 1);
    {  // The layout attribute says how the ranks shared the writing.
      Hdf5Lock lock;
      Hdf5Handle f(CHECK_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path), H5Fclose);
      const std::string w = std::to_string(world);
      EXPECT_EQ(io::ReadStringAttr(f.get(), "layout", path), "each of the " + w + " ranks wrote a contiguous 1/" + w +
                                                                 " of the flat buffers (" + std::to_string(full.flat_size) +
                                                                 " elements)");
    }
    State fresh = MakeMlp(52, OptKind::kAdam, 0);
    ExpectBitwiseRoundTrip(path, saved, fresh);
    // The CRC combined from the ranks' pieces is zlib's CRC of the whole tensor.
    for (const auto& e : full.entries) {
      const size_t bytes = static_cast<size_t>(NumElements(e.shape)) * 4;
      uint32_t crc = static_cast<uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(BytesAt(full, e.buffer, e.offset)), bytes));
      EXPECT_EQ(CrcAttr(path, e.path), crc) << e.path;
    }
    std::vector<hsize_t> dims;
    std::vector<uint64_t> rs = ReadU64Dataset(path, "/rng/rank_state", &dims);
    EXPECT_EQ(dims, (std::vector<hsize_t>{static_cast<hsize_t>(world), 2}));
    for (int r = 0; r < world && rs.size() == 2u * world; ++r) {
      EXPECT_EQ(rs[2 * r], MakeMeta(3, nullptr).seed);
      EXPECT_EQ(rs[2 * r + 1], 100u + r);
    }
  }
}

// The ranks of a save wait in collectives for each other's I/O (rank 1 here for rank 0's snapshot
// of 100 MB and its creation of the file), so a save's deadlines grow with its bytes: a 200 MB
// save on 1 ms collectives succeeds with the default floor of 10 MB/s (20 s more), and times out
// without one.
TEST_F(CheckpointTest, SaveDeadlinesScaleWithTheCheckpointsBytes) {
  State saved = MakeState(models::BuildMlp(Mlp({4096, 4096})), 53, OptKind::kAdam, 1);
  const CheckpointLayout full = saved.Layout();
  ASSERT_GT(TensorBytes(full), 190'000'000);
  const std::vector<CheckpointLayout> slices = RankSlices(full, 2);
  CheckpointWriterOptions o;
  o.timeout_s = 0.001;
  o.dir = Path("scaled");
  ThreadSave run = SaveOnThreads(slices, saved.opt.get(), o, /*rank0_last=*/true);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(run.errors[r], "") << "rank " << r;
  ASSERT_EQ(run.reports[0].size(), 1u);
  EXPECT_TRUE(VerifyCheckpoint(run.reports[0][0].path).empty());
  // The same save with the deadline alone: a rank waiting for the other's I/O gives up.
  o.min_io_bytes_per_s = 1e18;
  o.dir = Path("unscaled");
  run = SaveOnThreads(slices, saved.opt.get(), o, /*rank0_last=*/true);
  EXPECT_CONTAINS(run.errors[1], "did not complete within 0.001 s: ranks that did not arrive: [0]");
}

// ---- the asynchronous writer ------------------------------------------------------------------

// Clones of a layout's buffers: the state as it is now.
CheckpointLayout Snapshot(const CheckpointLayout& l) {
  CheckpointLayout s = l;
  for (auto& b : s.buffers) b.data = b.data.Clone();
  return s;
}

TEST_F(CheckpointTest, WriterSnapshotsAtSaveAndReportsEachCommit) {
  State s = MakeMlp(181, OptKind::kAdam, 2);
  const CheckpointLayout l = s.Layout();
  PhiloxGenerator g(5);
  auto train_on = [&] {
    RandomGrads(*s.params, g);
    s.opt->Step(0.01);
  };
  CheckpointWriterOptions o;
  o.dir = Path("ckpts");
  CheckpointWriter w(o);
  // Save copies the state before it returns, so training may go on at once: each checkpoint
  // holds the state at its Save call. The second Save waits for the first write.
  const CheckpointLayout at1 = Snapshot(l);
  EXPECT_GE(w.Save(l, MakeMeta(2, s.opt.get())), 0);
  train_on();
  const CheckpointLayout at2 = Snapshot(l);
  ASSERT_NE(FirstDifference(at1, at2), "");
  EXPECT_GE(w.Save(l, MakeMeta(3, s.opt.get())), 0);
  train_on();
  w.Wait();
  EXPECT_FALSE(w.busy());
  std::vector<CheckpointSaveReport> r = w.TakeReports();
  ASSERT_EQ(r.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(r[i].step, i + 2);
    EXPECT_EQ(r[i].path, Path("ckpts/step-0000000" + std::to_string(i + 2) + "/checkpoint.h5"));
    EXPECT_EQ(r[i].bytes, TensorBytes(l));
    EXPECT_EQ(r[i].rank_bytes, TensorBytes(l));
    EXPECT_GE(r[i].write_seconds, 0);
  }
  EXPECT_TRUE(w.TakeReports().empty());
  for (int i = 0; i < 2; ++i) {
    State fresh = MakeMlp(182, OptKind::kAdam, 0);
    CheckpointLayout got = fresh.Layout();
    CheckpointInfo info = LoadCheckpoint(r[i].path, got);
    EXPECT_EQ(info.meta.step, i + 2);
    EXPECT_EQ(info.meta.optimizer_step, 2 + i);
    EXPECT_EQ(FirstDifference(i == 0 ? at1 : at2, got), "") << "checkpoint " << i + 2;
  }
}

TEST_F(CheckpointTest, SavingTheSameStepAgainReplacesIt) {
  State s = MakeMlp(185, OptKind::kAdam, 1);
  const std::string first = Save(s, 4);
  PhiloxGenerator g(6);
  RandomGrads(*s.params, g);
  s.opt->Step(0.01);
  const std::string second = Save(s, 4);
  EXPECT_EQ(first, second);
  State fresh = MakeMlp(186, OptKind::kAdam, 0);
  LoadCheckpoint(second, fresh.Layout());
  EXPECT_EQ(FirstDifference(s.Layout(), fresh.Layout()), "");
  EXPECT_EQ(DirNames(Path("ckpts")), (std::set<std::string>{"latest", "step-00000004"}));
}

TEST_F(CheckpointTest, BackgroundFailuresAreRethrownWithThePath) {
  State s = MakeMlp(191, OptKind::kAdam, 1);
  std::ofstream(Path("a-file")) << "not a directory\n";
  for (const std::string& dir : {Path("a-file"), Path("a-file/checkpoints")}) {
    SCOPED_TRACE(dir);
    CheckpointWriterOptions o;
    o.dir = dir;
    {  // Save starts the write and returns; Wait() rethrows its failure, once.
      CheckpointWriter w(o);
      w.Save(s.Layout(), MakeMeta(1, s.opt.get()));
      EXPECT_CONTAINS(ThrownMessage<IoError>([&] { w.Wait(); }), dir);
      w.Wait();
      w.ThrowIfFailed();
      EXPECT_TRUE(w.TakeReports().empty());
    }
    {  // The next Save rethrows it too; ThrowIfFailed() once the write has finished.
      CheckpointWriter w(o);
      w.Save(s.Layout(), MakeMeta(1, s.opt.get()));
      EXPECT_CONTAINS(ThrownMessage<IoError>([&] { w.Save(s.Layout(), MakeMeta(2, s.opt.get())); }), dir);
      w.Save(s.Layout(), MakeMeta(3, s.opt.get()));
      for (int i = 0; i < 1000 && w.busy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      ASSERT_FALSE(w.busy());
      EXPECT_CONTAINS(ThrownMessage<IoError>([&] { w.ThrowIfFailed(); }), dir);
    }
    EXPECT_TRUE(fs::is_regular_file(Path("a-file")));
  }
  // A layout whose buffers do not hold the flat range this rank writes is refused at once.
  CheckpointWriterOptions o;
  o.dir = Path("ckpts");
  CheckpointWriter w(o);
  CheckpointLayout l = s.Layout();
  l.buffers[1].data = l.buffers[1].data.Slice0(0, 10);
  std::string msg = ThrownMessage<ValueError>([&] { w.Save(l, MakeMeta(1, s.opt.get())); });
  EXPECT_CONTAINS(msg, "checkpoint buffer 1");
  EXPECT_FALSE(fs::exists(Path("ckpts/step-00000001")));
}

// ---- HDF5 calls outside the HDF5 lock -----------------------------------------------------------

// Every HDF5 call in the process must hold io::Hdf5Mutex() (core/io/hdf5.h): Debian's
// HDF5 is not thread-safe. This binary interposes H5open(), which HDF5 runs at the start of every
// API call that may initialise the library and which every predefined type (H5T_IEEE_F32LE,
// H5T_NATIVE_FLOAT, ...) calls when it is used. While a thread is watched, an H5open() on it
// while it does not hold the lock is counted.
std::atomic<std::thread::id> g_watched_thread{};
std::atomic<int> g_unlocked_hdf5_calls{0};

// Save() once checked each buffer's dtype through HDF5 (H5T_IEEE_F32LE calls H5open()) on the
// caller's thread without the lock: several writers saving at once before HDF5 was initialised
// crashed in H5I_register. Save() now checks dtypes without HDF5; this test keeps it so.
TEST_F(CheckpointTest, SaveMakesNoHdf5CallOutsideTheHdf5Lock) {
  State s = MakeMlp(201, OptKind::kAdam, 1);
  CheckpointWriterOptions o;
  o.dir = Path("ckpts");
  CheckpointWriter w(o);
  {  // The detector works: an HDF5 type used without the lock is counted; with it, not.
    g_unlocked_hdf5_calls = 0;
    g_watched_thread = std::this_thread::get_id();
    hid_t t = H5T_NATIVE_FLOAT;
    g_watched_thread = std::thread::id();
    EXPECT_GE(t, 0);
    ASSERT_EQ(g_unlocked_hdf5_calls.load(), 1) << "the H5open() interposer is not in effect";
    g_unlocked_hdf5_calls = 0;
    Hdf5Lock lock;
    g_watched_thread = std::this_thread::get_id();
    t = H5T_NATIVE_FLOAT;
    g_watched_thread = std::thread::id();
    ASSERT_EQ(g_unlocked_hdf5_calls.load(), 0);
  }
  g_watched_thread = std::this_thread::get_id();
  w.Save(s.Layout(), MakeMeta(1, s.opt.get()));  // the background thread is not watched
  g_watched_thread = std::thread::id();
  w.Wait();
  EXPECT_EQ(g_unlocked_hdf5_calls.load(), 0)
      << "CheckpointWriter::Save made " << g_unlocked_hdf5_calls.load()
      << " HDF5 call(s) (H5open, through FileType's H5T_IEEE_F32LE) on the caller's thread without holding "
         "io::Hdf5Mutex()";
}

}  // namespace
}  // namespace tessera::jobs::ckpt_test

// The interposer: counts H5open() calls on the watched thread made while it does not hold the HDF5
// lock (whether or not another thread holds it), and forwards every call to HDF5's own H5open().
extern "C" herr_t H5open(void) {
  using tessera::jobs::ckpt_test::g_watched_thread;
  if (g_watched_thread.load() == std::this_thread::get_id() && !tessera::io::Hdf5LockHeldHere())
    ++tessera::jobs::ckpt_test::g_unlocked_hdf5_calls;
  static const auto real = reinterpret_cast<herr_t (*)(void)>(dlsym(RTLD_NEXT, "H5open"));
  return real ? real() : -1;
}
