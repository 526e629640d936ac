#include "jobs/run_log.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/io/durable.h"
#include "jobs/spec.h"

namespace tessera::jobs {

using json = nlohmann::json;

RunLog::RunLog(const std::string& run_dir, const JobSpec& spec, int rank, int world, bool progress, bool append)
    : run_dir_(run_dir), lead_(rank == 0), progress_(progress && rank == 0) {
  const bool launched = std::getenv("OMPI_COMM_WORLD_RANK") != nullptr || std::getenv("SLURM_PROCID") != nullptr ||
                        std::getenv("PMI_RANK") != nullptr;
  tty_ = progress_ && !launched && isatty(fileno(stdout));
  const auto mode = append ? std::ios::app : std::ios::trunc;
  if (lead_) {
    std::ofstream out(run_dir + "/job.pbtxt");
    out << "# Resolved job spec: every default written out.\n" << ToText(spec);
    if (!out) TESSERA_THROW(IoError, run_dir, "/job.pbtxt: cannot write");
    metrics_.open(run_dir + "/metrics.jsonl", mode);
    if (!metrics_) TESSERA_THROW(IoError, run_dir, "/metrics.jsonl: cannot write");
    events_ = std::make_unique<tensorboard::EventFile>(run_dir);  // the file appears at the first scalar
  }
  if (world > 1) {
    std::string path = run_dir + "/rank-" + std::to_string(rank) + ".log";
    rank_log_.open(path, mode);
    if (!rank_log_) TESSERA_THROW(IoError, path, ": cannot write");
    RankEvent({{"event", "start"}, {"rank", rank}, {"world_size", world}, {"pid", getpid()}, {"host", io::HostName()}});
  }
}

void RunLog::Emit(const json& event) {
  if (!lead_ || quiet_) return;
  metrics_ << event.dump() << "\n" << std::flush;
  tensorboard::EventFile::Scalars scalars = ScalarsOf(event);
  if (scalars.empty()) return;
  Events([&] {
    if (restart_at_ >= 0) events_->Restart(restart_at_, tensorboard::WallTimeNow());
    restart_at_ = -1;
    events_->Write(event["step"].get<int64_t>(), scalars, tensorboard::WallTimeNow());
  });
}

// Written before the first scalars, not now: a finished run that is only evaluated again writes
// nothing at all.
void RunLog::Resumed(int64_t step) { restart_at_ = step + 1; }

// The event file is a view of metrics.jsonl for TensorBoard: a full disk or a removed directory
// must not stop rank 0 alone (the other ranks would wait in a collective until the deadline).
// The first failure is a warning and the file is given up.
void RunLog::Events(const std::function<void()>& write) {
  if (!events_) return;
  try {
    write();
  } catch (const IoError& e) {
    Warn("TensorBoard events: %s; no more are written (metrics.jsonl has them all)\n", e.what());
    events_.reset();
  }
}

tensorboard::EventFile::Scalars ScalarsOf(const json& event) {
  tensorboard::EventFile::Scalars out;
  if (!event.contains("event") || !event.contains("step")) return out;
  const std::string kind = event["event"].get<std::string>();
  if (kind != "train" && kind != "eval") return out;
  for (const auto& [key, value] : event.items()) {
    if (key == "event" || key == "step") continue;
    const std::string tag = kind + "/" + key;
    if (value.is_number()) {
      out.emplace_back(tag, value.get<double>());
    } else if (value.is_array()) {
      for (size_t i = 0; i < value.size(); ++i)
        if (value[i].is_number()) out.emplace_back(tag + "/" + std::to_string(i), value[i].get<double>());
    }
  }
  return out;
}

void RunLog::RankEvent(const json& event) {
  if (rank_log_.is_open()) rank_log_ << event.dump() << "\n" << std::flush;
}

void RunLog::StepLine(const std::string& text) {
  if (!progress_) return;
  if (tty_) std::printf("\r\033[K%s", text.c_str());
  else std::printf("%s\n", text.c_str());
  std::fflush(stdout);
}

void RunLog::EndLine() {
  if (tty_) std::printf("\n");
}

void RunLog::WriteSummary(const json& summary) {
  if (!lead_) return;
  const std::string tmp = run_dir_ + "/summary.json.tmp";
  {
    std::ofstream out(tmp);
    out << summary.dump(2) << "\n";
    if (!out) TESSERA_THROW(IoError, tmp, ": cannot write");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, run_dir_ + "/summary.json", ec);
  if (ec) TESSERA_THROW(IoError, run_dir_, "/summary.json: cannot write: ", ec.message());
}

}  // namespace tessera::jobs
