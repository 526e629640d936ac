#include "serve/batcher.h"

#include <algorithm>
#include <cstring>

#include "serve/protocol.h"

namespace tessera::serve {

Batcher::Batcher(const BatchOptions& options, int64_t in_numel, int64_t out_numel, RunFn run, ObserveFn observe)
    : options_(options), in_numel_(in_numel), out_numel_(out_numel), run_(std::move(run)), observe_(std::move(observe)) {
  for (int w = 0; w < std::max(1, options_.workers); ++w) workers_.emplace_back([this, w] { WorkerLoop(w); });
}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void Batcher::Run(const float* x, int64_t n, float* y) {
  Pending p{x, n, y, Clock::now(), {}};
  std::future<void> done = p.done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw RequestError(503, "the server is shutting down", 1);
    if (static_cast<int>(queue_.size()) >= options_.max_queue)
      throw RequestError(503, detail::StrCat("too many requests queued (", queue_.size(), ", --max-queue ",
                                             options_.max_queue, "); retry shortly"), 1);
    queue_.push_back(&p);
  }
  cv_.notify_one();
  done.get();  // rethrows what the forward pass threw
}

std::vector<Batcher::Pending*> Batcher::NextBatch(std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
  std::vector<Pending*> batch;
  if (queue_.empty()) return batch;
  const Clock::time_point deadline = queue_.front()->arrival + std::chrono::microseconds(options_.max_queue_delay_us);
  int64_t n = 0;
  for (;;) {
    while (!queue_.empty() && (batch.empty() || (options_.batching && n + queue_.front()->n <= options_.max_batch_size))) {
      n += queue_.front()->n;
      batch.push_back(queue_.front());
      queue_.pop_front();
    }
    const bool full = !options_.batching || n >= options_.max_batch_size || !queue_.empty();  // the next one won't fit
    if (full || stop_ || Clock::now() >= deadline) break;
    cv_.wait_until(lock, deadline, [this] { return stop_ || !queue_.empty(); });
  }
  if (!queue_.empty()) cv_.notify_one();  // leave the rest to another worker
  return batch;
}

void Batcher::RunBatch(int worker, const std::vector<Pending*>& batch, std::vector<float>& x, std::vector<float>& y) {
  const Clock::time_point start = Clock::now();
  int64_t n = 0;
  for (Pending* p : batch) n += p->n;
  for (Pending* p : batch) observe_(std::chrono::duration<double>(start - p->arrival).count(), n);
  try {
    if (batch.size() == 1) {
      run_(worker, batch[0]->x, n, batch[0]->y);
    } else {
      x.resize(static_cast<size_t>(n * in_numel_));
      y.resize(static_cast<size_t>(n * out_numel_));
      int64_t row = 0;
      for (Pending* p : batch) {
        std::memcpy(x.data() + row * in_numel_, p->x, sizeof(float) * p->n * in_numel_);
        row += p->n;
      }
      run_(worker, x.data(), n, y.data());
      row = 0;
      for (Pending* p : batch) {
        std::memcpy(p->y, y.data() + row * out_numel_, sizeof(float) * p->n * out_numel_);
        row += p->n;
      }
    }
  } catch (...) {
    for (Pending* p : batch) p->done.set_exception(std::current_exception());
    return;
  }
  for (Pending* p : batch) p->done.set_value();
}

void Batcher::WorkerLoop(int worker) {
  std::vector<float> x, y;  // reused between batches
  for (;;) {
    std::vector<Pending*> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      batch = NextBatch(lock);
    }
    if (batch.empty()) return;
    RunBatch(worker, batch, x, y);
  }
}

}  // namespace tessera::serve
