#include "dist/mpi/heartbeat.h"

#include <mpi.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "dist/mpi/arrivals.h"
#include "dist/mpi/mpi_check.h"

namespace tessera::dist::internal {
namespace {

using Clock = std::chrono::steady_clock;

// The tag of heartbeats on the heartbeat communicator.
constexpr int kHeartbeatTag = 1;
// How long StopHeartbeats waits for the thread to leave.
constexpr auto kStopTimeout = std::chrono::seconds(2);
// Silences longer than this are remembered, the most recent kGapsKept per peer.
constexpr double kGapRecordS = 1.0;
constexpr size_t kGapsKept = 8;

// A heartbeat is this process's arrival board (dist/mpi/arrivals.h): at most this many words.
constexpr int kBoardWords = static_cast<int>(2 * kMaxGroupsReported);

// Per peer: the board being sent to it and the one being received from it. Freed only when no
// request on them was left pending (see Release).
struct Buffers {
  std::vector<std::vector<uint64_t>> send, recv;
};

struct Monitor {
  MPI_Comm comm = MPI_COMM_NULL;  // a dup of MPI_COMM_WORLD, errors returned
  int rank = 0;
  int size = 1;
  std::thread thread;  // none when size == 1

  std::mutex mu;               // guards the fields below and every MPI call on comm
  std::condition_variable cv;  // to the thread: stop; from the thread: exited
  bool stop = false;
  bool exited = false;
  std::vector<MPI_Request> recv, send;        // per peer: the posted receive, the last send
  std::vector<Clock::time_point> last_heard;  // [rank]: when the thread last beat
  // Per peer, past silences: when each ended and how long it was at least.
  std::vector<std::deque<std::pair<Clock::time_point, double>>> gaps;
  Clock::time_point last_poll;
  std::vector<bool> failed;  // an MPI call on this peer failed: it is no longer heard from
  Buffers* buffers = nullptr;
  std::vector<std::vector<uint64_t>> board;  // per peer: the latest arrival board received
  std::vector<uint64_t> heard_poll;          // per peer: the poll that received it
  uint64_t polls = 0;                        // Poll() calls so far

  // Posts the receive of peer p's next heartbeat; false (and the peer failed) when MPI refuses.
  bool PostReceive(int p) {
    if (MPI_Irecv(buffers->recv[p].data(), kBoardWords, MPI_UINT64_T, p, kHeartbeatTag, comm, &recv[p]) ==
        MPI_SUCCESS)
      return true;
    recv[p] = MPI_REQUEST_NULL;
    failed[p] = true;
    return false;
  }

  // Reads every heartbeat that has arrived, re-posting the receives. mu held.
  void Poll() {
    const Clock::time_point now = Clock::now();
    ++polls;
    for (int p = 0; p < size; ++p) {
      if (p == rank || failed[p]) continue;
      bool heard = false;
      for (;;) {
        int flag = 0;
        MPI_Status status;
        if (MPI_Test(&recv[p], &flag, &status) != MPI_SUCCESS) {
          failed[p] = true;
          break;
        }
        if (!flag) break;
        int words = 0;
        if (MPI_Get_count(&status, MPI_UINT64_T, &words) != MPI_SUCCESS || words < 0 || words > kBoardWords)
          words = 0;
        board[p].assign(buffers->recv[p].begin(), buffers->recv[p].begin() + words);
        heard_poll[p] = polls;
        if (!heard) {
          // The peer was silent at least until the previous poll found nothing; measuring to
          // `now` instead would blame the peer for a stall of this process.
          const double gap = std::chrono::duration<double>(last_poll - last_heard[p]).count();
          if (gap > kGapRecordS) {
            gaps[p].emplace_back(now, gap);
            if (gaps[p].size() > kGapsKept) gaps[p].pop_front();
          }
          heard = true;
        }
        last_heard[p] = now;
        if (!PostReceive(p)) break;
      }
    }
    last_poll = now;
  }

  // The longest silence of peer p that ended after `since` or lasts until now. mu held.
  double Silence(int p, Clock::time_point since, Clock::time_point now) const {
    double longest = std::chrono::duration<double>(now - last_heard[p]).count();
    for (const auto& [end, length] : gaps[p])
      if (end >= since) longest = std::max(longest, length);
    return longest;
  }

