// tessera ckpt inspect | verify | export.
#include <cstdio>
#include <memory>

#include "jobs/checkpoint.h"
#include "launch/commands.h"

namespace tessera::launch {

std::vector<Command> AddCkptCommands(CLI::App& app) {
  struct Args {
    std::string path, out;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect, verify or export checkpoints (HDF5; see docs/checkpoint-format.md)");
  ckpt->require_subcommand(1);
  const char* path_help = "A checkpoint file, a step directory, a checkpoints directory or a run directory (its latest)";
  CLI::App* inspect = ckpt->add_subcommand("inspect", "Print a checkpoint's step, parallel layout and tensors");
  inspect->add_option("path", a->path, path_help)->required();
  inspect->add_flag("--json", a->json, "Print JSON instead of text");
  CLI::App* verify = ckpt->add_subcommand("verify", "Check every tensor's CRC-32 and the manifest; exit 1 on a problem");
  verify->add_option("path", a->path, path_help)->required();
  CLI::App* exp = ckpt->add_subcommand(
      "export", "Write the model's tensors into one self-contained HDF5 file (the weights file a model store holds)");
  exp->add_option("path", a->path, path_help)->required();
  exp->add_option("out", a->out, "The file to write, e.g. model.h5")->required();
  return {{inspect,
           [a] {
             jobs::CheckpointInfo info = jobs::ReadCheckpointInfo(jobs::ResolveCheckpoint(a->path));
             if (a->json) std::printf("%s\n", jobs::CheckpointInfoJson(info).c_str());
             else std::printf("%s", jobs::DescribeCheckpoint(info).c_str());
             return 0;
           }},
          {verify,
           [a] {
             const std::string path = jobs::ResolveCheckpoint(a->path);
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
           }},
          {exp, [a] {
             const std::string path = jobs::ResolveCheckpoint(a->path);
             jobs::ExportModel(path, a->out);
             std::printf("%s: exported the model of %s\n", a->out.c_str(), path.c_str());
             return 0;
           }}};
}

}  // namespace tessera::launch
