// The `tessera` command.
//
//   tessera train JOB [--run-dir DIR] [--set FIELD=VALUE]... [--resume | --resume-from CKPT | --no-resume]
//   tessera validate JOB [--set FIELD=VALUE]...                check a job spec, run nothing
//   tessera ckpt inspect|verify PATH, tessera ckpt export PATH OUT.h5
//   tessera store list|show|publish|alias|rollback|gc|verify ...   the model store
//   tessera serve --store ROOT [--model NAME@POLICY]...           the inference server
//   tessera submit JOB [--nodes N --gpus-per-node G ...] [--array LIST] [--dry-run]   to Slurm
//   tessera --version
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "core/version.h"
#include "launch/commands.h"
#include "tessera/config.h"
#if TESSERA_USE_MPI
#include "dist/mpi/runtime.h"
#endif

namespace {
// A rank whose own timeout found that it had itself been stalled (stopped, or starved of CPU)
// cannot tell who else was: it names every other rank as silent. The ranks that were not stalled
// name the culprit. Such a rank gives them this long to report before it ends the job; if one of
// them ends it first, this rank is simply stopped.
constexpr unsigned kStalledRankGraceS = 3;
bool ReportedItsOwnStall(const std::exception& e) {
  return std::string(e.what()).find("this rank itself was stalled") != std::string::npos;
}
}  // namespace

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
  CLI::App app{"tessera: train neural networks on one machine or a cluster (CPU and CUDA), publish them to a model "
               "store, and serve them"};
  app.set_version_flag("--version", std::string("tessera ") + TESSERA_VERSION + " (commit " + SourceCommit() +
                                        ", CUDA " + (TESSERA_USE_CUDA ? "on" : "off") + ", MPI " +
                                        (TESSERA_USE_MPI ? "on" : "off") + ")");
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  tessera train jobs/examples/fmnist_cnn.pbtxt\n"
      "  tessera train jobs/examples/fmnist_mlp.pbtxt --set train.epochs=1 --run-dir runs/quick\n"
      "  tessera validate my_job.pbtxt --set optimizer.lr=0.01\n"
      "  tessera train jobs/examples/fmnist_cnn.pbtxt --run-dir runs/a --resume   (after a crash or preemption)\n"
      "  tessera ckpt inspect runs/a    tessera ckpt verify runs/a    tessera ckpt export runs/a model.h5\n"
      "  tessera store publish runs/a --store models --model fmnist-cnn --alias staging\n"
      "  tessera store list --store models    tessera store show fmnist-cnn@staging --store models\n"
      "  tessera serve --store models --model fmnist-cnn@production   (KServe v2 / Triton protocol on :8000, :8001)\n"
      "  tessera submit jobs/examples/fmnist_cnn.pbtxt --nodes 2 --gpus-per-node 8 --time 4:00:00   (Slurm)\n"
      "  tessera plot runs/a runs/b -o sweep.png    tensorboard --logdir runs/   (curves)\n"
      "Every field of a job spec, with its default: docs/job-spec.md; the model store: docs/model-store.md; Slurm: docs/slurm.md");

  launch::RunState state{&argc, &argv};
  std::vector<launch::Command> commands = launch::AddTrainCommands(app, state);
  for (auto* add : {&launch::AddCkptCommands, &launch::AddStoreCommands, &launch::AddServeCommands, &launch::AddSubmitCommands,
                    &launch::AddPlotCommands, &launch::AddTextCommands})
    for (launch::Command& c : add(app)) commands.push_back(std::move(c));
  CLI11_PARSE(app, argc, argv);
  try {
    for (launch::Command& c : commands)
      if (c.app->parsed()) return c.run();
  } catch (const std::exception& e) {  // tessera::Error above all; also std::filesystem_error, bad_alloc, ...
    if (state.distributed) std::fprintf(stderr, "tessera: error on rank %d: %s\n", state.rank, e.what());
    else std::fprintf(stderr, "tessera: error: %s\n", e.what());
#if TESSERA_USE_MPI
    // The other ranks may be waiting in a collective for this one: take them down now rather
    // than let them wait for the collective timeout.
    if (state.distributed) {
      if (ReportedItsOwnStall(e)) sleep(kStalledRankGraceS);
      dist::AbortMpi(1);
    }
#endif
    return 1;
  }
  return 0;
}
