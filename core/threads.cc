#include "core/threads.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "tessera/config.h"

#if TESSERA_USE_ONEDNN
#include <omp.h>
#endif

namespace tessera {
#if TESSERA_USE_ONEDNN
// With oneDNN, which runs on OpenMP, ParallelFor runs on OpenMP's threads as well: one pool for
// tessera's kernels and oneDNN's, instead of two pools spinning against each other.
namespace {
std::atomic<int> g_omp_threads{0};
int OmpThreads() {
  int n = g_omp_threads.load();
  if (n == 0) {
    n = 1;
    if (const char* env = std::getenv("TESSERA_NUM_THREADS")) n = std::max(1, std::atoi(env));
    openblas_set_num_threads(1);
    g_omp_threads = n;
  }
  return n;
}
}  // namespace

void SetNumThreads(int n) {
  if (n < 1) TESSERA_THROW(ValueError, "thread count must be at least 1, got ", n);
  g_omp_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(1);
}

int GetNumThreads() { return OmpThreads(); }

void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int threads = OmpThreads();
  if (threads == 1 || n < 2 * std::max<int64_t>(grain, 1) || omp_in_parallel()) {
    fn(0, n);
    return;
  }
  // An exception must not leave an OpenMP region: the first one is kept and rethrown here.
  std::exception_ptr error;
  std::mutex error_mu;
#pragma omp parallel num_threads(threads)
  {
    const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
    const int64_t begin = n * part / parts, end = n * (part + 1) / parts;
    try {
      if (begin < end) fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

#else  // the own pool

namespace {

class Pool {
 public:
  ~Pool() { Resize(1); }

  void Resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    num_threads_ = n;
    // Workers start from the current generation, read here: a worker that read it itself could
    // miss a Run() issued before it was scheduled, and the Run would wait for it forever.
    const uint64_t start = generation_;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, start] { WorkerLoop(i, start); });
  }

  int num_threads() const { return num_threads_; }

  void Run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    int parts = num_threads_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    cv_.notify_all();
    RunPart(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });  // always: workers use fn's captures
    fn_ = nullptr;
    std::exception_ptr error = error_;
    error_ = nullptr;
    lock.unlock();
    if (error) std::rethrow_exception(error);
  }

  static thread_local bool in_worker;

 private:
  void RunPart(int part) {
    int64_t begin = n_ * part / parts_;
    int64_t end = n_ * (part + 1) / parts_;
    if (begin < end) {
      in_worker = true;
      try {
        (*fn_)(begin, end);
      } catch (...) {  // kept for Run() to rethrow once every part has finished
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      in_worker = false;
    }
  }

  void WorkerLoop(int index, uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
      }
      RunPart(index);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  std::mutex run_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 1;
  int pending_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
  bool stop_ = false;
  int num_threads_ = 1;
};

thread_local bool Pool::in_worker = false;

Pool& GetPool() {
  static Pool* pool = [] {
    auto* p = new Pool();
    int n = 1;
    if (const char* env = std::getenv("TESSERA_NUM_THREADS")) n = std::max(1, std::atoi(env));
    p->Resize(n);
    openblas_set_num_threads(1);  // tessera splits GEMMs itself (ops/cpu/gemm.cc)
    return p;
  }();
  return *pool;
}

}  // namespace

void SetNumThreads(int n) {
  if (n < 1) TESSERA_THROW(ValueError, "thread count must be at least 1, got ", n);
  Pool& pool = GetPool();
  if (pool.num_threads() != n) pool.Resize(n);
  openblas_set_num_threads(1);
}

int GetNumThreads() { return GetPool().num_threads(); }

void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  Pool& pool = GetPool();
  if (pool.num_threads() == 1 || n < 2 * std::max<int64_t>(grain, 1) || Pool::in_worker) {
    fn(0, n);
    return;
  }
  pool.Run(n, fn);
}

#endif  // TESSERA_USE_ONEDNN

}  // namespace tessera
