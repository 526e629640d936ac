// The `tessera` command.
//
//   tessera train JOB [--run-dir DIR] [--set FIELD=VALUE]... [--resume | --resume-from CKPT | --no-resume]
//   tessera validate JOB [--set FIELD=VALUE]...                check a job spec, run nothing
//   tessera ckpt inspect|verify PATH, tessera ckpt export PATH OUT.h5
//   tessera --version
#include <CLI/CLI.hpp>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "dist/process_group.h"
#include "jobs/checkpoint.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "launch/world.h"
#include "tessera/config.h"
#if TESSERA_USE_MPI
#include "dist/mpi/runtime.h"
#endif

namespace tessera {
namespace {

// runs/NAME-YYYYmmdd-HHMMSS; under data parallelism rank 0's clock decides, so all ranks agree.
std::string DefaultRunDir(const std::string& name, dist::ProcessGroup* group) {
  std::time_t now = std::time(nullptr);
  if (group) {
    Tensor t = Tensor::FromVector({0}, {1}, DType::kI64);
    *t.data<int64_t>() = static_cast<int64_t>(now);
    group->Broadcast(t, 0)->Wait();
    now = static_cast<std::time_t>(*t.data<int64_t>());
  }
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + name + "-" + stamp;
}

}  // namespace
}  // namespace tessera

int main(int argc, char** argv) {
  using namespace tessera;
#if TESSERA_USE_ONEDNN
  // tessera's kernels and oneDNN share OpenMP's threads. By default those threads spin for
  // milliseconds after each parallel region, which starves everything else on the cores (the
  // data loader, other ranks, other jobs): measured here, 30x slower steps on a busy machine. The
  // wait policy is read when libgomp loads, before main, so set it and start again. An explicit
  // OMP_WAIT_POLICY from the user is kept.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
  }
