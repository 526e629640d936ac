// Checks run on one background thread in the order they are added, so that checksumming one
// tensor overlaps reading the next. Add() waits while `max_pending` checks are queued (each may
// hold a tensor alive), so memory stays bounded. Finish() waits for all of them and rethrows the
// first failure (later checks are skipped once one has failed). Add() and Finish() from one
// thread only.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace tessera::io {

class CheckQueue {
 public:
  explicit CheckQueue(size_t max_pending = 4) : max_pending_(max_pending), thread_([this] { Loop(); }) {}
  ~CheckQueue() { Stop(); }
  CheckQueue(const CheckQueue&) = delete;
  CheckQueue& operator=(const CheckQueue&) = delete;

  void Add(std::function<void()> check) {
    {
      std::unique_lock<std::mutex> l(mu_);
      space_.wait(l, [&] { return queue_.size() < max_pending_; });
      queue_.push_back(std::move(check));
    }
    cv_.notify_one();
  }
  void Finish() {
    Stop();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void Stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  void Loop() {
    for (;;) {
      std::function<void()> check;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        check = std::move(queue_.front());
        queue_.pop_front();
      }
      space_.notify_one();
      if (error_) continue;  // only this thread writes error_ until it is joined
      try {
        check();
      } catch (...) {
        error_ = std::current_exception();
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, space_;
  const size_t max_pending_;
  std::deque<std::function<void()>> queue_;
  bool done_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace tessera::io
