// tessera train, tessera validate.
#include <cstdio>
#include <ctime>
#include <memory>

#include "core/error.h"
#include "core/tensor.h"
#include "dist/process_group.h"
#include "jobs/preemption.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "launch/commands.h"
#include "launch/world.h"
#include "tessera/config.h"
#if TESSERA_USE_MPI
#include "dist/mpi/runtime.h"
#endif

namespace tessera::launch {
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
  return jobs::DefaultRunDir(name, now);
}

struct TrainArgs {
  std::string job, run_dir, resume_from;
  std::vector<std::string> overrides;
  std::vector<std::string> preempt_signals{"USR1", "TERM"};
  bool resume = false, no_resume = false, no_file_check = false;
};

int RunTrain(const TrainArgs& a, RunState& state) {
  World world = DetectWorld();
  state.rank = world.rank;
  std::unique_ptr<dist::ProcessGroup> group;
  if (world.distributed()) {
#if TESSERA_USE_MPI
    dist::InitMpi(state.argc, state.argv);
    group = dist::WorldGroup();
    state.distributed = true;
#else
    TESSERA_THROW(ConfigError, "launched as rank ", world.rank, " of ", world.size, " by ", world.launcher,
                  " but this tessera was built without MPI (TESSERA_USE_MPI=OFF)");
#endif
  }
  std::vector<int> signals;
  for (const std::string& name : a.preempt_signals)
    if (name != "none") signals.push_back(jobs::ParseSignalName(name));
  // After MPI_Init, so that these handlers, not the MPI library's, are the ones in place.
  jobs::WatchPreemptSignals(signals);
  if (a.resume && a.run_dir.empty())
    TESSERA_THROW(ConfigError, "--resume continues a run directory: name it with --run-dir DIR (or give a "
                  "checkpoint with --resume-from)");
  jobs::JobSpec spec = jobs::LoadJobSpec(a.job, a.overrides);
  jobs::TrainerOptions o;
  o.run_dir = a.run_dir.empty() ? DefaultRunDir(spec.name(), group.get()) : a.run_dir;
  o.group = group.get();
  o.placement = {world.rank, world.size, world.local_rank, world.local_size, world.launcher};
  if (a.resume) o.resume = jobs::TrainerOptions::Resume::kRequire;
  if (a.no_resume) o.resume = jobs::TrainerOptions::Resume::kNever;
  o.resume_from = a.resume_from;
  o.preemptible = !signals.empty();
  const bool lead = world.rank == 0;
  if (lead)
    std::printf("tessera %s: job '%s', %d rank%s (%s), run directory %s\n", TESSERA_VERSION, spec.name().c_str(),
                world.size, world.size == 1 ? "" : "s", world.launcher.c_str(), o.run_dir.c_str());
  jobs::TrainSummary s = jobs::Train(spec, o);
  int status = 0;
  if (s.preempted_by != 0) {
    status = jobs::kExitPreempted;
    if (lead)
      std::printf("stopped by %s after step %lld: checkpoint committed; exit status %d (preempted: start the same "
                  "command again, or requeue the job, to resume)\n",
                  jobs::SignalName(s.preempted_by).c_str(), static_cast<long long>(s.steps), status);
  } else if (lead) {
    char result[160];
    if (s.language_model)
      std::snprintf(result, sizeof result, "test perplexity %.3f, next-token accuracy %.4f", s.test_perplexity,
                    s.test_accuracy);
    else
      std::snprintf(result, sizeof result, "test accuracy %.4f, macro F1 %.4f", s.test_accuracy, s.test_f1);
    if (s.resumed_from_step >= 0 && s.resumed_from_step == s.steps)
      std::printf("done: nothing to train (the run was complete at step %lld); %s\n", static_cast<long long>(s.steps),
                  result);
    else if (s.language_model)
      std::printf("done: %lld steps in %.1f s (%.0f tokens/s); %s\n", static_cast<long long>(s.steps), s.wall_seconds,
                  s.tokens_per_sec, result);
    else
      std::printf("done: %lld steps in %.1f s (%.0f samples/s); %s\n", static_cast<long long>(s.steps), s.wall_seconds,
                  s.samples_per_sec, result);
    if (s.published_version > 0)
      std::printf("published: %s version %lld (%s)\n", s.published_model.c_str(),
                  static_cast<long long>(s.published_version), s.published_dir.c_str());
    std::printf("summary: %s/summary.json\n", o.run_dir.c_str());
  }
  group.reset();
#if TESSERA_USE_MPI
  if (state.distributed) dist::FinalizeMpi();
#endif
  return status;
}

}  // namespace

std::vector<Command> AddTrainCommands(CLI::App& app, RunState& state) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* train = app.add_subcommand("train", "Run a job spec (protobuf text) and write a run directory");
  train->add_option("job", a->job, "Job spec file, e.g. jobs/examples/fmnist_cnn.pbtxt")->required();
  train->add_option("--run-dir", a->run_dir,
                    "Where job.pbtxt, metrics.jsonl and summary.json go (default: runs/NAME-YYYYmmdd-HHMMSS)");
  train->add_option("--set", a->overrides, "Override a field of the spec: --set train.epochs=1 --set optimizer.lr=0.01")
      ->type_name("FIELD=VALUE");
  CLI::Option* resume = train->add_flag(
      "--resume", a->resume,
      "Continue from the newest checkpoint in the run directory, and fail if there is none (a run directory "
      "that holds a checkpoint is resumed without this flag too)");
  CLI::Option* resume_from = train->add_option(
      "--resume-from", a->resume_from,
      "Continue from this checkpoint (a checkpoint file, a step directory, or another run's directory); the "
      "world size may differ from the one that wrote it");
  CLI::Option* no_resume = train->add_flag("--no-resume", a->no_resume,
                                           "Start from scratch even if the run directory holds checkpoints (the "
                                           "checkpoints directory is renamed to checkpoints.earlier-TIME)");
  train
      ->add_option("--preempt-signal", a->preempt_signals,
                   "On this signal, stop at the next step boundary with a committed checkpoint and exit with "
                   "status 75, to be requeued and resumed (repeatable; 'none' turns it off)")
      ->type_name("SIG")
      ->default_str("USR1 TERM");
  resume->excludes(resume_from)->excludes(no_resume);
  resume_from->excludes(no_resume);

  CLI::App* validate = app.add_subcommand("validate", "Check a job spec (and overrides) without running it");
  validate->add_option("job", a->job, "Job spec file")->required();
  validate->add_option("--set", a->overrides, "Override a field of the spec, as for train")->type_name("FIELD=VALUE");
  validate->add_flag("--no-file-check", a->no_file_check,
                     "Do not require the data files (and train.init_from) to exist");
  return {{train, [a, &state] { return RunTrain(*a, state); }},
          {validate, [a] {
             jobs::JobSpec spec = jobs::LoadJobSpec(a->job, a->overrides, !a->no_file_check);
             std::printf("%s: valid\n%s", a->job.c_str(), jobs::ToText(spec).c_str());
             return 0;
           }}};
}

}  // namespace tessera::launch
