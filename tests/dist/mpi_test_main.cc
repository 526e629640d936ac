// gtest main for suites run under mpirun: initialises MPI, runs the tests on every rank, agrees
// on pass/fail across ranks and prints on rank 0. Other ranks print only their failures, each
// line prefixed with the rank.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "dist/mpi/runtime.h"
#include "tests/dist/mpi_test_env.h"

namespace tessera::dist::mpi_test {
namespace {

std::unique_ptr<ProcessGroup> g_world;

// Failures on ranks other than 0, whose default printer is removed.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The name is kept here: UnitTest::current_test_info() would deadlock inside OnTestPartResult.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_ = "(outside a test)"; }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "unknown file", result.line_number(),
                 result.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_ = "(outside a test)";
};

}  // namespace

ProcessGroup& World() { return *g_world; }

}  // namespace tessera::dist::mpi_test

int main(int argc, char** argv) {
  using namespace tessera::dist;
  try {
    InitMpi(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi test: %s\n", e.what());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new mpi_test::RankFailurePrinter(rank));
  }

  int failed = 1;
  try {
    mpi_test::g_world = WorldGroup();
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    mpi_test::g_world.reset();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] mpi test: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed)
    std::fprintf(stderr, "mpi test: rank 0 passed, but another rank failed (see [rank N] lines)\n");
  try {
    FinalizeMpi();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] mpi test: %s\n", rank, e.what());
    return 1;
  }
  return any_failed;
}
