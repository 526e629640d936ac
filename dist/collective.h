// What every process group backend shares about a collective: its kind and name, the checks of
// its arguments, how it is described in errors ("allreduce #17 (2048 f32, group of 3)"), its
// deadline, and the elementwise reductions a backend computes itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/process_group.h"

namespace tessera::dist::collective {

using Clock = std::chrono::steady_clock;

enum class Kind { kAllReduce, kReduce, kReduceScatter, kAllGather, kBroadcast, kBarrier, kSplit };

// "allreduce", "reduce", "reduce_scatter", "allgather", "broadcast", "barrier", "split".
const char* Name(Kind kind);

// "[0, 2]".
std::string RankList(const std::vector<int>& ranks);
// "2048 f32".
std::string Elements(const Tensor& t);
// "allreduce #17 (2048 f32, group of 3)": `desc` is "" or ends in ", ".
std::string Describe(Kind kind, uint64_t seq, const std::string& desc, int group_size);

// The argument checks every backend makes, throwing ShapeError or ValueError naming the call.
void CheckSameDType(const char* op, const Tensor& input, const Tensor& output);
void CheckReduceScatterSizes(const Tensor& input, const Tensor& output, int group_size);
void CheckAllGatherSizes(const Tensor& input, const Tensor& output, int group_size);
// Whether allgather's input is output's block `rank` (in place); throws ValueError for any other
// overlap of the two.
bool AllGatherInPlace(const Tensor& input, const Tensor& output, int rank);
void CheckRoot(const char* op, int root, int group_size);
void CheckTimeout(Kind kind, double timeout_s);
void CheckColor(int color);

// The deadline of a collective issued at `issued` (longer timeouts are capped, so that every
// deadline is representable).
Clock::time_point Deadline(Clock::time_point issued, double timeout_s);

// The dtypes a CPU backend reduces itself: f32, f64, i32, i64.
bool ReducibleOnCpu(DType t);
// acc[i] = op(acc[i], x[i]) over `n` elements of dtype `t` (kAvg sums; divide afterwards).
void ReduceInto(void* acc, const void* x, int64_t n, DType t, ReduceOp op);
// t[i] /= divisor (kAvg after the sum).
void DivideBy(const Tensor& t, int divisor);

}  // namespace tessera::dist::collective
