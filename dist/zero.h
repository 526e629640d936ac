// ZeRO sharding over a data-parallel group (compare DeepSpeed ZeRO stages 1 and 2, PyTorch FSDP's
// SHARD_GRAD_OP): the partition of the flat buffers, the gather of the updated parameters, and the
// gradient norm over all shards.
//
// The flat buffers are padded to a multiple of the group size N (FlatParameters' size_multiple)
// and cut into N equal contiguous shards: rank r owns [r S, (r + 1) S), S = numel / N. That is the
// partition the checkpoint writer writes by, so each rank saves exactly the optimizer state it
// holds, and a checkpoint stays logical (any stage and rank count loads it).
//   stage 1: every rank all-reduces the whole gradient (the Reducer); each keeps optimizer state
//            for its shard only and updates only its shard of the parameters; the parameters are
//            then all-gathered in place.
//   stage 2: as 1, but the Reducer, given the partition, reduces each gradient bucket to the ranks
//            that own it as soon as backward finishes it; every other rank zeroes its copy of the
//            bucket and gives the pages back, so a rank holds the full gradient only for buckets
//            in flight. Accumulation micro-steps each reduce: the owner's shard accumulates the
//            reduced sums, and the other ranks start every micro-step from zeros.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "dist/process_group.h"

namespace tessera::dist {

struct ZeroPartition {
  struct Piece {
    int64_t begin, end;  // flat range
    int owner;
  };

  int64_t numel = 0;  // of the flat buffers: a multiple of world
  int rank = 0, world = 1;

  int64_t shard_size() const { return numel / world; }
  int64_t begin() const { return shard_size() * rank; }
  int64_t end() const { return shard_size() * (rank + 1); }
  // This rank's shard of a flat buffer.
  Tensor Mine(const Tensor& flat) const { return flat.Slice0(begin(), end()); }
  // [begin, end) cut at shard boundaries, each piece with its owner.
  std::vector<Piece> Split(int64_t begin, int64_t end) const;
};

// Zeroes `t` and, on the CPU, gives its pages back (core/allocator.h): what a rank drops of a
// bucket or layer it does not own.
void ZeroAndRelease(Tensor t);

// The partition of `numel` elements over `group`; ValueError unless numel is a multiple of its size.
ZeroPartition MakeZeroPartition(int64_t numel, const ProcessGroup& group);

// All-gathers every rank's shard of `values` in place: afterwards every rank holds every shard.
void GatherShards(Tensor& values, const ZeroPartition& p, ProcessGroup& group, const CollectiveOptions& o);

// The sum of squares of the whole gradient when each rank holds the reduced gradient of its own
// shard only: this rank's shard summed, plus `add`, then all-reduced (the same value on every rank;
// a NaN `add` on any rank makes it NaN everywhere).
double GlobalSumSquares(const Tensor& grads, const ZeroPartition& p, ProcessGroup& group, const CollectiveOptions& o,
                        double add = 0);

}  // namespace tessera::dist
