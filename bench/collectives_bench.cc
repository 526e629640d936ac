// W3 and the reducer's overhead, under mpirun: each tessera collective (all-reduce, all-gather,
// reduce-scatter, reduce) against the raw MPI call on the same bytes, in the same run.
//
//   mpirun -np 2 build/bench/collectives_bench [--min-bytes 4096] [--max-bytes 268435456]
//
// Prints one JSON line per measurement on rank 0: the collective, bytes (of the whole buffer:
// all-gather's output, reduce-scatter's input), time (the slowest rank's mean per iteration),
// algbw = bytes / time and busbw = algbw * factor, as nccl-tests defines them: 2 (n - 1) / n for
// all-reduce, (n - 1) / n for all-gather and reduce-scatter, 1 for reduce. Then the reducer: W2's
// gradients (one flat buffer, the default 25 MB buckets) reduced through dist::Reducer with every
// gradient-ready hook fired in backward order, against MPI_Allreduce of the flat buffer.
#include <mpi.h>

#include <algorithm>
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
    MPI_Comm raw;
    MPI_Comm_dup(MPI_COMM_WORLD, &raw);
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
      // The whole buffer holds `count` floats; all-gather and reduce-scatter move n blocks of it.
      const int64_t count = static_cast<int64_t>(bytes / 4) / n * n, block = count / n;
      Tensor full = Tensor::Full({count}, 1.0), part = Tensor::Full({block}, 1.0);
      const int iters = Iterations(bytes);
      const double ring = n > 1 ? static_cast<double>(n - 1) / n : 1.0;
      // Raw MPI before and after tessera, the faster of the two: the first run of a size also pays
      // for first touches and MPI's own warm-up of that size.
      const auto report = [&](const char* kind, double factor, const auto& raw_call, const auto& tessera_call) {
        double mpi = TimeIt(iters, raw_call);
        const double tes = TimeIt(iters, tessera_call);
        mpi = std::min(mpi, TimeIt(iters, raw_call));
        if (rank != 0) return;
        std::printf("{\"kind\": \"%s\", \"ranks\": %d, \"bytes\": %lld, \"iters\": %d, \"mpi_us\": %.2f, "
                    "\"tessera_us\": %.2f, \"mpi_busbw_gbs\": %.3f, \"tessera_busbw_gbs\": %.3f}\n",
                    kind, n, static_cast<long long>(count * 4), iters, mpi * 1e6, tes * 1e6,
                    count * 4 / mpi * factor / 1e9, count * 4 / tes * factor / 1e9);
        std::fflush(stdout);
      };
      const int c = static_cast<int>(count), b = static_cast<int>(block);
      report(
          "allreduce", 2 * ring, [&] { MPI_Allreduce(MPI_IN_PLACE, full.raw_data(), c, MPI_FLOAT, MPI_SUM, raw); },
          [&] { world->AllReduce(full)->Wait(); });
      report(
          "allgather", ring,
          [&] { MPI_Allgather(part.raw_data(), b, MPI_FLOAT, full.raw_data(), b, MPI_FLOAT, raw); },
          [&] { world->AllGather(part, full)->Wait(); });
      report(
          "reduce_scatter", ring,
          [&] { MPI_Reduce_scatter_block(full.raw_data(), part.raw_data(), b, MPI_FLOAT, MPI_SUM, raw); },
          [&] { world->ReduceScatter(full, part)->Wait(); });
      report(
          "reduce", 1.0,
          [&] {
            MPI_Reduce(rank == 0 ? MPI_IN_PLACE : full.raw_data(), rank == 0 ? full.raw_data() : nullptr, c, MPI_FLOAT,
                       MPI_SUM, 0, raw);
          },
          [&] { world->Reduce(full, 0)->Wait(); });
    }

    // The reducer on W2's gradients.
    auto net = models::BuildCnn({});
    nn::FlatParameters params(*net);
    dist::Reducer reducer(params, *world);
    const auto& entries = params.entries();
    int iters = 100;
    const auto raw_allreduce = [&] {
      MPI_Allreduce(MPI_IN_PLACE, params.grads().raw_data(), static_cast<int>(params.numel()), MPI_FLOAT, MPI_SUM,
                    raw);
    };
    double mpi = TimeIt(iters, raw_allreduce);  // before and after, the faster kept, as above
    const double red = TimeIt(iters, [&] {
      for (size_t i = entries.size(); i-- > 0;) (*entries[i].param->grad_ready_hook)(*entries[i].param);
      reducer.Finish();
    });
    mpi = std::min(mpi, TimeIt(iters, raw_allreduce));
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
