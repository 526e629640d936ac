// Resuming at the trainer level (docs/checkpoint-format.md, "Resuming"): damage falls back to the
// checkpoint before with a warning naming it, a newer format or another model stops the job, a
// changed batch size, seed or optimizer is warned about, and a finished run directory is left as
// it was. Also the checkpoint policy's save_final and a real every_minutes interval.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <map>
#include <set>

#include "core/io/hdf5.h"
#include "core/io/tensor_file.h"
#include "core/models.h"
#include "core/optim/optimizer.h"
#include "jobs/checkpoint.h"
#include "tests/datasets/test_util.h"  // EXPECT_CONTAINS
#include "tests/jobs/blobs_job.h"
#include "tests/jobs/checkpoint/fixture.h"  // DataOffset, FlipByte

namespace tessera::jobs {
namespace {

using namespace blobs_test;  // NOLINT: the fixtures of this suite

// Runs `job` on run directory `run` (with `spec`, or the job's own when null); what it printed
// on stderr goes to `err`, whether it returns or throws.
TrainSummary RunCapturingStderr(BlobsJob& job, const std::string& run, const JobSpec* spec, std::string* err) {
  ::testing::internal::CaptureStderr();
  try {
    TrainSummary s = job.Run(run, spec);
    *err = ::testing::internal::GetCapturedStderr();
    return s;
  } catch (...) {
    *err = ::testing::internal::GetCapturedStderr();
    throw;
  }
}

// A copy of run directory `from` as `to`, checkpoints and links included.
void CopyRun(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
}

// Every kind of damage to the newest checkpoint of a run directory makes the resume fall back to
// the one before it, with a warning naming what is wrong; the run then ends exactly as an
// uninterrupted one. A newer format is not damage: the run stops.
TEST(Trainer, AnyDamageToTheNewestCheckpointFallsBackToTheOneBefore) {
  BlobsJob job("damage");
  TrainSummary whole = job.Run("whole");
  const std::string newest = (job.dir / "whole/checkpoints/step-00000060/checkpoint.h5").string();
  ASSERT_EQ(whole.checkpoint, newest);
  struct Damage {
    const char* name;
    std::function<void(const std::string&)> apply;
    const char* warning;
  };
  const std::vector<Damage> damages = {
      {"empty file", [](const std::string& f) { fs::resize_file(f, 0); }, "is empty (0 bytes)"},
      {"truncated", [](const std::string& f) { fs::resize_file(f, fs::file_size(f) / 2); },
       "cannot be opened as HDF5 (truncated or damaged?)"},
      {"manifest not JSON",
       [](const std::string& f) {
         EditHdf5(f, [](hid_t h) {
           TESSERA_H5_CHECK(IoError, H5Ldelete(h, "manifest", H5P_DEFAULT), "manifest");
           io::WriteStringDataset(h, "manifest", "{\"tensors\": [", "test");
         });
       },
       "/manifest is not valid JSON"},
      {"attribute missing",
       [](const std::string& f) {
         EditHdf5(f, [](hid_t h) { TESSERA_H5_CHECK(IoError, H5Adelete(h, "optimizer_step"), "optimizer_step"); });
       },
       "attribute 'optimizer_step' is missing"},
      {"attribute an array",
       [](const std::string& f) {
         EditHdf5(f, [](hid_t h) {
           TESSERA_H5_CHECK(IoError, H5Adelete(h, "step"), "step");
           hsize_t n = 4;
           io::Hdf5Handle space(TESSERA_H5_CHECK(IoError, H5Screate_simple(1, &n, nullptr), "s"), H5Sclose);
           io::Hdf5Handle a(TESSERA_H5_CHECK(IoError, H5Acreate2(h, "step", H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), "a"),
                            H5Aclose);
           int64_t v[4] = {60, 61, 62, 63};
           TESSERA_H5_CHECK(IoError, H5Awrite(a.get(), H5T_NATIVE_INT64, v), "w");
         });
       },
       "holds 4 values; expected a single integer"},
      {"format_version damaged",
       [](const std::string& f) {
         EditHdf5(f, [](hid_t h) {
           TESSERA_H5_CHECK(IoError, H5Adelete(h, "format_version"), "format_version");
           io::WriteIntAttr(h, "format_version", 3, "format_version");
         });
       },
       "the attribute is damaged"},
      {"a flipped byte in a tensor",
       [](const std::string& f) { ckpt_test::FlipByte(f, ckpt_test::DataOffset(f, "/model/1.weight") + 7); },
       "/model/1.weight: CRC-32 mismatch (stored 0x"},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.name);
    const fs::path run = job.dir / "resumed";
    CopyRun(job.dir / "whole", run);
    d.apply((run / "checkpoints/step-00000060/checkpoint.h5").string());
    fs::remove(run / "summary.json");
    std::string err;
    TrainSummary r = RunCapturingStderr(job, "resumed", nullptr, &err);
    EXPECT_EQ(r.resumed_from_step, 30);
    EXPECT_EQ(r.test_loss, whole.test_loss);
    EXPECT_NE(err.find("cannot resume from the newest checkpoint"), std::string::npos) << err;
    EXPECT_NE(err.find(d.warning), std::string::npos) << err;
  }
  // A newer format (with a manifest this build cannot read): stop, naming it (an older checkpoint
  // would not help).
  const fs::path run = job.dir / "newer";
  fs::copy(job.dir / "whole", run, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  EditHdf5((run / "checkpoints/step-00000060/checkpoint.h5").string(), [](hid_t h) {
    TESSERA_H5_CHECK(IoError, H5Adelete(h, "format_version"), "format_version");
    io::WriteIntAttr(h, "format_version", 99, "format_version");
    TESSERA_H5_CHECK(IoError, H5Ldelete(h, "manifest", H5P_DEFAULT), "manifest");
  });
  try {
    job.Run("newer");
    ADD_FAILURE() << "resumed from a checkpoint of a newer format";
  } catch (const CheckpointFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("format version 99"), std::string::npos) << e.what();
  }
}


std::set<std::string> Names(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// Another model, or an optimizer that needs state the checkpoint lacks, stops the job naming the
// tensor: an older checkpoint would not help, so there is no fall-back and nothing is written.
TEST(Resume, AnotherModelOrAnOptimizerNeedingMissingStateStopsTheJob) {
  BlobsJob job("other_model");
  job.Run("whole");
  const std::set<std::string> before = Names(job.dir / "whole/checkpoints");
  ASSERT_EQ(before, (std::set<std::string>{"latest", "step-00000030", "step-00000060"}));
  JobSpec wider = job.spec;
  wider.mutable_model()->mutable_mlp()->set_hidden(0, 24);
  std::string err;
  try {
    RunCapturingStderr(job, "whole", &wider, &err);
    ADD_FAILURE() << "resumed a 16-wide checkpoint into a 24-wide model";
  } catch (const ShapeError& e) {
    EXPECT_CONTAINS(std::string(e.what()), "step-00000060/checkpoint.h5: /model/1.weight: the checkpoint has shape "
                                           "[16, 4] but the model has shape [24, 4]");
  }
  EXPECT_EQ(err.find("cannot resume"), std::string::npos) << err;
  EXPECT_EQ(Names(job.dir / "whole/checkpoints"), before);

  JobSpec momentum = job.spec;
  momentum.mutable_optimizer()->set_kind(OptimizerSpec::SGD);
  momentum.mutable_optimizer()->set_momentum(0.9);
  try {
    job.Run("whole", &momentum);
    ADD_FAILURE() << "resumed SGD with momentum from an Adam checkpoint";
  } catch (const ShapeError& e) {
    EXPECT_CONTAINS(std::string(e.what()), "/optim/1.weight/momentum_buffer is not in the checkpoint: it holds "
                                           "optimizer state exp_avg, exp_avg_sq (optimizer 'adam')");
  }
  EXPECT_EQ(Names(job.dir / "whole/checkpoints"), before);
}

// A changed data.batch_size or train.seed changes the data order from the checkpoint on; an
// optimizer whose state the checkpoint holds (AdamW after Adam) or that needs none (plain SGD)
// continues, dropping what it does not use. Each is allowed and warned about on stderr.
TEST(Resume, AChangedBatchSizeSeedOrOptimizerIsWarnedAbout) {
  BlobsJob job("changed");
  JobSpec half = job.spec;
  half.mutable_train()->set_steps(30);
  job.Run("half", &half);  // its last checkpoint, at step 30, is where each variant continues
  struct Change {
    const char* name;
    std::function<void(JobSpec&)> edit;
    const char* warning;  // "": none at all
  };
  const std::vector<Change> changes = {
      {"nothing", [](JobSpec&) {}, ""},
      {"batch size", [](JobSpec& s) { s.mutable_data()->set_batch_size(20); },
       "tessera: warning: the checkpoint was written with data.batch_size 30, train.seed 3 and 20 steps per epoch; "
       "this job has 20, 3 and 30: the data order from here on differs from the original run's"},
      {"seed", [](JobSpec& s) { s.mutable_train()->set_seed(4); },
       "tessera: warning: the checkpoint was written with data.batch_size 30, train.seed 3 and 20 steps per epoch; "
       "this job has 30, 4 and 20"},
      {"adamw", [](JobSpec& s) { s.mutable_optimizer()->set_kind(OptimizerSpec::ADAMW); },
       "tessera: warning: the checkpoint's optimizer is adam but this job uses adamw: state it does not use is dropped"},
      {"sgd", [](JobSpec& s) { s.mutable_optimizer()->set_kind(OptimizerSpec::SGD); },
       "tessera: warning: the checkpoint's optimizer is adam but this job uses sgd: state it does not use is dropped"},
  };
  for (const Change& c : changes) {
    SCOPED_TRACE(c.name);
    CopyRun(job.dir / "half", job.dir / "resumed");
    JobSpec spec = job.spec;
    c.edit(spec);
    std::string err;
    const TrainSummary r = RunCapturingStderr(job, "resumed", &spec, &err);
    EXPECT_EQ(r.resumed_from_step, 30);
    EXPECT_EQ(r.steps, 60);
    if (*c.warning) {
      EXPECT_CONTAINS(err, c.warning);
    } else {
      EXPECT_EQ(err.find("warning"), std::string::npos) << err;
    }
  }
}

// A run directory whose checkpoint is at the last step is evaluated and left as it was: every
// file byte for byte and every link (the lock file records only who last held it).
TEST(Resume, AFinishedRunDirectoryIsLeftAsItWas) {
  BlobsJob job("finished");
  const TrainSummary first = job.Run("whole");
  auto snapshot = [&] {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(job.dir / "whole")) {
      const std::string rel = e.path().lexically_relative(job.dir / "whole").string();
      if (e.is_symlink()) files[rel] = "-> " + fs::read_symlink(e.path()).string();
      else if (e.is_regular_file() && rel != ".lock")
        files[rel] = std::string(std::istreambuf_iterator<char>(std::ifstream(e.path(), std::ios::binary).rdbuf()), {});
      else if (e.is_directory()) files[rel] = "(directory)";
    }
    return files;
  };
  const auto before = snapshot();
  for (const char* f : {"summary.json", "metrics.jsonl", "checkpoints/latest"})
    ASSERT_TRUE(before.count(f)) << f << " not in " << ::testing::PrintToString(before.size());
  const TrainSummary again = job.Run("whole");
  EXPECT_EQ(again.resumed_from_step, 60);
  EXPECT_EQ(again.test_loss, first.test_loss);
  const auto after = snapshot();
  for (const auto& [name, bytes] : before) {
    auto it = after.find(name);
    if (it == after.end()) ADD_FAILURE() << name << " was removed";
    else EXPECT_TRUE(it->second == bytes) << name << " changed";
  }
  for (const auto& [name, bytes] : after)
    if (!before.count(name)) ADD_FAILURE() << name << " was added";
}

// save_final=false: the last step is saved only if every_steps falls on it.
TEST(Resume, SaveFinalFalseLeavesTheLastStepToEverySteps) {
  BlobsJob job("save_final");
  JobSpec spec = job.spec;
  spec.mutable_train()->set_steps(50);  // checkpoints every 30
  job.Run("final", &spec);
  EXPECT_EQ(Names(job.dir / "final/checkpoints"), (std::set<std::string>{"latest", "step-00000030", "step-00000050"}));
  spec.mutable_checkpoint()->set_save_final(false);
  job.Run("no_final", &spec);
  EXPECT_EQ(Names(job.dir / "no_final/checkpoints"), (std::set<std::string>{"latest", "step-00000030"}));
  EXPECT_EQ(fs::read_symlink(job.dir / "no_final/checkpoints/latest").string(), "step-00000030/checkpoint.h5");
}

// every_minutes, with an interval shorter than the run: at a log line, a checkpoint starts when
// the interval has passed since the last one started (or since the first step), and not before.
// The elapsed time of each log line is in metrics.jsonl.
TEST(Resume, EveryMinutesSavesAtTheFirstLogLineAfterEachInterval) {
  BlobsJob job("every_minutes");
  JobSpec spec = job.spec;
  const double interval_s = 0.25;
  spec.mutable_model()->mutable_mlp()->set_hidden(0, 512);  // slow enough steps: the run lasts seconds
  spec.mutable_model()->mutable_mlp()->add_hidden(512);
  spec.mutable_train()->set_steps(2700);  // about 2.5 s on a fast core: several intervals on any machine
  spec.mutable_train()->set_log_every_steps(5);
  spec.mutable_train()->set_eval_every_steps(0);
  spec.mutable_checkpoint()->set_every_steps(0);
  spec.mutable_checkpoint()->set_save_final(false);
  spec.mutable_checkpoint()->set_keep_last(2);
  spec.mutable_checkpoint()->set_every_minutes(interval_s / 60);
  job.Run("a", &spec);
  std::map<int64_t, double> elapsed;  // log step -> seconds since the start
  std::map<int64_t, double> stall;    // checkpoint step -> the save's stall
  size_t committed = 0;
  for (const json& e : ReadJsonLines(job.dir / "a/metrics.jsonl")) {
    if (e["event"] == "train") elapsed[e["step"].get<int64_t>()] = e["elapsed_seconds"].get<double>();
    if (e["event"] == "checkpoint_started") stall[e["step"].get<int64_t>()] = e["stall_seconds"].get<double>();
    if (e["event"] == "checkpoint") ++committed;
  }
  ASSERT_GE(elapsed.rbegin()->second, 4 * interval_s) << "the run must last several intervals";
  std::printf("every_minutes: %zu saves in %.2f s\n", stall.size(), elapsed.rbegin()->second);
  ASSERT_GE(stall.size(), 3u);
  double last = -1;  // the time the last save started (-1: none yet; the interval counts from the first step)
  double last_stall = 0;
  for (const auto& [step, t] : elapsed) {
    const bool saved = stall.count(step) > 0;
    if (last >= 0) {
      // Due when t - (last + its stall) >= interval; allow 0.1 s for the work between the log
      // line's clock reading and the save's on a loaded machine.
      if (saved) EXPECT_GE(t - last, interval_s) << "step " << step << ": saved too early";
      else EXPECT_LT(t - last, interval_s + last_stall + 0.1) << "step " << step << ": a save was due";
    }
    if (saved) {
      last = t;
      last_stall = stall[step];
    }
  }
  EXPECT_GE(elapsed.at(stall.begin()->first), interval_s) << "the first save came before one interval had passed";
  EXPECT_EQ(committed, stall.size()) << "every save committed";
}

// A checkpoint that is intact by every check of the format but holds a NaN weight (written by
// something other than the trainer, which refuses to save one) is refused at resume, naming the
// tensor and the file; nothing is trained or saved.
TEST(Resume, ACheckpointHoldingANanWeightIsRefused) {
  BlobsJob job("nan");
  job.Run("whole");
  models::MlpConfig c;  // the job's model
  c.in_features = 4;
  c.hidden = {16};
  c.out_features = 3;
  auto net = models::BuildMlp(c);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 1);
  optim::Adam adam(params.values(), params.grads());
  CheckpointLayout layout = MakeCheckpointLayout(params, &adam);
  const CheckpointInfo info = LoadCheckpoint((job.dir / "whole/checkpoints/step-00000030/checkpoint.h5").string(), layout);
  params.values().data<float>()[params.Find("3.weight").offset + 2] = std::numeric_limits<float>::quiet_NaN();
  CheckpointWriterOptions wo;
  wo.dir = (job.dir / "poisoned").string();
  CheckpointWriter writer(wo);
  writer.Save(layout, info.meta);
  writer.Wait();
  const std::string poisoned = (job.dir / "poisoned/step-00000030/checkpoint.h5").string();
  ASSERT_TRUE(VerifyCheckpoint(poisoned).empty());

  TrainerOptions o;
  o.run_dir = (job.dir / "fresh").string();
  o.progress = false;
  o.resume_from = poisoned;
  try {
    Train(job.spec, o);
    ADD_FAILURE() << "resumed from NaN weights";
  } catch (const Error& e) {
    EXPECT_CONTAINS(std::string(e.what()), "the weights hold NaN or Inf values (first in 3.weight) in the checkpoint "
                                           "to resume from, " + poisoned + "; nothing is saved or published. The file "
                                           "is intact (its checksums match)");
  }
  EXPECT_FALSE(fs::exists(job.dir / "fresh/checkpoints/step-00000060"));
  EXPECT_FALSE(fs::exists(job.dir / "fresh/summary.json"));
}

}  // namespace
}  // namespace tessera::jobs
