// What a run writes as it goes: RUN_DIR/job.pbtxt, metrics.jsonl, summary.json and TensorBoard's
// events.out.tfevents.* (rank 0),
// RUN_DIR/rank-R.log (every rank, under data parallelism), and progress on stdout (rank 0): a live
// line on a terminal, plain lines otherwise (files, CI, and under mpirun or srun, which hand each
// rank a pseudo-terminal whatever its own output is).
#pragma once

#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "jobs/job.pb.h"
#include "jobs/tensorboard/event_file.h"

namespace tessera::jobs {

class RunLog {
 public:
  // `append`: a resumed run, whose metrics.jsonl and rank logs are continued, not replaced.
  RunLog(const std::string& run_dir, const JobSpec& spec, int rank, int world, bool progress, bool append);

  // One event in metrics.jsonl (rank 0; nothing while quiet). "train" and "eval" events also go
  // to the TensorBoard event file, at their "step": each number as the scalar EVENT/KEY, each list
  // of numbers as EVENT/KEY/I (train/loss, train/lr, train/grad_norm, train/rank_step_seconds/1,
  // eval/test_accuracy, ...).
  void Emit(const nlohmann::json& event);
  // A resumed run continues from `step` (rank 0): the TensorBoard file starts with a restart
  // record, so steps logged past that checkpoint by the run that stopped are not shown twice.
  void Resumed(int64_t step);
  // One event in this rank's rank-R.log (under data parallelism only).
  void RankEvent(const nlohmann::json& event);
  // A finished run that is only evaluated again records nothing new.
  void set_quiet(bool quiet) { quiet_ = quiet; }

  // A line of progress (rank 0), printf-style, ending in its own newline.
  template <typename... Args>
  void Say(const char* fmt, Args... args) {
    if (!progress_) return;
    if (tty_) std::printf("\r\033[K");
    std::printf(fmt, args...);
    std::fflush(stdout);
  }
  // A warning (rank 0), printf-style, ending in its own newline: on stderr as "tessera: warning:
  // ...", shown with progress off too.
  template <typename... Args>
  void Warn(const char* fmt, Args... args) {
    if (!lead_) return;
    if (tty_) std::printf("\r\033[K");  // a live step line
    std::fflush(stdout);
    std::fprintf(stderr, "tessera: warning: ");
    std::fprintf(stderr, fmt, args...);
    std::fflush(stderr);
  }
  // The step line: redrawn in place on a terminal, one line per call elsewhere.
  void StepLine(const std::string& text);
  // Ends a live step line before other output (no-op off a terminal).
  void EndLine();

  // RUN_DIR/summary.json, replaced atomically (rank 0).
  void WriteSummary(const nlohmann::json& summary);

 private:
  std::string run_dir_;
  bool lead_, progress_, tty_, quiet_ = false;
  std::ofstream metrics_, rank_log_;
  std::unique_ptr<tensorboard::EventFile> events_;
  int64_t restart_at_ = -1;  // a resumed run's first step to log, until the restart record is written
  void Events(const std::function<void()>& write);
};

// The TensorBoard scalars of a metrics event (see RunLog::Emit); empty for other events.
tensorboard::EventFile::Scalars ScalarsOf(const nlohmann::json& event);

}  // namespace tessera::jobs
