// tessera plot: training curves of run directories as a PNG (several runs overlaid, to compare a
// sweep) and each run's confusion matrix, drawn by launch/plot_runs.py with matplotlib.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "launch/commands.h"

namespace tessera::launch {
namespace {

namespace fs = std::filesystem;

// Installed: PREFIX/share/tessera/plot_runs.py beside PREFIX/bin/tessera; in a build tree, the
// source tree's copy.
std::string PlotScript() {
  std::error_code ec;
  const fs::path exe = fs::canonical("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = exe.parent_path().parent_path() / "share" / "tessera" / "plot_runs.py";
    if (fs::is_regular_file(installed, ec)) return installed.string();
  }
  const fs::path source = fs::path(TESSERA_SOURCE_DIR) / "launch" / "plot_runs.py";
  if (fs::is_regular_file(source, ec)) return source.string();
  TESSERA_THROW(ConfigError, "tessera plot: its script is missing (looked for share/tessera/plot_runs.py beside the "
                "binary and ", source.string(), ")");
}

}  // namespace

std::vector<Command> AddPlotCommands(CLI::App& app) {
  struct Args {
    std::vector<std::string> runs;
    std::string out;
    bool no_confusion = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* plot = app.add_subcommand(
      "plot",
      "Draw training curves (loss, test accuracy, learning rate, throughput against the step) of one or more run "
      "directories into one PNG, one line per run, and write each run's confusion matrix to "
      "RUN_DIR/confusion_matrix.png. Needs a python with matplotlib: Debian's /usr/bin/python3 with "
      "python3-matplotlib, or the one TESSERA_PYTHON names");
  plot->add_option("runs", a->runs, "Run directories (each holds metrics.jsonl)")->required();
  plot->add_option("-o,--output", a->out, "The PNG to write (default: RUN_DIR/curves.png for one run, curves.png here "
                   "for several)");
  plot->add_flag("--no-confusion", a->no_confusion, "Do not write the confusion matrices");
  return {{plot, [a]() -> int {
             const std::string out =
                 !a->out.empty() ? a->out : a->runs.size() == 1 ? (fs::path(a->runs[0]) / "curves.png").string()
                                                                 : std::string("curves.png");
             const char* env = std::getenv("TESSERA_PYTHON");
             const std::string python = env && *env ? env : "/usr/bin/python3";
             std::vector<std::string> args = {python, PlotScript(), "-o", out};
             if (a->no_confusion) args.push_back("--no-confusion");
             args.push_back("--");
             args.insert(args.end(), a->runs.begin(), a->runs.end());
             std::vector<char*> argv;
             for (std::string& s : args) argv.push_back(s.data());
             argv.push_back(nullptr);
             std::fflush(stdout);
             execv(python.c_str(), argv.data());
             TESSERA_THROW(ConfigError, "tessera plot: cannot run ", python, ": ", std::strerror(errno),
                           " (install python3-matplotlib, or set TESSERA_PYTHON to a python with matplotlib)");
           }}};
}

}  // namespace tessera::launch
