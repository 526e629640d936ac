// Which collective each MPI process group of this process has entered: the board the heartbeats
// carry to every peer (dist/mpi/heartbeat.h), so that a timed-out collective can name the ranks
// that never arrived without any message per collective.
//
// A group's id is agreed when it is built (AgreeGroupId: one MPI_Allreduce over its communicator)
// and is the same on every member; the thread that starts each collective (the group's worker,
// or the issuing thread for a small nonblocking one) stores its sequence number in the group's
// slot before entering it (an atomic store: no message, no lock).
// Every heartbeat carries this process's board; a peer keeps the latest it received.
//
// Thread safety: every function may be called from any thread.
#pragma once

#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace tessera::dist::internal {

// The most groups one heartbeat reports; the newest are kept when a process holds more.
constexpr size_t kMaxGroupsReported = 240;

// An id for the group over `comm`, the same on every member and unique among this process's
// groups. Collective over `comm`; throws CommError.
uint64_t AgreeGroupId(MPI_Comm comm);

// The slot that a group's worker writes the sequence number of each entered collective to.
using ArrivalSlot = std::shared_ptr<std::atomic<uint64_t>>;

// Puts the group on the board (Register) and takes it off (Unregister; never throws).
ArrivalSlot RegisterArrivals(uint64_t group_id);
void UnregisterArrivals(uint64_t group_id) noexcept;

// The board as a heartbeat carries it: (group id, entered sequence number) pairs, flattened, at
// most kMaxGroupsReported of them.
std::vector<uint64_t> ArrivalBoard();

// In a board received from a peer: the sequence number it had entered in `group_id`, or false
// when the board does not list the group.
bool FindArrival(const std::vector<uint64_t>& board, uint64_t group_id, uint64_t* entered);

}  // namespace tessera::dist::internal
