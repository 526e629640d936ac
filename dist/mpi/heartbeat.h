// Liveness of the ranks of MPI_COMM_WORLD: one heartbeat thread per process.
//
// Every kHeartbeatInterval the thread sends this process's arrival board (which collective each
// of its process groups has entered, dist/mpi/arrivals.h) to every other world rank on a
// communicator of its own (a dup of MPI_COMM_WORLD) and tests the receive it keeps posted from
// each, noting when each rank was last heard from and the board it sent. A rank that was killed
// or stopped (SIGSTOP), or whose process froze, falls silent; a rank blocked inside a collective
// keeps beating, since the thread is its own. A process group whose collective timed out asks
// HeartbeatReports() which of its peers fell silent and which had not arrived (see DiagnoseTimeout
// in mpi_process_group.cc). Collectives themselves send nothing for this.
//
// Cost: world size - 1 non-blocking sends of at most 16 bytes per process group, and as many
// tests, per rank every 0.5 s; at most one send per peer is outstanding, so a silent peer never
// makes them pile up.
//
// Lifetime: InitMpi starts it (collective over MPI_COMM_WORLD: it dups the communicator);
// FinalizeMpi stops it before MPI_Finalize. The thread makes only non-blocking MPI calls and
// sleeps on a condition variable, so it stops at once; if it has not within 2 s it is left behind
// (StopHeartbeats returns false) rather than hang. MPI errors on the heartbeat communicator (a transport that
// noticed a dead peer) are not thrown: that peer is simply no longer heard from.
//
// Thread safety: every function may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

namespace tessera::dist::internal {

constexpr auto kHeartbeatInterval = std::chrono::milliseconds(500);

// Starts the heartbeat thread (no-op when it is running). Collective over MPI_COMM_WORLD; MPI
// must be initialised with MPI_THREAD_MULTIPLE. Throws CommError.
void StartHeartbeats();

// Stops the thread, cancels its requests and frees its communicator. False when the thread did
// not stop in time (it is then left running and its communicator is not freed). Never throws.
bool StopHeartbeats() noexcept;

// What a timed-out collective learns of one rank from the heartbeats.
struct PeerReport {
  // The longest time in seconds the rank went without being heard from during the window: its
  // current silence, or an earlier one that ended in the window (a rank stopped and then
  // continued); for this rank, the longest time its heartbeat thread did not run (this process
  // was stopped or starved); -1 for a rank that is not a world rank. Silences are measured
  // between this process's reads, so a stall of this process is not blamed on its peers.
  double silence_s = -1;
  bool fresh = false;   // a heartbeat sent after the call began was received (peers only)
  bool listed = false;  // the rank's latest arrival board lists the group ...
  uint64_t entered = 0;  // ... as having entered this collective (dist/mpi/arrivals.h)
};

// For each of `world_ranks`, its report for the group `group_id` over the last `window_s`
// seconds. Waits up to `drain_s` for a heartbeat sent after the call from every peer (a live
// rank beats every kHeartbeatInterval; the pending heartbeats are read meanwhile), and for those
// silent for more than `silence_s` to be heard from again. False when heartbeats are not running.
bool HeartbeatReports(const std::vector<int>& world_ranks, uint64_t group_id, double window_s, double silence_s,
                      double drain_s, std::vector<PeerReport>* reports);

}  // namespace tessera::dist::internal
