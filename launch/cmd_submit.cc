// tessera submit: renders a job spec into an sbatch script (slurm/) and submits it.
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "jobs/spec.h"
#include "jobs/trainer.h"
#include "launch/commands.h"
#include "slurm/submit.h"

namespace tessera::launch {
namespace {

namespace fs = std::filesystem;

struct SubmitArgs {
  std::string job, run_dir, sweep_file;
  slurm::SubmitOptions o;
  int cpus_per_task = 0;
  bool dry_run = false;
};

// Every task's spec must validate now, not hours later when the job starts; and the spec's
// parallel.data, when set, must be the number of ranks asked for.
void CheckSpecs(const SubmitArgs& a, int ranks) {
  std::vector<std::vector<std::string>> tasks = a.o.sweep.empty() ? std::vector<std::vector<std::string>>{{}} : a.o.sweep;
  for (size_t t = 0; t < tasks.size(); ++t) {
    std::vector<std::string> overrides = a.o.overrides;
    overrides.insert(overrides.end(), tasks[t].begin(), tasks[t].end());
    try {
      jobs::JobSpec spec = jobs::LoadJobSpec(a.job, overrides);
      if (spec.parallel().data() != 0 && spec.parallel().data() != ranks)
        TESSERA_THROW(ConfigError, "parallel.data is ", spec.parallel().data(), " but the job asks for ", ranks,
                      " ranks (--nodes x --ntasks-per-node)");
    } catch (const ConfigError& e) {
      if (a.o.sweep.empty()) throw;
      TESSERA_THROW(ConfigError, a.sweep_file, ": array task ", t, ": ", e.what());
    }
  }
}

int RunSubmit(SubmitArgs& a) {
  slurm::SubmitOptions& o = a.o;
  if (!a.sweep_file.empty()) o.sweep = slurm::ReadSweepFile(a.sweep_file);
  const jobs::JobSpec spec = jobs::LoadJobSpec(a.job, o.overrides);
  o.cpus_per_task = a.cpus_per_task > 0 ? a.cpus_per_task : spec.train().threads();
  const int tasks_per_node = o.ntasks_per_node > 0 ? o.ntasks_per_node : std::max(1, o.gpus_per_node);
  CheckSpecs(a, o.nodes * tasks_per_node);
  if (o.cpus_per_task < spec.train().threads())
    std::fprintf(stderr, "tessera submit: warning: --cpus-per-task %d is fewer than train.threads %d: the ranks' "
                 "threads will share cores\n", o.cpus_per_task, spec.train().threads());
  o.tessera = fs::canonical("/proc/self/exe").string();
  o.job_spec = fs::absolute(a.job).lexically_normal().string();
  o.submit_dir = fs::current_path().string();
  if (o.job_name.empty()) {  // the spec's name, with what sbatch cannot take replaced
    o.job_name = spec.name();
    for (char& c : o.job_name)
      if (std::isspace(static_cast<unsigned char>(c)) || c == '\'' || c == '"' || c == '\\') c = '_';
  }
  const std::string run_dir = a.run_dir.empty() ? jobs::DefaultRunDir(spec.name(), std::time(nullptr)) : a.run_dir;
  o.run_dir = fs::absolute(run_dir).lexically_normal().string();
  while (o.run_dir.size() > 1 && o.run_dir.back() == '/') o.run_dir.pop_back();
  const std::string script = slurm::RenderScript(o);
  if (a.dry_run) {
    std::fputs(script.c_str(), stdout);
    return 0;
  }
  std::error_code ec;
  fs::create_directories(o.run_dir, ec);
  if (ec) TESSERA_THROW(IoError, o.run_dir, ": cannot create the run directory: ", ec.message());
  const std::string path = o.run_dir + (o.sweep.empty() ? "/job.sbatch" : "/sweep.sbatch");
  {
    std::ofstream out(path, std::ios::trunc);
    out << script;
    if (!out.flush()) TESSERA_THROW(IoError, path, ": cannot write the batch script");
  }
  const std::string id = slurm::Sbatch(path);
  std::printf("submitted: job %s%s\n", id.c_str(),
              o.sweep.empty() ? "" : (" (" + std::to_string(o.sweep.size()) + " array tasks)").c_str());
  if (o.sweep.empty())
    std::printf("run directory: %s\nlog: %s/slurm-%s.out\n", o.run_dir.c_str(), o.run_dir.c_str(), id.c_str());
  else
    std::printf("run directories: %s/task-0 ... task-%zu\nlogs: %s/slurm-%s_TASK.out\n", o.run_dir.c_str(),
                o.sweep.size() - 1, o.run_dir.c_str(), id.c_str());
  std::printf("script: %s\n", path.c_str());
  return 0;
}

}  // namespace

std::vector<Command> AddSubmitCommands(CLI::App& app) {
  auto a = std::make_shared<SubmitArgs>();
  slurm::SubmitOptions& o = a->o;
  CLI::App* s = app.add_subcommand(
      "submit", "Submit a job spec to Slurm: render an sbatch script (slurm/*.sbatch) and call sbatch");
  s->add_option("job", a->job, "Job spec file")->required();
  s->add_option("--run-dir", a->run_dir,
                "The run directory (default: runs/NAME-YYYYmmdd-HHMMSS); a requeued job resumes from it");
  s->add_option("--set", o.overrides, "Override a field of the spec, as for train")->type_name("FIELD=VALUE");
  s->add_option("--nodes,-N", o.nodes, "Nodes")->default_val(1);
  s->add_option("--gpus-per-node", o.gpus_per_node, "GPUs per node, one rank each (0: a CPU job)")->default_val(0);
  s->add_option("--ntasks-per-node", o.ntasks_per_node, "Ranks per node (default: --gpus-per-node, or 1)");
  s->add_option("--cpus-per-task,-c", a->cpus_per_task, "Cores per rank (default: the spec's train.threads)");
  s->add_option("--time,-t", o.time, "Time limit, as sbatch takes it: MINUTES, HH:MM:SS, DAYS-HH:MM:SS");
  s->add_option("--partition,-p", o.partition, "Partition");
  s->add_option("--account,-A", o.account, "Account to charge");
  s->add_option("--array", a->sweep_file,
                "A sweep: a file with one array task per line, each line the task's FIELD=VALUE overrides "
                "separated by spaces; each task gets RUN_DIR/task-N")
      ->type_name("LIST");
  s->add_option("--signal", o.signal,
                "The signal Slurm sends SECONDS before the time limit; the ranks checkpoint on it and the job "
                "requeues itself")
      ->type_name("SIG@SECONDS")
      ->default_val("USR1@120");
  s->add_option("--launcher", o.launcher, "How the batch script starts the ranks: srun (PMIx) or mpirun")
      ->default_val("srun");
  s->add_option("--job-name,-J", o.job_name, "The Slurm job name (default: the spec's name)");
  s->add_option("--sbatch", o.sbatch_extra, "One more sbatch option for the script, e.g. --sbatch=--qos=high")
      ->type_name("OPTION");
  s->add_flag("--dry-run", a->dry_run, "Print the batch script and submit nothing");
  s->footer(
      "Examples:\n"
      "  tessera submit jobs/examples/fmnist_cnn.pbtxt --nodes 4 --gpus-per-node 8 --time 4:00:00 -p gpu\n"
      "  tessera submit jobs/examples/fmnist_mlp.pbtxt --ntasks-per-node 2 --cpus-per-task 4 --dry-run\n"
      "  tessera submit jobs/examples/fmnist_mlp.pbtxt --array sweep.txt   (one line per task: optimizer.lr=0.01 ...)\n"
      "The job is preempted and resumed by itself; see docs/slurm.md.");
  return {{s, [a] { return RunSubmit(*a); }}};
}

}  // namespace tessera::launch
