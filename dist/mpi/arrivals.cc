#include "dist/mpi/arrivals.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "dist/mpi/mpi_check.h"

namespace tessera::dist::internal {
namespace {

std::mutex g_mu;  // guards the two below
uint64_t g_next_id = 1;
std::map<uint64_t, ArrivalSlot> g_board;

}  // namespace

uint64_t AgreeGroupId(MPI_Comm comm) {
  uint64_t mine;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    mine = g_next_id;
  }
  // The largest candidate is free on every member: each process's ids only grow.
  uint64_t id = 0;
  TESSERA_MPI_CHECK(MPI_Allreduce(&mine, &id, 1, MPI_UINT64_T, MPI_MAX, comm));
  std::lock_guard<std::mutex> lock(g_mu);
  g_next_id = std::max(g_next_id, id + 1);
  return id;
}

ArrivalSlot RegisterArrivals(uint64_t group_id) {
  auto slot = std::make_shared<std::atomic<uint64_t>>(0);
  std::lock_guard<std::mutex> lock(g_mu);
  g_board[group_id] = slot;
  return slot;
}

void UnregisterArrivals(uint64_t group_id) noexcept {
  std::lock_guard<std::mutex> lock(g_mu);
  g_board.erase(group_id);
}

std::vector<uint64_t> ArrivalBoard() {
  std::vector<uint64_t> board;
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_board.begin();
  if (g_board.size() > kMaxGroupsReported) std::advance(it, g_board.size() - kMaxGroupsReported);
  board.reserve(2 * std::min(g_board.size(), kMaxGroupsReported));
  for (; it != g_board.end(); ++it) {
    board.push_back(it->first);
    board.push_back(it->second->load(std::memory_order_acquire));
  }
  return board;
}

bool FindArrival(const std::vector<uint64_t>& board, uint64_t group_id, uint64_t* entered) {
  for (size_t i = 0; i + 1 < board.size(); i += 2) {
    if (board[i] != group_id) continue;
    *entered = board[i + 1];
    return true;
  }
  return false;
}

}  // namespace tessera::dist::internal
