// tessera submit: a job spec -> an sbatch script (from the templates in slurm/) -> sbatch.
//
//   RenderScript   fills in gpu.sbatch (gpus_per_node > 0), cpu.sbatch, or sweep.sbatch (with
//                  sweep tasks). Every path in the script is absolute, so it runs from anywhere.
//   ReadSweepFile  one array task per line: FIELD=VALUE overrides separated by spaces.
//   Sbatch         runs `sbatch --parsable SCRIPT` and returns the job id, or throws naming what
//                  went wrong (no sbatch on PATH, or what sbatch said when it refused).
#pragma once

#include <string>
#include <vector>

namespace tessera::slurm {

struct SubmitOptions {
  // Absolute paths.
  std::string tessera;     // the tessera binary the job runs
  std::string job_spec;    // the job spec file
  std::string run_dir;     // the run directory (a sweep: the folder of task-0, task-1, ...)
  std::string submit_dir;  // the job's working directory
  std::string job_name;
  std::vector<std::string> overrides;  // --set for every task
  // Resources. 0 means "not given": ntasks_per_node then equals gpus_per_node (or 1).
  int nodes = 1;
  int gpus_per_node = 0;
  int ntasks_per_node = 0;
  int cpus_per_task = 1;
  std::string time, partition, account;  // "" leaves Slurm's default
  std::string signal = "USR1@120";       // SIG[@SECONDS before the time limit]
  std::string launcher = "srun";         // or "mpirun" (inside the allocation)
  std::vector<std::string> sbatch_extra;  // more sbatch options, one "#SBATCH" line each
  // A sweep: the overrides of each array task (applied after `overrides`).
  std::vector<std::vector<std::string>> sweep;
};

// Checks the options (counts >= 1, the signal, the time format, the launcher); throws
// ConfigError naming the option.
void CheckSubmitOptions(const SubmitOptions& o);

// The batch script. Lines "#SBATCH --x=@FIELD@" whose field is empty are left out.
std::string RenderScript(const SubmitOptions& o);

// The tasks of a sweep file: one per non-blank line, '#' starts a comment.
std::vector<std::vector<std::string>> ReadSweepFile(const std::string& path);

// Runs sbatch on the script file; returns the job id it printed.
std::string Sbatch(const std::string& script_path);

// Quotes `s` for bash: as is when it is made of safe characters, else in single quotes.
std::string ShellQuote(const std::string& s);

// The template files embedded at build time (slurm/CMakeLists.txt): name -> text.
const std::string& Template(const std::string& name);

}  // namespace tessera::slurm
