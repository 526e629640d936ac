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

// Heartbeats are empty; MPI still wants a buffer address. Static, so that a request freed while
// still pending never outlives it.
char g_send_buffer[1];
char g_recv_buffer[1];

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

  // Reads every heartbeat that has arrived, re-posting the receives. mu held.
  void Poll() {
    const Clock::time_point now = Clock::now();
    for (int p = 0; p < size; ++p) {
      if (p == rank || failed[p]) continue;
      bool heard = false;
      for (;;) {
        int flag = 0;
        if (MPI_Test(&recv[p], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
          failed[p] = true;
          break;
        }
        if (!flag) break;
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
        if (MPI_Irecv(g_recv_buffer, 0, MPI_BYTE, p, kHeartbeatTag, comm, &recv[p]) != MPI_SUCCESS) {
          recv[p] = MPI_REQUEST_NULL;
          failed[p] = true;
          break;
        }
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

  // Sends a heartbeat to every peer whose previous one has left. mu held.
  void Beat() {
    for (int p = 0; p < size; ++p) {
      if (p == rank || failed[p]) continue;
      int flag = 1;
      if (send[p] != MPI_REQUEST_NULL && MPI_Test(&send[p], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        failed[p] = true;
        continue;
      }
      if (!flag) continue;  // the peer is not taking them (stopped, or its queue is full)
      if (MPI_Isend(g_send_buffer, 0, MPI_BYTE, p, kHeartbeatTag, comm, &send[p]) != MPI_SUCCESS) {
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
    for (int p = 0; p < size; ++p) {
      if (recv[p] != MPI_REQUEST_NULL) {
        MPI_Cancel(&recv[p]);
        if (failed[p])
          MPI_Request_free(&recv[p]);
        else
          MPI_Wait(&recv[p], MPI_STATUS_IGNORE);  // a cancelled receive completes locally
      }
      if (send[p] != MPI_REQUEST_NULL) MPI_Request_free(&send[p]);
    }
    MPI_Comm_free(&comm);
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
  if (m->size == 1) {  // nobody to beat to: no thread, no communicator
    m->exited = true;
    g_monitor = std::move(m);
    return;
  }
  TESSERA_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->comm));
  try {
    TESSERA_MPI_CHECK(MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN));
    for (int p = 0; p < m->size; ++p) {
      if (p == m->rank) continue;
      TESSERA_MPI_CHECK(MPI_Irecv(g_recv_buffer, 0, MPI_BYTE, p, kHeartbeatTag, m->comm, &m->recv[p]));
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

bool HeartbeatSilences(const std::vector<int>& world_ranks, double window_s, double silence_s, double drain_s,
                       std::vector<double>* silences_s) {
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
  for (;;) {
    bool all_heard = true;  // recently, that is
    Clock::time_point now;
    {
      std::lock_guard<std::mutex> lock(m->mu);
      if (m->stop) return false;
      m->Poll();
      now = Clock::now();
      silences_s->clear();
      for (int r : world_ranks) {
        double silence = -1;
        if (r >= 0 && r < m->size) {
          silence = m->Silence(r, since, now);
          if (r != m->rank && std::chrono::duration<double>(now - m->last_heard[r]).count() > silence_s)
            all_heard = false;
        }
        silences_s->push_back(silence);
      }
    }
    if (all_heard || now >= drain_end) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace tessera::dist::internal
