#include "dist/mpi/group_state.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "dist/collective.h"
#include "dist/mpi/heartbeat.h"
#include "dist/mpi/runtime.h"

namespace tessera::dist {
namespace {

using Clock = std::chrono::steady_clock;

// A peer not heard from (dist/mpi/heartbeat.h) for this long is "not responding" ...
constexpr double kSilenceS = 2.0;
// ... once it has had this long to be heard from; live peers send their arrivals within it.
constexpr double kHeartbeatDrainS = 1.5;

}  // namespace

void MpiProcessGroup::State::Break(const std::string& why) {
  if (!broken.empty()) return;
  broken = why;
  is_broken.store(true, std::memory_order_release);
}

void MpiProcessGroup::State::Finish(Op& op, std::exception_ptr error, const std::string& reason) {
  op.error = std::move(error);
  op.done = true;
  op.finished.store(true, std::memory_order_release);
  if (op.error && !reason.empty()) Break(reason);
  done_cv.notify_all();
}

std::string MpiProcessGroup::State::DescribeRanks(const std::vector<int>& ranks) const {
  std::string s = collective::RankList(ranks);
  if (!same_as_world && !ranks.empty()) {
    std::vector<int> world;
    for (int r : ranks) world.push_back(world_rank[r]);
    s += " (world ranks " + collective::RankList(world) + ")";
  }
  return s;
}

std::string MpiProcessGroup::State::DiagnoseTimeout(const Op& op) {
  uint64_t stuck_seq = op.seq;
  std::string stuck_what;  // set when this rank is still in an earlier collective
  Clock::time_point since = op.issued;
  {
    std::lock_guard<std::mutex> lock(mu);
    const std::shared_ptr<Op>& earlier = running ? running : inflight;
    if (earlier && earlier->seq < op.seq) {
      stuck_seq = earlier->seq;
      stuck_what = earlier->What();
      since = std::min(since, earlier->issued);
    }
  }
  // Which peers had not entered it, and which fell silent while it was pending: a rank killed
  // or stopped inside it has arrived too. Whether this rank itself was stalled, too.
  const double window_s = std::chrono::duration<double>(Clock::now() - since).count();
  std::vector<internal::PeerReport> reports;
  const bool have_heartbeats =
      internal::HeartbeatReports(world_rank, id, window_s, kSilenceS, kHeartbeatDrainS, &reports);
  std::vector<int> missing, silent;
  double silent_for = 0;
  if (have_heartbeats) {
    for (int p = 0; p < size; ++p) {
      if (p == rank) continue;
      if (!reports[p].listed || reports[p].entered < stuck_seq) missing.push_back(p);
      if (reports[p].silence_s <= kSilenceS) continue;
      silent_for = silent.empty() ? reports[p].silence_s : std::min(silent_for, reports[p].silence_s);
      silent.push_back(p);
    }
  }
  std::ostringstream m;
  m << op.What() << " did not complete within " << op.timeout_s << " s: ";
  if (!stuck_what.empty()) m << "this rank is still in " << stuck_what << ", where ";
  if (!have_heartbeats) {
    m << "which ranks did not arrive is unknown (heartbeats are not running: initialise MPI with "
         "tessera::dist::InitMpi)";
  } else {
    m << "ranks that did not arrive: " << DescribeRanks(missing);
    if (missing.empty() && silent.empty())
      m << " (every rank entered it: one may have died inside it, or the timeout is too short for "
           "this size)";
    else if (missing.empty())
      m << " (every rank entered it)";
    m << "; ranks not responding";
    if (!silent.empty())
      m << " (no heartbeat for " << (silent.size() > 1 ? "at least " : "") << std::fixed
        << std::setprecision(1) << silent_for << " s)";
    m << ": " << DescribeRanks(silent);
    if (reports[rank].silence_s > kSilenceS)
      m << "; this rank itself was stalled for " << std::fixed << std::setprecision(1)
        << reports[rank].silence_s << " s (stopped, or starved of CPU) while it waited";
  }
  m << "; the job cannot continue (a rank died, hung or was stopped)";
  return m.str();
}

void MpiProcessGroup::State::ReleaseMpiResources() noexcept {
  std::lock_guard<std::mutex> lock(release_mu);
  if (released) return;
  released = true;
  if (entered) internal::UnregisterArrivals(id);
  if (MpiIsInitialized() && data != MPI_COMM_NULL) MPI_Comm_free(&data);
}

}  // namespace tessera::dist
