// One intra-op thread count for the whole process.
//
// SetNumThreads(n) bounds every pool tessera uses. There is exactly one: tessera's ParallelFor
// workers. OpenBLAS is pinned to one thread and GEMMs are split across tessera's pool instead
// (core/ops/cpu/gemm.cc).
//
// Determinism: every partition is a pure function of the problem size and the thread count, and
// reductions combine fixed-size chunks in order, so a run is bitwise reproducible at a given
// thread count. Reductions and tessera's own kernels give the same bits at any thread count;
// GEMMs may differ in the last bits between thread counts. Two pools that each believe they own the cores fight over them (PyTorch at 2 threads
// ran slower than at 1 on a 2-core machine for exactly this reason), so nothing in tessera may
// start threads for compute except through this header.
//
// ParallelFor partitions statically; with `grain` chosen per op, small ops run inline on the
// calling thread. Workers sleep on a condition variable between jobs (no spinning), so they
// leave the cores to OpenBLAS while a GEMM runs.
#pragma once

#include <cstdint>
#include <functional>

namespace tessera {

// Sets the intra-op thread count (>= 1). The default is 1, or TESSERA_NUM_THREADS if set.
void SetNumThreads(int n);
int GetNumThreads();

// Calls fn(begin, end) over disjoint ranges covering [0, n). Runs inline when n < 2 * grain or
// one thread is configured. fn must not call ParallelFor itself (nested calls run inline).
void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace tessera
