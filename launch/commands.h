// The `tessera` subcommands, one file per group: train and validate (cmd_train.cc), ckpt
// (cmd_ckpt.cc), store (cmd_store.cc), serve (cmd_serve.cc), submit (cmd_submit.cc), plot
// (cmd_plot.cc), corpus and generate (cmd_text.cc). Each Add* registers its subcommands on the app and
// returns what runs each one once the command line has been parsed; main.cc dispatches and turns
// errors into messages and exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

namespace tessera::launch {

struct Command {
  CLI::App* app;
  std::function<int()> run;  // the exit status
};

// What main needs to know to report an error: under mpirun every rank names itself and the
// others are taken down at once.
struct RunState {
  int* argc = nullptr;
  char*** argv = nullptr;
  bool distributed = false;
  int rank = 0;
};

std::vector<Command> AddTrainCommands(CLI::App& app, RunState& state);
std::vector<Command> AddCkptCommands(CLI::App& app);
std::vector<Command> AddStoreCommands(CLI::App& app);
std::vector<Command> AddServeCommands(CLI::App& app);
std::vector<Command> AddSubmitCommands(CLI::App& app);
std::vector<Command> AddPlotCommands(CLI::App& app);
std::vector<Command> AddTextCommands(CLI::App& app);

}  // namespace tessera::launch
