#include "slurm/submit.h"

#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "jobs/preemption.h"

namespace tessera::slurm {
namespace internal {
const std::map<std::string, std::string>& Templates();
}  // namespace internal

namespace {

using Fields = std::map<std::string, std::string>;

bool SafeForShell(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::string("@%+=:,./_-").find(c) != std::string::npos;
}

std::string Quoted(const std::vector<std::string>& words) {
  std::string out;
  for (const std::string& w : words) out += (out.empty() ? "" : " ") + ShellQuote(w);
  return out;
}

// "@@include NAME@@" lines -> the named template.
std::string ExpandIncludes(const std::string& text) {
  std::istringstream in(text);
  std::string line, out;
  while (std::getline(in, line)) {
    const std::string tag = "@@include ";
    if (line.rfind(tag, 0) == 0 && line.size() > tag.size() + 2 && line.compare(line.size() - 2, 2, "@@") == 0) {
      out += Template(line.substr(tag.size(), line.size() - tag.size() - 2));
      continue;
    }
    out += line + "\n";
  }
  return out;
}

// Replaces every @FIELD@; drops the "#SBATCH" lines whose field is empty and the lines that are
// only an empty field.
std::string Fill(const std::string& text, const Fields& fields) {
  std::istringstream in(text);
  std::string line, out;
  while (std::getline(in, line)) {
    bool empty_field = false;
    std::string filled;
    for (size_t i = 0; i < line.size();) {
      size_t end = line[i] == '@' ? line.find('@', i + 1) : std::string::npos;
      auto f = end == std::string::npos ? fields.end() : fields.find(line.substr(i + 1, end - i - 1));
      if (f == fields.end()) {
        filled += line[i++];
        continue;
      }
      empty_field |= f->second.empty();
      filled += f->second;
      i = end + 1;
    }
    if (empty_field && (line.rfind("#SBATCH", 0) == 0 || filled.empty())) continue;
    out += filled + "\n";
  }
  return out;
}

std::string SweepCases(const std::vector<std::vector<std::string>>& sweep) {
  std::string out;
  for (size_t t = 0; t < sweep.size(); ++t) {
    std::vector<std::string> args;
    for (const std::string& s : sweep[t]) {
      args.push_back("--set");
      args.push_back(s);
    }
    out += "  " + std::to_string(t) + ") TASK_SET=(" + Quoted(args) + ") ;;\n";
  }
  if (!out.empty()) out.pop_back();
  return out;
}

std::vector<std::string> TrainArgs(const SubmitOptions& o) {
  std::vector<std::string> args;
  for (const std::string& s : o.overrides) {
    args.push_back("--set");
    args.push_back(s);
  }
  // The signal Slurm sends before the time limit, and SIGTERM (preemption, scancel, the limit).
  const std::string sig = o.signal.substr(0, o.signal.find('@'));
  if (jobs::ParseSignalName(sig) != jobs::ParseSignalName("USR1")) {
    for (const std::string& s : {sig, std::string("TERM")}) {
      args.push_back("--preempt-signal");
      args.push_back(s);
    }
  }
  return args;
}

std::vector<std::string> Launch(const SubmitOptions& o) {
  if (o.launcher == "mpirun") return {"mpirun", "--bind-to", "none"};
  return {"srun", "--mpi=pmix"};
}

}  // namespace

std::string ShellQuote(const std::string& s) {
  bool safe = !s.empty();
  for (char c : s) safe &= SafeForShell(c);
  if (safe) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

const std::string& Template(const std::string& name) {
  auto it = internal::Templates().find(name);
  if (it == internal::Templates().end()) TESSERA_THROW(Error, "no sbatch template named '", name, "'");
  return it->second;
}

void CheckSubmitOptions(const SubmitOptions& o) {
  auto at_least_one = [](int v, const char* flag) {
    if (v < 1) TESSERA_THROW(ConfigError, flag, " must be at least 1, got ", v);
  };
  at_least_one(o.nodes, "--nodes");
  at_least_one(o.cpus_per_task, "--cpus-per-task");
  if (o.gpus_per_node < 0) TESSERA_THROW(ConfigError, "--gpus-per-node must be 0 or more, got ", o.gpus_per_node);
  if (o.ntasks_per_node < 0) TESSERA_THROW(ConfigError, "--ntasks-per-node must be at least 1, got ", o.ntasks_per_node);
  if (o.gpus_per_node > 0 && o.ntasks_per_node > 0 && o.ntasks_per_node != o.gpus_per_node)
    TESSERA_THROW(ConfigError, "--ntasks-per-node ", o.ntasks_per_node, " differs from --gpus-per-node ",
                  o.gpus_per_node, ": tessera runs one rank per GPU");
  const size_t at = o.signal.find('@');
  const int sig = jobs::ParseSignalName(o.signal.substr(0, at));
  // TERM is what Slurm sends at the limit itself (and mpirun and srun kill the ranks on it, INT,
  // HUP and QUIT): the warning must be a signal they pass on untouched.
  if (sig != jobs::ParseSignalName("USR1") && sig != jobs::ParseSignalName("USR2"))
    TESSERA_THROW(ConfigError, "--signal '", o.signal, "': the warning before the time limit must be USR1 or USR2 "
                  "(TERM comes at the limit itself, and srun and mpirun kill the ranks on TERM, INT, HUP and QUIT)");
  if (at != std::string::npos) {
    const std::string secs = o.signal.substr(at + 1);
    if (secs.empty() || secs.find_first_not_of("0123456789") != std::string::npos || secs.size() > 5 ||
        std::stol(secs) > 65535)
      TESSERA_THROW(ConfigError, "--signal '", o.signal, "': the time after @ must be 0 to 65535 seconds, e.g. USR1@120");
  }
  if (o.time.find_first_not_of("0123456789:-") != std::string::npos)
    TESSERA_THROW(ConfigError, "--time '", o.time, "' is not a Slurm time (MINUTES, HH:MM:SS or DAYS-HH:MM:SS)");
  if (o.launcher != "srun" && o.launcher != "mpirun")
    TESSERA_THROW(ConfigError, "--launcher '", o.launcher, "': use srun or mpirun");
  for (const std::string& s : {o.partition, o.account, o.job_name})
    for (char c : s)
      if (std::isspace(static_cast<unsigned char>(c)) || c == '\'' || c == '"' || c == '\\')
        TESSERA_THROW(ConfigError, "'", s, "': partition, account and job names cannot hold spaces or quotes");
  for (const std::string& e : o.sbatch_extra)
    if (e.rfind("--", 0) != 0 || e.find('\n') != std::string::npos)
      TESSERA_THROW(ConfigError, "--sbatch '", e, "': give one sbatch option, e.g. --sbatch=--qos=high");
}

std::string RenderScript(const SubmitOptions& o) {
  CheckSubmitOptions(o);
  const int tasks_per_node = o.ntasks_per_node > 0 ? o.ntasks_per_node : std::max(1, o.gpus_per_node);
  std::string extra;
  for (const std::string& e : o.sbatch_extra) extra += (extra.empty() ? "" : "\n") + ("#SBATCH " + e);
  Fields f = {
      {"JOB_NAME", o.job_name},
      {"NODES", std::to_string(o.nodes)},
      {"NTASKS_PER_NODE", std::to_string(tasks_per_node)},
      {"GPUS_PER_NODE", o.gpus_per_node > 0 ? std::to_string(o.gpus_per_node) : ""},
      {"CPUS_PER_TASK", std::to_string(o.cpus_per_task)},
      {"TIME", o.time},
      {"PARTITION", o.partition},
      {"ACCOUNT", o.account},
      // mpirun's ranks are the batch shell's children: the shell takes the signal and passes it on.
      {"SIGNAL", (o.launcher == "mpirun" ? "B:" : "") + o.signal},
      {"PREEMPT_SIGNAL", jobs::SignalName(jobs::ParseSignalName(o.signal.substr(0, o.signal.find('@')))).substr(3)},
      {"SUBMIT_DIR", o.submit_dir},
      {"RUN_DIR", ShellQuote(o.run_dir)},
      {"TESSERA", ShellQuote(o.tessera)},
      {"JOB_SPEC", ShellQuote(o.job_spec)},
      {"TRAIN_ARGS", Quoted(TrainArgs(o))},
      {"LAUNCH", Quoted(Launch(o))},
      {"EXIT_PREEMPTED", std::to_string(jobs::kExitPreempted)},
      {"SBATCH_EXTRA", extra},
      {"ARRAY", o.sweep.empty() ? "" : "0-" + std::to_string(o.sweep.size() - 1)},
      {"SWEEP_CASES", SweepCases(o.sweep)},
  };
  // #SBATCH lines are read by sbatch, not by bash: they take the paths unquoted.
  for (const std::string& p : {o.run_dir, o.submit_dir})
    for (char c : p)
      if (std::isspace(static_cast<unsigned char>(c)) || c == '%')
        TESSERA_THROW(ConfigError, "'", p, "': Slurm's --output and --chdir cannot take a path with spaces or '%'");
  const std::string name = !o.sweep.empty() ? "sweep.sbatch" : o.gpus_per_node > 0 ? "gpu.sbatch" : "cpu.sbatch";
  std::string text = ExpandIncludes(Template(name));
  // In the #SBATCH lines the run directory goes in bare (checked above).
  Fields sbatch_fields = f;
  sbatch_fields["RUN_DIR"] = o.run_dir;
  std::string out, line;
  std::istringstream in(text);
  while (std::getline(in, line)) out += Fill(line + "\n", line.rfind("#SBATCH", 0) == 0 ? sbatch_fields : f);
  return out;
}

std::vector<std::vector<std::string>> ReadSweepFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) TESSERA_THROW(IoError, path, ": cannot read the sweep file");
  std::vector<std::vector<std::string>> tasks;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.size() > 65536) TESSERA_THROW(ConfigError, path, ":", n, ": the line is longer than 64 KiB");
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    std::vector<std::string> task;
    for (std::string w; words >> w;) {
      if (w.find('=') == std::string::npos || w.front() == '=')
        TESSERA_THROW(ConfigError, path, ":", n, ": '", w, "' is not an override FIELD=VALUE");
      task.push_back(w);
    }
    if (!task.empty()) tasks.push_back(task);
    if (tasks.size() > 10000) TESSERA_THROW(ConfigError, path, ": more than 10000 array tasks");
  }
  if (tasks.empty()) TESSERA_THROW(ConfigError, path, ": the sweep file lists no tasks (one line of FIELD=VALUE each)");
  return tasks;
}

}  // namespace tessera::slurm