  // Sends a heartbeat, this process's arrival board, to every peer whose previous one has left.
  // mu held.
  void Beat() {
    const std::vector<uint64_t> mine = ArrivalBoard();
    for (int p = 0; p < size; ++p) {
      if (p == rank || failed[p]) continue;
      int flag = 1;
      if (send[p] != MPI_REQUEST_NULL && MPI_Test(&send[p], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        failed[p] = true;
        continue;
      }
      if (!flag) continue;  // the peer is not taking them (stopped, or its queue is full)
      buffers->send[p] = mine;
      if (MPI_Isend(buffers->send[p].data(), static_cast<int>(mine.size()), MPI_UINT64_T, p, kHeartbeatTag, comm,
                    &send[p]) != MPI_SUCCESS) {
        send[p] = MPI_REQUEST_NULL;
        failed[p] = true;
      }
    }
  }

  // Cancels the receives, lets pending sends finish in the background and frees the
  // communicator. The thread has exited; mu held.
  void Release() noexcept {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized || comm == MPI_COMM_NULL) return;
    bool left_pending = false;  // a request freed while pending may still use its buffer
    for (int p = 0; p < size; ++p) {
      if (recv[p] != MPI_REQUEST_NULL) {
        MPI_Cancel(&recv[p]);
        if (failed[p]) {
          MPI_Request_free(&recv[p]);
          left_pending = true;
        } else {
          MPI_Wait(&recv[p], MPI_STATUS_IGNORE);  // a cancelled receive completes locally
        }
      }
      if (send[p] != MPI_REQUEST_NULL) {
        int done = 0;
        if (MPI_Test(&send[p], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) {
          MPI_Request_free(&send[p]);
          left_pending = true;
        }
      }
    }
    MPI_Comm_free(&comm);
    if (!left_pending) delete buffers;  // otherwise deliberately leaked: a few KiB per peer
    buffers = nullptr;
  }
};

std::mutex g_mu;  // guards g_monitor
std::shared_ptr<Monitor> g_monitor;

void Run(std::shared_ptr<Monitor> m) {
  std::unique_lock<std::mutex> lock(m->mu);
  Clock::time_point next = Clock::now();
  while (!m->stop) {
    m->Poll();
    m->Beat();
    // This process's own silences (it was stopped, or the thread starved) are kept as rank's.
    const Clock::time_point now = Clock::now();
    const double gap = std::chrono::duration<double>(now - m->last_heard[m->rank]).count();
    if (gap > kGapRecordS) {
      m->gaps[m->rank].emplace_back(now, gap);
      if (m->gaps[m->rank].size() > kGapsKept) m->gaps[m->rank].pop_front();
    }
    m->last_heard[m->rank] = now;
    // After a stall (this process was stopped, or starved) beat again at once, then on schedule.
    next = std::max(next + kHeartbeatInterval, Clock::now());
    m->cv.wait_until(lock, next, [&] { return m->stop; });
  }
  m->exited = true;
  m->cv.notify_all();
}

}  // namespace

void StartHeartbeats() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_monitor) return;
  auto m = std::make_shared<Monitor>();
  TESSERA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &m->rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &m->size));
  const size_t n = static_cast<size_t>(m->size);
  m->recv.assign(n, MPI_REQUEST_NULL);
  m->send.assign(n, MPI_REQUEST_NULL);
  m->last_heard.assign(n, Clock::now());
  m->last_poll = Clock::now();
  m->gaps.resize(n);
  m->failed.assign(n, false);
  m->board.resize(n);
  m->heard_poll.assign(n, 0);
  if (m->size == 1) {  // nobody to beat to: no thread, no communicator
    m->exited = true;
    g_monitor = std::move(m);
    return;
  }
  TESSERA_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->comm));
  m->buffers = new Buffers;
  m->buffers->send.resize(n);
  m->buffers->recv.assign(n, std::vector<uint64_t>(kBoardWords));
  try {
    TESSERA_MPI_CHECK(MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN));
    for (int p = 0; p < m->size; ++p) {
      if (p == m->rank) continue;
      if (!m->PostReceive(p)) TESSERA_THROW(CommError, "StartHeartbeats: MPI_Irecv from rank ", p, " failed");
    }
    m->thread = std::thread(Run, m);
  } catch (...) {
    std::lock_guard<std::mutex> monitor_lock(m->mu);
    m->Release();
    throw;
  }
  g_monitor = std::move(m);
}

bool StopHeartbeats() noexcept {
  std::shared_ptr<Monitor> m;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    m = std::move(g_monitor);
    g_monitor.reset();
  }
  if (!m) return true;
  bool exited;
  {
    std::unique_lock<std::mutex> lock(m->mu);
    m->stop = true;
    m->cv.notify_all();
    exited = m->cv.wait_for(lock, kStopTimeout, [&] { return m->exited; });
  }
  if (!exited) {
    // Stuck inside MPI: leave it (it owns a reference to the monitor) rather than hang.
    m->thread.detach();
    return false;
  }
  if (m->thread.joinable()) m->thread.join();
  std::lock_guard<std::mutex> lock(m->mu);
  m->Release();
  return true;
}

bool HeartbeatReports(const std::vector<int>& world_ranks, uint64_t group_id, double window_s, double silence_s,
                      double drain_s, std::vector<PeerReport>* reports) {
  std::shared_ptr<Monitor> m;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    m = g_monitor;
  }
  if (!m) return false;
  const auto seconds = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  const Clock::time_point since = Clock::now() - seconds(window_s);
  const Clock::time_point drain_end = Clock::now() + seconds(drain_s);
  uint64_t first_poll = 0;  // heartbeats that were queued before this call are drained by it
  for (;;) {
    bool settled = true;  // every peer sent a board after the first poll, or is silent
    Clock::time_point now;
    {
      std::lock_guard<std::mutex> lock(m->mu);
      if (m->stop) return false;
      m->Poll();
      if (first_poll == 0) first_poll = m->polls;
      now = Clock::now();
      reports->assign(world_ranks.size(), PeerReport{});
      for (size_t i = 0; i < world_ranks.size(); ++i) {
        const int r = world_ranks[i];
        if (r < 0 || r >= m->size) continue;
        PeerReport& report = (*reports)[i];
        report.silence_s = m->Silence(r, since, now);
        if (r == m->rank) continue;
        report.fresh = m->heard_poll[r] > first_poll;
        report.listed = FindArrival(m->board[r], group_id, &report.entered);
        const double quiet = std::chrono::duration<double>(now - m->last_heard[r]).count();
        if (!report.fresh || quiet > silence_s) settled = false;
      }
    }
    if (settled || now >= drain_end) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace tessera::dist::internal
