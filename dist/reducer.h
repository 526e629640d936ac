// The data-parallel gradient reducer (compare PyTorch DDP's Reducer, Horovod's tensor fusion).
//
// Gradients live in one flat buffer (nn::FlatParameters), laid out in forward order, and backward
// finishes them from the end of the buffer towards the start. The reducer cuts the buffer into
// buckets of about `bucket_mb` each, walking parameters from the last to the first, so every
// bucket is one contiguous slice of the flat buffer: all-reduced in place, no copies. As soon as
// every parameter of a bucket has reported its gradient final (the FlatParameters hook), that
// bucket's all-reduce starts, while backward goes on with earlier layers. Buckets start in the same
// order on every rank (bucket 0, 1, ...), so the collectives match up.
//
// Each rank scales its loss so that the sum over ranks is the global mean (see the trainer); the
// reducer therefore sums. Finish() waits for every bucket and rethrows a communication failure.
//
// Given a ZeRO partition (stage 2, dist/zero.h), a bucket is instead reduced to the rank or ranks
// that own it (one Reduce per owner's piece); once a piece is reduced, every other rank zeroes its
// copy and gives the pages back, so only the owner's shard and the buckets in flight stay held.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "dist/process_group.h"
#include "dist/zero.h"

namespace tessera::dist {

class Reducer {
 public:
  struct Bucket {
    int64_t begin, end;           // element range of the flat gradient buffer
    std::vector<int> params;      // indices into FlatParameters::entries()
  };

  // Installs itself as params' gradient-ready hook. `params`, `group` and `partition` (null:
  // all-reduce every bucket) must outlive it.
  Reducer(nn::FlatParameters& params, ProcessGroup& group, double bucket_mb = 25, double timeout_s = 300,
          const ZeroPartition* partition = nullptr);
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // Whether the next backward's hooks start all-reduces (false on accumulation micro-steps that
  // are not the last: those only accumulate locally).
  void set_enabled(bool enabled) { enabled_ = enabled; }
  // Starts every bucket not yet started (parameters that got no gradient this step) and waits
  // for all of them. Resets for the next step.
  void Finish();

  const std::vector<Bucket>& buckets() const { return buckets_; }

 private:
  struct InFlight {
    std::shared_ptr<Work> work;
    int64_t begin, end;  // the flat range it reduces
    bool release;        // zero it and give its pages back once done (reduced to another rank)
  };
  void OnGradReady(nn::Parameter& p);
  void LaunchReady();
  void Launch(const Bucket& b);
  // Releases the reduced pieces, in order, up to the first still in flight (all with `wait`).
  void Retire(bool wait);

  nn::FlatParameters& params_;
  ProcessGroup& group_;
  CollectiveOptions options_;
  bool enabled_ = true;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_param_;  // by entry index
  std::vector<int> pending_;          // per bucket: parameters still to report
  std::vector<int> param_index_by_offset_;
  int next_to_launch_ = 0;
  const ZeroPartition* partition_;
  std::vector<InFlight> work_;
  size_t retired_ = 0;  // work_[0, retired_) is done
};

// Checks that every rank built the same parameters (names, offsets, sizes, dtype; a ConfigError on
// every rank naming those that differ), copies rank `root`'s values to every rank, then checks
// that all ranks hold the same bits (a checksum compared with a min/max all-reduce; CommError).
void BroadcastParameters(nn::FlatParameters& params, ProcessGroup& group, int root = 0, double timeout_s = 300);

}  // namespace tessera::dist
