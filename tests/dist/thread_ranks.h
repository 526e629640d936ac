// Runs a function as every rank of a thread process group (dist/threads/), one thread per rank,
// and collects what each rank threw.
#pragma once

#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dist/threads/thread_process_group.h"

namespace tessera::dist::thread_test {

// fn(rank's group) on `n` threads; returns each rank's exception message ("" when it returned).
inline std::vector<std::string> RunRanks(int n, const std::function<void(ProcessGroup&)>& fn) {
  std::vector<std::unique_ptr<ProcessGroup>> groups = MakeThreadGroups(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(*groups[r]);
      } catch (const std::exception& e) {
        errors[r] = e.what();
        if (errors[r].empty()) errors[r] = "(an exception without a message)";
      }
    });
  for (std::thread& t : threads) t.join();
  return errors;
}

}  // namespace tessera::dist::thread_test
