// Liveness of the ranks of MPI_COMM_WORLD: one heartbeat thread per process.
//
// Every kHeartbeatInterval the thread sends an empty message to every other world rank on a
// communicator of its own (a dup of MPI_COMM_WORLD) and tests the receive it keeps posted from
// each, noting when each rank was last heard from. A rank that was killed or stopped (SIGSTOP),
// or whose process froze, falls silent; a rank blocked inside a collective keeps beating, since
// the thread is its own. A process group whose collective timed out asks HeartbeatSilences() which
// of its peers fell silent (see DiagnoseTimeout in mpi_process_group.cc).
//
// Cost: world size - 1 empty, non-blocking sends and tests per rank every 0.5 s; at most one send
// per peer is outstanding, so a silent peer never makes them pile up.
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
#include <vector>

namespace tessera::dist::internal {

constexpr auto kHeartbeatInterval = std::chrono::milliseconds(500);

// Starts the heartbeat thread (no-op when it is running). Collective over MPI_COMM_WORLD; MPI
// must be initialised with MPI_THREAD_MULTIPLE. Throws CommError.
void StartHeartbeats();

// Stops the thread, cancels its requests and frees its communicator. False when the thread did
// not stop in time (it is then left running and its communicator is not freed). Never throws.
bool StopHeartbeats() noexcept;

// For each of `world_ranks`, the longest time in seconds it went without being heard from
// during the last `window_s` seconds: its current silence, or an earlier one that ended in the
// window (a rank stopped and then continued); for this rank, the longest time its heartbeat
// thread did not run (this process was stopped or starved); -1 for a rank that is not a world
// rank. Silences are measured between this process's reads, so a stall of this process is not
// blamed on its peers. Ranks silent for more than `silence_s` now get up to `drain_s` to be
// heard from (the pending heartbeats are read meanwhile). False when heartbeats are not running.
bool HeartbeatSilences(const std::vector<int>& world_ranks, double window_s, double silence_s, double drain_s,
                       std::vector<double>* silences_s);

}  // namespace tessera::dist::internal
