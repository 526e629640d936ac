// Checkpoints on disk: the committed files, `latest`, retention, partial directories left by
// a crash, and a checkpoint moved aside and put back.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/jobs/checkpoint/fixture.h"

namespace tessera::jobs::ckpt_test {
namespace {

TEST_F(CheckpointTest, CommittedFilesLatestLinkAndRetention) {
  State s = MakeMlp(71, OptKind::kAdam, 1);
  CheckpointWriterOptions o;
  o.dir = Path("run/checkpoints");
  o.keep_last = 2;
  std::vector<std::string> paths;
  {
    CheckpointWriter w(o);
    for (int step = 1; step <= 5; ++step) {
      w.Save(s.Layout(), MakeMeta(step, s.opt.get()));
      w.Wait();
      for (const auto& r : w.TakeReports()) paths.push_back(r.path);
      // After each commit: `latest` names it and at most keep_last step directories remain.
      const fs::path latest = fs::path(o.dir) / "latest";
      ASSERT_TRUE(fs::is_symlink(latest));
      char name[32];
      std::snprintf(name, sizeof name, "step-%08d", step);
      EXPECT_EQ(fs::read_symlink(latest), fs::path(name) / "checkpoint.h5");
      EXPECT_EQ(ReadCheckpointInfo(latest.string()).meta.step, step);
    }
  }
  ASSERT_EQ(paths.size(), 5u);
  EXPECT_EQ(paths[4], Path("run/checkpoints/step-00000005/checkpoint.h5"));
  EXPECT_TRUE(fs::is_regular_file(Path("run/checkpoints/step-00000005/checkpoint.h5")));
  // Only the newest two step directories, `latest`, and nothing partial or temporary.
  EXPECT_EQ(DirNames(Path("run/checkpoints")), (std::set<std::string>{"latest", "step-00000004", "step-00000005"}));
  EXPECT_EQ(DirNames(Path("run/checkpoints/step-00000005")), (std::set<std::string>{"checkpoint.h5"}));

  // Every way of naming the newest checkpoint resolves to it.
  const std::string newest = Path("run/checkpoints/step-00000005/checkpoint.h5");
  EXPECT_EQ(FindLatestCheckpoint(Path("run/checkpoints")), newest);
  EXPECT_EQ(ResolveCheckpoint(Path("run")), newest);
  EXPECT_EQ(ResolveCheckpoint(Path("run/checkpoints")), newest);
  EXPECT_EQ(ResolveCheckpoint(Path("run/checkpoints/step-00000004")), Path("run/checkpoints/step-00000004/checkpoint.h5"));
  EXPECT_EQ(ResolveCheckpoint(newest), newest);
  EXPECT_EQ(FindLatestCheckpoint(Path("nothing-here")), "");
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ResolveCheckpoint(Path("nothing-here")); }), "no such");
  fs::create_directories(Path("empty-run"));
  EXPECT_CONTAINS(ThrownMessage<IoError>([&] { ResolveCheckpoint(Path("empty-run")); }), "no checkpoint there");
}

TEST_F(CheckpointTest, PartialDirectoriesAreRemovedAndIgnoredAndLatestFallsBack) {
  State s = MakeMlp(81, OptKind::kSgdMomentum, 1);
  const std::string ckpts = Path("ckpts");
  Save(s, 3);
  Save(s, 5);
  // Debris a crash leaves behind, one with a higher step, and a step directory without a file.
  fs::create_directories(ckpts + "/.step-00000009.partial");
  std::ofstream(ckpts + "/.step-00000009.partial/checkpoint.h5") << "half-written";
  fs::create_directories(ckpts + "/.step-00000002.deleting");
  fs::create_symlink("step-00000009/checkpoint.h5", ckpts + "/.latest.tmp");
  fs::create_directories(ckpts + "/step-00000007");
  const std::string five = ckpts + "/step-00000005/checkpoint.h5";
  EXPECT_EQ(FindLatestCheckpoint(ckpts), five);

  RemovePartialCheckpoints(ckpts);
  EXPECT_EQ(DirNames(ckpts), (std::set<std::string>{"latest", "step-00000003", "step-00000005", "step-00000007"}));

  // Without `latest` (or with a dangling one) the highest step directory holding a file wins.
  fs::remove(ckpts + "/latest");
  EXPECT_EQ(FindLatestCheckpoint(ckpts), five);
  fs::create_symlink("step-00000042/checkpoint.h5", ckpts + "/latest");
  EXPECT_EQ(FindLatestCheckpoint(ckpts), five);
  fs::remove_all(ckpts + "/step-00000005");
  EXPECT_EQ(FindLatestCheckpoint(ckpts), ckpts + "/step-00000003/checkpoint.h5");
  RemovePartialCheckpoints(Path("does-not-exist"));  // no error
}

// A committed checkpoint moved aside for a new save of the same step (where the file system cannot
// swap directories) is put back when the crash came before the new one took its place, and
// dropped when the new one is in place.
TEST_F(CheckpointTest, AMovedAsideCheckpointIsPutBackAfterACrash) {
  State s = MakeMlp(85, OptKind::kAdam, 1);
  const std::string ckpts = Path("ckpts");
  Save(s, 3);
  Save(s, 5);
  fs::rename(ckpts + "/step-00000005", ckpts + "/.step-00000005.replaced");
  RemovePartialCheckpoints(ckpts);
  EXPECT_EQ(DirNames(ckpts), (std::set<std::string>{"latest", "step-00000003", "step-00000005"}));
  EXPECT_TRUE(VerifyCheckpoint(ckpts + "/latest").empty());
  fs::copy(ckpts + "/step-00000005", ckpts + "/.step-00000005.replaced");
  RemovePartialCheckpoints(ckpts);
  EXPECT_EQ(DirNames(ckpts), (std::set<std::string>{"latest", "step-00000003", "step-00000005"}));
}

}  // namespace
}  // namespace tessera::jobs::ckpt_test
