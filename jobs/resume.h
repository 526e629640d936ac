// Which checkpoint a run continues from, and loading it with fallback past damaged ones.
#pragma once

#include <string>
#include <vector>

#include "dist/process_group.h"
#include "jobs/checkpoint.h"
#include "jobs/trainer.h"

namespace tessera::jobs {

struct ResumePlan {
  std::string ckpt_dir;
  std::vector<std::string> candidates;  // best first; empty: start from scratch
  bool own_checkpoints = false;         // the candidates are the run directory's own
  std::string set_aside;                // --no-resume: where earlier checkpoints were moved
};

// Rank 0 tidies `ckpt_dir` after a crash (and moves its checkpoints aside under Resume::kNever);
// then every rank lists where to continue from. The run directory's own checkpoints come before
// --resume-from: a requeued job started with --resume-from continues from its own progress.
ResumePlan PlanResume(const std::string& ckpt_dir, const TrainerOptions& opt, dist::ProcessGroup* group,
                      double timeout_s);

struct Resumed {
  std::string path;
  CheckpointInfo info;
};
// Loads the first candidate into `layout`. A damaged checkpoint of the run's own (any IoError:
// empty, truncated, bad manifest, missing attribute, CRC mismatch, inconsistent step) falls back to
// the next with a warning on stderr; a newer format or a different model (CheckpointFormatError,
// ShapeError) stops, since an older checkpoint will not fix either.
Resumed LoadFirstUsable(const ResumePlan& plan, const CheckpointLayout& layout, int rank);

// Every rank must have loaded the same step (0: none); IoError naming the range otherwise.
void AgreeOnStep(int64_t step, dist::ProcessGroup& group, double timeout_s, const std::string& ckpt_dir);

}  // namespace tessera::jobs
