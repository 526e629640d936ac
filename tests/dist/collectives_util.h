// Shared by the MPI process-group suites (collectives_test.cc, collective_failures_test.cc): the
// world group, options, closed-form values and assertions. Rank r contributes r + 1 + (i mod 97)
// at element i, so sums, averages, maxima and minima are exact in f32 even at 4M elements.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "dist/mpi/mpi_process_group.h"
#include "tests/dist/mpi_test_env.h"

namespace tessera::dist {
namespace {

using ::testing::AssertionFailure;
using ::testing::AssertionResult;
using ::testing::AssertionSuccess;
using Clock = std::chrono::steady_clock;

constexpr int64_t kLarge = int64_t{1} << 22;  // 4M elements
// The largest all-reduce, reduce, all-gather output and reduce-scatter input (bytes) that use a
// nonblocking call (dist/mpi/run_op.cc): sizes on both sides are tested.
constexpr int64_t kEdge = int64_t{16} << 10;
constexpr int64_t kReduceEdge = int64_t{4} << 10;
constexpr int64_t kBigEdge = int64_t{256} << 10;
// Short enough that a test which desynchronises the ranks fails before CTest's 120 s limit.
constexpr double kTestTimeoutS = 60;

ProcessGroup& World() { return mpi_test::World(); }

CollectiveOptions Opts(ReduceOp op = ReduceOp::kSum) {
  CollectiveOptions o;
  o.op = op;
  o.timeout_s = kTestTimeoutS;
  return o;
}

double Mod(int64_t i) { return static_cast<double>(i % 97); }

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

template <typename T, typename F>
Tensor Make(int64_t n, F value) {
  Tensor t = Tensor::Empty({n}, DTypeOf<T>::value);
  if (n > 0) {
    T* p = t.data<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(value(i));
  }
  return t;
}

// Compares every element with expected(i); reports how many differ and the first that does.
template <typename T, typename F>
AssertionResult ElementsAre(const Tensor& t, int64_t n, F expected) {
  if (t.numel() != n) return AssertionFailure() << "numel " << t.numel() << ", expected " << n;
  if (n == 0) return AssertionSuccess();
  const T* p = t.data<T>();
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<double>(p[i]) != expected(i)) {
      if (first < 0) first = i;
      ++wrong;
    }
  }
  if (wrong == 0) return AssertionSuccess();
  return AssertionFailure() << wrong << " of " << n << " elements wrong; first at " << first << ": got "
                            << static_cast<double>(p[first]) << ", expected " << expected(first);
}

AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return AssertionSuccess();
  return AssertionFailure() << "\"" << part << "\" not in: " << text;
}

// The message of the E that f() throws; a test failure if it throws nothing or something else.
template <typename E, typename F>
std::string ThrownMessage(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw the wrong type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "threw nothing";
  return "";
}

// The reduction over ranks of r + 1 + m, with P ranks.
double Reduced(ReduceOp op, int P, double m) {
  switch (op) {
    case ReduceOp::kSum:
      return P * (P + 1) / 2.0 + P * m;
    case ReduceOp::kAvg:
      return (P + 1) / 2.0 + m;
    case ReduceOp::kMax:
      return P + m;
    case ReduceOp::kMin:
      return 1 + m;
  }
  return 0;
}

}  // namespace
}  // namespace tessera::dist
