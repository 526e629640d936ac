// Dynamic batching: concurrent requests for one model version are merged into one forward pass of
// up to max_batch_size examples. The first request of a batch waits at most max_queue_delay_us for
// others to join it (Triton's dynamic_batching, TF Serving's batching_parameters). A pool of
// worker threads each forms and runs batches, so with W workers W batches run at once.
//
// A request larger than max_batch_size is refused before it gets here (serve/served_version.cc).
// When more than max_queue requests wait, Run() throws RequestError 503 with Retry-After.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "core/device.h"

namespace tessera::serve {

struct BatchOptions {
  int max_batch_size = 64;          // examples in one forward pass
  int64_t max_queue_delay_us = 500;  // how long a batch's first request waits for company
  int workers = 1;                   // batches run at once
  int max_queue = 1024;              // requests waiting; beyond this, 503
  bool batching = true;              // false: every request runs alone, as it arrives
  Device device = Device::CPU();     // where the workers run the forward pass (the weights live there)
};

class Batcher {
 public:
  // run(worker, x, n, y): the forward pass of n examples of in_numel floats each into n * out_numel
  // floats. observe(queue_seconds, batch_examples) is called once per request as its batch starts.
  using RunFn = std::function<void(int worker, const float* x, int64_t n, float* y)>;
  using ObserveFn = std::function<void(double queue_s, int64_t batch)>;
  Batcher(const BatchOptions& options, int64_t in_numel, int64_t out_numel, RunFn run, ObserveFn observe);
  // Runs what is queued, then stops the workers.
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Runs n examples through the model as part of some batch; blocks until y holds the outputs.
  void Run(const float* x, int64_t n, float* y);

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    const float* x;
    int64_t n;
    float* y;
    Clock::time_point arrival;
    std::promise<void> done;
  };
  void WorkerLoop(int worker);
  // Takes the next batch off the queue (lock held): empty when stopping with nothing queued.
  std::vector<Pending*> NextBatch(std::unique_lock<std::mutex>& lock);
  void RunBatch(int worker, const std::vector<Pending*>& batch, std::vector<float>& x, std::vector<float>& y);

  const BatchOptions options_;
  const int64_t in_numel_, out_numel_;
  RunFn run_;
  ObserveFn observe_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending*> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace tessera::serve
