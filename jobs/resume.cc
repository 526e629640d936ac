#include "jobs/resume.h"

#include <cstdio>

namespace tessera::jobs {

ResumePlan PlanResume(const std::string& ckpt_dir, const TrainerOptions& opt, dist::ProcessGroup* group,
                      double timeout_s) {
  ResumePlan plan;
  plan.ckpt_dir = ckpt_dir;
  if (!group || group->rank() == 0) {
    RemovePartialCheckpoints(ckpt_dir);
    // Found now rather than at the first save after hours of training, or in a silent fall-back.
    const CheckpointDirReport report = InspectCheckpointDir(ckpt_dir);
    if (!report.problems.empty()) TESSERA_THROW(IoError, "checkpoint.dir: ", report.problems.front());
    for (const std::string& w : report.warnings) std::fprintf(stderr, "tessera: warning: %s\n", w.c_str());
    if (opt.resume == TrainerOptions::Resume::kNever && !FindLatestCheckpoint(ckpt_dir).empty())
      plan.set_aside = SetAsideCheckpoints(ckpt_dir);
  }
  if (group) {  // every rank looks for checkpoints only once rank 0 has tidied the directory
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    group->Barrier(o)->Wait();
  }
  if (opt.resume != TrainerOptions::Resume::kNever) {
    std::string latest = FindLatestCheckpoint(ckpt_dir);
    if (!latest.empty()) {
      plan.own_checkpoints = true;
      plan.candidates.push_back(latest);
      for (const std::string& c : ListCheckpoints(ckpt_dir))
        if (c != latest) plan.candidates.push_back(c);
    }
  }
  if (plan.candidates.empty() && !opt.resume_from.empty()) plan.candidates.push_back(ResolveCheckpoint(opt.resume_from));
  if (plan.candidates.empty() && opt.resume == TrainerOptions::Resume::kRequire)
    TESSERA_THROW(ConfigError, "--resume: no committed checkpoint in ", ckpt_dir, " to continue from");
  return plan;
}

Resumed LoadFirstUsable(const ResumePlan& plan, const CheckpointLayout& layout, int rank) {
  const std::vector<std::string>& c = plan.candidates;
  for (size_t i = 0; i < c.size(); ++i) {
    try {
      if (ReadCheckpointInfo(c[i]).kind != "checkpoint")
        TESSERA_THROW(CheckpointFormatError, c[i], ": is an exported model (no optimizer state, step or sampler "
                      "position); training resumes from a checkpoint (to start from a model's weights, use "
                      "train.init_from)");
      return {c[i], LoadCheckpoint(c[i], layout)};
    } catch (const CheckpointFormatError&) {
      throw;  // a newer format or not a checkpoint: an older one is not the answer
    } catch (const IoError& e) {
      // Damaged or unreadable: an older committed checkpoint of this run still gets it going.
      if (!plan.own_checkpoints || i + 1 == c.size()) throw;
      std::fprintf(stderr, "tessera: warning: rank %d cannot resume from the newest checkpoint: %s; trying %s\n", rank,
                   e.what(), c[i + 1].c_str());
    }
  }
  TESSERA_THROW(IoError, "no checkpoint to resume from");
}

void AgreeOnStep(int64_t step, dist::ProcessGroup& group, double timeout_s, const std::string& ckpt_dir) {
  Tensor v = Tensor::FromVector({static_cast<double>(step), -static_cast<double>(step)}, {2}, DType::kF64);
  dist::CollectiveOptions o;
  o.timeout_s = timeout_s;
  o.op = dist::ReduceOp::kMax;
  group.AllReduce(v, o)->Wait();
  if (v.data<double>()[0] != -v.data<double>()[1])
    TESSERA_THROW(IoError, "the ranks found different checkpoints to resume from (steps ", -v.data<double>()[1], " to ",
                  v.data<double>()[0], "); is ", ckpt_dir, " on a file system all ranks share?");
}

}  // namespace tessera::jobs
