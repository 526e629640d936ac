// ZeRO stage 3 (dist/zero.h, compare PyTorch FSDP's FULL_SHARD): the parameters are sharded too.
// Each rank keeps only its shard of the flat value buffer resident; the rest of the buffer reads
// as zeros and takes no memory until a gather writes it.
//
// The unit of gathering is a child of the model's top Sequential that has parameters (a Linear, a
// Conv2d). A unit is gathered -- one broadcast from each rank that owns a piece of it -- just before
// its forward, given back after it, gathered again before its backward and given back after that.
// Before a unit computes, the next one's gather is issued (the one after it in forward, the one
// before it in backward), so communication overlaps compute and at most two units are whole at a
// time. Gathers run on a process group of their own, so that their order and the gradient
// reduces' order (which backward's hooks decide) each stay the same on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/nn/module.h"
#include "dist/process_group.h"
#include "dist/zero.h"

namespace tessera::dist {

class ShardedParameters {
 public:
  // Installs itself as `net`'s child hook. `params` (laid out from `net`), `net` and `partition`
  // must outlive it; `gather_group` is used by nothing else.
  ShardedParameters(nn::FlatParameters& params, nn::Sequential& net, const ZeroPartition& partition,
                    std::unique_ptr<ProcessGroup> gather_group, double timeout_s);
  ~ShardedParameters();
  ShardedParameters(const ShardedParameters&) = delete;
  ShardedParameters& operator=(const ShardedParameters&) = delete;

  // Gives back every page of the value buffer outside this rank's shard (after the broadcast at
  // the start, and after GatherAll).
  void Release();
  // Every parameter on every rank (for evaluation, a finite check, publishing): one all-gather.
  // The hooks do nothing until Release().
  void GatherAll();
  // The gathers of one forward and backward pass, without computing: a rank with no examples in
  // a micro-batch keeps its gathers matched with the other ranks'.
  void Walk();
  // The gathers of one forward pass alone (evaluation, where a rank has one batch fewer than
  // others). Forward leaves the last unit whole, for backward: Release() after the last forward.
  void WalkForward();
  // Bytes of the largest unit: what a rank holds gathered beyond its shard is at most two units.
  int64_t largest_unit_bytes() const;

 private:
  enum class State { kReleased, kInFlight, kWhole };
  struct Unit {
    size_t child = 0;
    int64_t begin = 0, end = 0;  // flat range
    State state = State::kReleased;
    std::vector<std::shared_ptr<Work>> work;
  };
  void OnChild(size_t child, nn::Sequential::ChildEvent e);
  void Issue(int u);
  void Await(int u);
  void ReleaseUnit(int u);

  nn::FlatParameters& params_;
  nn::Sequential& net_;
  const ZeroPartition& partition_;
  std::unique_ptr<ProcessGroup> group_;
  CollectiveOptions options_;
  std::vector<Unit> units_;
  std::vector<int> unit_of_child_;  // -1: no parameters
  bool all_whole_ = false;
};

}  // namespace tessera::dist
