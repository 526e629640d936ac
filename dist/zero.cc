#include "dist/zero.h"

#include <algorithm>

#include "core/allocator.h"
#include "core/ops/ops.h"

namespace tessera::dist {

std::vector<ZeroPartition::Piece> ZeroPartition::Split(int64_t lo, int64_t hi) const {
  std::vector<Piece> pieces;
  const int64_t s = shard_size();
  while (lo < hi) {
    const int owner = s > 0 ? static_cast<int>(std::min<int64_t>(lo / s, world - 1)) : world - 1;
    const int64_t stop = std::min(hi, s > 0 ? (owner + 1) * s : hi);
    pieces.push_back({lo, stop, owner});
    lo = stop;
  }
  return pieces;
}

void ZeroAndRelease(Tensor t) {
  if (t.device().is_cpu()) ZeroAndReleasePages(t.raw_data(), t.nbytes());
  else t.Zero();
}

ZeroPartition MakeZeroPartition(int64_t numel, const ProcessGroup& group) {
  if (numel < 0 || numel % group.size() != 0)
    TESSERA_THROW(ValueError, "ZeRO: the flat buffers hold ", numel, " elements, not a multiple of the ", group.size(),
                  " ranks (lay them out with FlatParameters' size_multiple = the group size)");
  ZeroPartition p;
  p.numel = numel;
  p.rank = group.rank();
  p.world = group.size();
  return p;
}

void GatherShards(Tensor& values, const ZeroPartition& p, ProcessGroup& group, const CollectiveOptions& o) {
  if (values.numel() != p.numel)
    TESSERA_THROW(ShapeError, "ZeRO: gathering ", values.numel(), " elements over a partition of ", p.numel);
  Tensor mine = p.Mine(values);
  group.AllGather(mine, values, o)->Wait();
}

double GlobalSumSquares(const Tensor& grads, const ZeroPartition& p, ProcessGroup& group, const CollectiveOptions& o,
                        double add) {
  Tensor v = Tensor::FromVector({ops::SumSquares(p.Mine(grads)) + add}, {1}, DType::kF64);
  CollectiveOptions sum = o;
  sum.op = ReduceOp::kSum;
  group.AllReduce(v, sum)->Wait();
  return v.data<double>()[0];
}

}  // namespace tessera::dist
