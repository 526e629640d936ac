// Process groups: collectives over a set of ranks (compare PyTorch c10d's ProcessGroup and Work).
//
// Contract:
//  * Every collective is asynchronous: it returns a Work at once; Wait() blocks until it is done.
//  * Collectives on one group run in the order they were issued, on every rank in the same order;
//    each carries a sequence number (1, 2, ...) that is the same on every rank.
//  * Every collective has a deadline (options.timeout_s). If it has not completed by then,
//    Wait() throws CommTimeoutError naming the collective, its sequence number, the ranks that
//    did not arrive and, where the backend can tell, the ranks that stopped responding. A group
//    whose collective timed out is broken: every later call throws.
//  * Tensors must stay alive and unmodified until Wait() returns. Tensors of the MPI backend are
//    CPU tensors; those of the NCCL backend CUDA tensors.
//  * Thread safety: issue collectives from one thread; Wait() may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace tessera::dist {

// A collective failed (a peer died, the transport broke).
class CommError : public Error { using Error::Error; };
// A collective did not complete before its deadline.
class CommTimeoutError : public CommError { using CommError::CommError; };

enum class ReduceOp { kSum, kAvg, kMax, kMin };

struct CollectiveOptions {
  ReduceOp op = ReduceOp::kSum;
  double timeout_s = 300;
};

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective completes; rethrows its failure (CommError, CommTimeoutError).
  virtual void Wait() = 0;
  virtual bool IsCompleted() = 0;
  virtual uint64_t sequence() const = 0;
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In place: every rank ends with the reduction over all ranks.
  virtual std::shared_ptr<Work> AllReduce(Tensor& t, const CollectiveOptions& o = {}) = 0;
  // In place: rank `root` ends with the reduction over all ranks; the others' tensors are left as
  // they were (compare MPI_Reduce, ncclReduce).
  virtual std::shared_ptr<Work> Reduce(Tensor& t, int root, const CollectiveOptions& o = {}) = 0;
  // input: size() * n elements; output: n elements, the reduction of block rank() of every input.
  virtual std::shared_ptr<Work> ReduceScatter(const Tensor& input, Tensor& output, const CollectiveOptions& o = {}) = 0;
  // input: n elements; output: size() * n elements, rank r's input at block r. In place when
  // input is output's block rank() (as NCCL allows); any other overlap is an error.
  virtual std::shared_ptr<Work> AllGather(const Tensor& input, Tensor& output, const CollectiveOptions& o = {}) = 0;
  virtual std::shared_ptr<Work> Broadcast(Tensor& t, int root, const CollectiveOptions& o = {}) = 0;
  virtual std::shared_ptr<Work> Barrier(const CollectiveOptions& o = {}) = 0;

  // A sub-group of the ranks that pass the same colour, ordered by key (MPI_Comm_split). Every
  // rank of this group must call it, in the same order relative to other collectives, within
  // `timeout_s` (the job's parallel.collective_timeout_s where a job makes it).
  virtual std::unique_ptr<ProcessGroup> Split(int color, int key, double timeout_s = CollectiveOptions{}.timeout_s) = 0;
};

}  // namespace tessera::dist