#endif
  CLI::App app{"tessera: train neural networks on one machine or a cluster (CPU and CUDA)"};
  app.set_version_flag("--version", std::string("tessera ") + TESSERA_VERSION +
                                        " (CUDA " + (TESSERA_USE_CUDA ? "on" : "off") + ", MPI " +
                                        (TESSERA_USE_MPI ? "on" : "off") + ")");
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  tessera train jobs/examples/fmnist_cnn.pbtxt\n"
      "  tessera train jobs/examples/fmnist_mlp.pbtxt --set train.epochs=1 --run-dir runs/quick\n"
      "  tessera validate my_job.pbtxt --set optimizer.lr=0.01\n"
      "  tessera train jobs/examples/fmnist_cnn.pbtxt --run-dir runs/a --resume   (after a crash or preemption)\n"
      "  tessera ckpt inspect runs/a    tessera ckpt verify runs/a    tessera ckpt export runs/a model.h5\n"
      "Every field of a job spec, with its default: docs/job-spec.md");

  std::string job_path, run_dir;
  std::vector<std::string> overrides;
  CLI::App* train = app.add_subcommand("train", "Run a job spec (protobuf text) and write a run directory");
  train->add_option("job", job_path, "Job spec file, e.g. jobs/examples/fmnist_cnn.pbtxt")->required();
  train->add_option("--run-dir", run_dir,
                    "Where job.pbtxt, metrics.jsonl and summary.json go (default: runs/NAME-YYYYmmdd-HHMMSS)");
  train->add_option("--set", overrides, "Override a field of the spec: --set train.epochs=1 --set optimizer.lr=0.01")
      ->type_name("FIELD=VALUE");
  bool resume = false, no_resume = false;
  std::string resume_from;
  CLI::Option* resume_opt = train->add_flag(
      "--resume", resume,
      "Continue from the newest checkpoint in the run directory, and fail if there is none (a run directory "
      "that holds a checkpoint is resumed without this flag too)");
  CLI::Option* resume_from_opt = train->add_option(
      "--resume-from", resume_from,
      "Continue from this checkpoint (a checkpoint file, a step directory, or another run's directory); the "
      "world size may differ from the one that wrote it");
  CLI::Option* no_resume_opt =
      train->add_flag("--no-resume", no_resume,
                      "Start from scratch even if the run directory holds checkpoints (the checkpoints "
                      "directory is renamed to checkpoints.earlier-TIME)");
  resume_opt->excludes(resume_from_opt)->excludes(no_resume_opt);
  resume_from_opt->excludes(no_resume_opt);
  bool no_file_check = false;
  CLI::App* validate = app.add_subcommand("validate", "Check a job spec (and overrides) without running it");
  validate->add_option("job", job_path, "Job spec file")->required();
  validate->add_option("--set", overrides, "Override a field of the spec, as for train")->type_name("FIELD=VALUE");
  validate->add_flag("--no-file-check", no_file_check, "Do not require the data files to exist");

  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect, verify or export checkpoints (HDF5; see docs/checkpoint-format.md)");
  ckpt->require_subcommand(1);
  std::string ckpt_path, export_out;
  bool as_json = false;
  CLI::App* inspect = ckpt->add_subcommand("inspect", "Print a checkpoint's step, parallel layout and tensors");
  inspect->add_option("path", ckpt_path,
                      "A checkpoint file, a step directory, a checkpoints directory or a run directory (its latest)")
      ->required();
  inspect->add_flag("--json", as_json, "Print JSON instead of text");
  CLI::App* verify = ckpt->add_subcommand("verify", "Check every tensor's CRC-32 and the manifest; exit 1 on a problem");
  verify->add_option("path", ckpt_path, "As for inspect")->required();
  CLI::App* exp = ckpt->add_subcommand(
      "export", "Write the model's tensors into one self-contained HDF5 file (what a model store publishes)");
  exp->add_option("path", ckpt_path, "As for inspect")->required();
  exp->add_option("out", export_out, "The file to write, e.g. model.h5")->required();

  CLI11_PARSE(app, argc, argv);
  bool distributed = false;
  int rank = 0;
  try {
    if (*validate) {
      jobs::JobSpec spec = jobs::LoadJobSpec(job_path, overrides, !no_file_check);
      std::printf("%s: valid\n%s", job_path.c_str(), jobs::ToText(spec).c_str());
      return 0;
    }
    if (*ckpt) {
      std::string path = jobs::ResolveCheckpoint(ckpt_path);
      if (*inspect) {
        jobs::CheckpointInfo info = jobs::ReadCheckpointInfo(path);
        if (!as_json) {
          std::printf("%s", jobs::DescribeCheckpoint(info).c_str());
          return 0;
        }
        std::printf("%s\n", jobs::CheckpointInfoJson(info).c_str());
        return 0;
      }
      if (*verify) {
        std::vector<std::string> problems = jobs::VerifyCheckpoint(path);
        for (const std::string& p : problems) std::fprintf(stderr, "tessera: %s\n", p.c_str());
        if (!problems.empty()) {
          std::fprintf(stderr, "tessera: %s: FAILED verification (%zu problem%s)\n", path.c_str(), problems.size(),
                       problems.size() == 1 ? "" : "s");
          return 1;
        }
        jobs::CheckpointInfo info = jobs::ReadCheckpointInfo(path);
        std::printf("%s: OK (step %lld, %zu tensors, every CRC-32 matches)\n", path.c_str(),
                    static_cast<long long>(info.meta.step), info.tensors.size());
        return 0;
      }
      jobs::ExportModel(path, export_out);
      std::printf("%s: exported the model of %s\n", export_out.c_str(), path.c_str());
      return 0;
    }
    if (*train) {
      launch::World world = launch::DetectWorld();
      rank = world.rank;
      std::unique_ptr<dist::ProcessGroup> group;
      if (world.distributed()) {
#if TESSERA_USE_MPI
        dist::InitMpi(&argc, &argv);
        group = dist::WorldGroup();
        distributed = true;
#else
        TESSERA_THROW(ConfigError, "launched as rank ", world.rank, " of ", world.size, " by ", world.launcher,
                      " but this tessera was built without MPI (TESSERA_USE_MPI=OFF)");
#endif
      }
      if (resume && run_dir.empty())
        TESSERA_THROW(ConfigError, "--resume continues a run directory: name it with --run-dir DIR (or give a "
                      "checkpoint with --resume-from)");
      jobs::JobSpec spec = jobs::LoadJobSpec(job_path, overrides);
      jobs::TrainerOptions o;
      o.run_dir = run_dir.empty() ? DefaultRunDir(spec.name(), group.get()) : run_dir;
      o.group = group.get();
      if (resume) o.resume = jobs::TrainerOptions::Resume::kRequire;
      if (no_resume) o.resume = jobs::TrainerOptions::Resume::kNever;
      o.resume_from = resume_from;
      const bool lead = world.rank == 0;
      if (lead)
        std::printf("tessera %s: job '%s', %d rank%s (%s), run directory %s\n", TESSERA_VERSION, spec.name().c_str(),
                    world.size, world.size == 1 ? "" : "s", world.launcher.c_str(), o.run_dir.c_str());
      jobs::TrainSummary s = jobs::Train(spec, o);
      if (lead) {
        if (s.resumed_from_step >= 0 && s.resumed_from_step == s.steps)
          std::printf("done: nothing to train (the run was complete at step %lld); test accuracy %.4f, macro F1 %.4f\n",
                      static_cast<long long>(s.steps), s.test_accuracy, s.test_f1);
        else
          std::printf("done: %lld steps in %.1f s (%.0f samples/s); test accuracy %.4f, macro F1 %.4f\n",
                      static_cast<long long>(s.steps), s.wall_seconds, s.samples_per_sec, s.test_accuracy, s.test_f1);
        std::printf("summary: %s/summary.json\n", o.run_dir.c_str());
      }
      group.reset();
#if TESSERA_USE_MPI
      if (distributed) dist::FinalizeMpi();
#endif
      return 0;
    }
  } catch (const std::exception& e) {  // tessera::Error above all; also std::filesystem_error, bad_alloc, ...
    if (distributed) std::fprintf(stderr, "tessera: error on rank %d: %s\n", rank, e.what());
    else std::fprintf(stderr, "tessera: error: %s\n", e.what());
#if TESSERA_USE_MPI
    // The other ranks may be waiting in a collective for this one: take them down now rather
    // than let them wait for the collective timeout.
    if (distributed) dist::AbortMpi(1);
#endif
    return 1;
  }
  return 0;
}
