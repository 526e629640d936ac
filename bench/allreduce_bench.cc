// W3 and the reducer's overhead, under mpirun: tessera's all-reduce against a raw MPI_Allreduce of
// the same bytes, in the same run.
//
//   mpirun -np 2 build/bench/allreduce_bench [--min-bytes 4096] [--max-bytes 268435456]
//
// Prints one JSON line per measurement on rank 0: bytes, time (the slowest rank's mean per
// iteration), algbw = bytes / time and busbw = algbw * 2 (n - 1) / n (the nccl-tests definitions).
// Then the reducer: W2's gradients (one flat buffer, the default 25 MB buckets) reduced through
// dist::Reducer with every gradient-ready hook fired in backward order, against MPI_Allreduce of
// the flat buffer.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/models.h"
#include "dist/mpi/runtime.h"
#include "dist/reducer.h"

using namespace tessera;
using Clock = std::chrono::steady_clock;

namespace {

int Iterations(size_t bytes) {
  if (bytes <= (1u << 20)) return 200;
  if (bytes <= (16u << 20)) return 20;
  return 5;
}

// The slowest rank's mean seconds per iteration of fn.
template <typename Fn>
double TimeIt(int iters, Fn fn) {
  for (int i = 0; i < std::max(2, iters / 10); ++i) fn();  // warm-up
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) fn();
  double t = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
  double worst = 0;
  MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  size_t min_bytes = 4096, max_bytes = size_t(256) << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--min-bytes")) min_bytes = std::stoull(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--max-bytes")) max_bytes = std::stoull(argv[i + 1]);
  }
  dist::InitMpi(&argc, &argv);
  {
    auto world = dist::WorldGroup();
    const int n = world->size(), rank = world->rank();
    const double bus = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    MPI_Comm raw;
    MPI_Comm_dup(MPI_COMM_WORLD, &raw);
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
      int64_t count = static_cast<int64_t>(bytes / 4);
      Tensor t = Tensor::Full({count}, 1.0);
      int iters = Iterations(bytes);
      double mpi = TimeIt(iters, [&] {
        MPI_Allreduce(MPI_IN_PLACE, t.raw_data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw);
      });
      double tes = TimeIt(iters, [&] { world->AllReduce(t)->Wait(); });
      if (rank == 0)
        std::printf("{\"kind\": \"allreduce\", \"ranks\": %d, \"bytes\": %zu, \"iters\": %d, "
                    "\"mpi_us\": %.2f, \"tessera_us\": %.2f, \"mpi_busbw_gbs\": %.3f, \"tessera_busbw_gbs\": %.3f}\n",
                    n, bytes, iters, mpi * 1e6, tes * 1e6, bytes / mpi * bus / 1e9, bytes / tes * bus / 1e9);
      std::fflush(stdout);
    }

    // The reducer on W2's gradients.
    auto net = models::BuildCnn({});
    nn::FlatParameters params(*net);
    dist::Reducer reducer(params, *world);
    const auto& entries = params.entries();
    int iters = 100;
    double red = TimeIt(iters, [&] {
      for (size_t i = entries.size(); i-- > 0;) (*entries[i].param->grad_ready_hook)(*entries[i].param);
      reducer.Finish();
    });
    double mpi = TimeIt(iters, [&] {
      MPI_Allreduce(MPI_IN_PLACE, params.grads().raw_data(), static_cast<int>(params.numel()), MPI_FLOAT, MPI_SUM,
                    raw);
    });
    if (rank == 0)
      std::printf("{\"kind\": \"reducer\", \"model\": \"w2\", \"ranks\": %d, \"bytes\": %lld, \"buckets\": %zu, "
                  "\"mpi_us\": %.2f, \"reducer_us\": %.2f, \"overhead\": %.4f}\n",
                  n, static_cast<long long>(params.numel() * 4), reducer.buckets().size(), mpi * 1e6, red * 1e6,
                  red / mpi - 1);
    MPI_Comm_free(&raw);
  }
  dist::FinalizeMpi();
  return 0;
}
