// Sbatch(): hands a script to Slurm.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "slurm/submit.h"

namespace tessera::slurm {
namespace {

std::string FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  for (size_t start = 0; start <= dirs.size();) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

}  // namespace

std::string Sbatch(const std::string& script_path) {
  const std::string sbatch = FindOnPath("sbatch");
  if (sbatch.empty())
    TESSERA_THROW(ConfigError, "sbatch is not on PATH: tessera submit needs Slurm's client commands (on a login "
                  "node, or `apt-get install slurm-client`); --dry-run prints the script without submitting");
  const std::string command = ShellQuote(sbatch) + " --parsable " + ShellQuote(script_path) + " 2>&1";
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) TESSERA_THROW(IoError, "cannot run ", sbatch, ": ", std::strerror(errno));
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0 && out.size() < (1 << 20);) out.append(buf, n);
  const int status = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (status != 0) {
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    TESSERA_THROW(Error, "sbatch refused the job (exit status ", code, "): ", out.empty() ? "(it printed nothing)" : out);
  }
  // --parsable prints "JOBID" or "JOBID;CLUSTER" (after any warnings, on the last line).
  const std::string last = out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
  const std::string id = last.substr(0, last.find(';'));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos)
    TESSERA_THROW(Error, "sbatch accepted the script but printed no job id: ", out);
  return id;
}

}  // namespace tessera::slurm
