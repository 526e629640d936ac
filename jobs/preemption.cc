#include "jobs/preemption.h"

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace tessera::jobs {
namespace {

// Why a watcher thread: oneDNN's JIT GEMM kernels (Debian's 2.6, up to 3.11; oneDNN issue #4845)
// point the stack pointer into a heap workspace while they run, so a signal handled on a thread
// inside one writes its frame into the heap, and a later free() aborts. The watched signals are
// therefore blocked in the thread that watches them and in every thread it starts later (the
// compute, OpenMP, loader and checkpoint threads), and taken by one thread that does nothing else.
// The handler stays installed for the threads that were started before (the MPI library's), which
// never run those kernels.
// Written by the watcher or by a handler on another thread, read by the training thread: a
// lock-free atomic, which a signal handler may use.
std::atomic<int> g_received{0};
static_assert(std::atomic<int>::is_always_lock_free);
std::vector<int> g_watched;
sigset_t g_set;
std::thread* g_watcher = nullptr;  // leaked when a run ends without stopping it: never destroyed joinable
std::atomic<bool> g_stop{false};

extern "C" void RecordSignal(int sig) {
  int none = 0;
  g_received.compare_exchange_strong(none, sig);  // the first signal stays
}

void Watch() {
  while (true) {
    siginfo_t info;
    int sig = sigwaitinfo(&g_set, &info);
    if (g_stop.load()) return;
    if (sig > 0) RecordSignal(sig);
  }
}

struct NamedSignal {
  const char* name;
  int number;
};
constexpr NamedSignal kSignals[] = {{"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"INT", SIGINT},
                                    {"HUP", SIGHUP},   {"XCPU", SIGXCPU}, {"QUIT", SIGQUIT}};

}  // namespace

std::vector<int> DefaultPreemptSignals() { return {SIGUSR1, SIGTERM}; }

void WatchPreemptSignals(const std::vector<int>& signals) {
  StopWatchingPreemptSignals();
  if (signals.empty()) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = RecordSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a read or a collective's poll interrupted by the signal goes on
  sigemptyset(&g_set);
  for (int sig : signals) {
    if (sigaction(sig, &sa, nullptr) != 0)
      TESSERA_THROW(ConfigError, "cannot watch signal ", SignalName(sig), ": ", std::strerror(errno));
    sigaddset(&g_set, sig);
  }
  g_watched = signals;
  if (int e = pthread_sigmask(SIG_BLOCK, &g_set, nullptr))
    TESSERA_THROW(ConfigError, "cannot block the preemption signals: ", std::strerror(e));
  g_stop = false;
  g_watcher = new std::thread(Watch);  // inherits the block; sigwaitinfo takes the signals
}

void StopWatchingPreemptSignals() {
  if (g_watcher) {
    g_stop = true;
    pthread_kill(g_watcher->native_handle(), g_watched.front());
    g_watcher->join();
    delete g_watcher;
    g_watcher = nullptr;
  }
  for (int sig : g_watched) std::signal(sig, SIG_DFL);
  // A signal that comes from now on (or came since the watcher stopped) has its default action.
  if (!g_watched.empty()) pthread_sigmask(SIG_UNBLOCK, &g_set, nullptr);
  g_watched.clear();
}

int PreemptSignalReceived() { return g_received.load(); }

bool PreemptSignalsBlockedHere() {
  sigset_t now;
  if (g_watched.empty() || pthread_sigmask(SIG_BLOCK, nullptr, &now) != 0) return false;
  for (int sig : g_watched)
    if (!sigismember(&now, sig)) return false;
  return true;
}

int ParseSignalName(const std::string& name) {
  std::string n = name;
  if (n.rfind("SIG", 0) == 0) n = n.substr(3);
  for (const NamedSignal& s : kSignals)
    if (n == s.name) return s.number;
  char* end = nullptr;
  long x = std::strtol(name.c_str(), &end, 10);
  for (const NamedSignal& s : kSignals)
    if (!name.empty() && *end == '\0' && x == s.number) return s.number;
  TESSERA_THROW(ConfigError, "'", name, "' is not a signal tessera can stop on: use USR1, USR2, TERM, INT, HUP, "
                "XCPU or QUIT");
}

std::string SignalName(int sig) {
  for (const NamedSignal& s : kSignals)
    if (s.number == sig) return std::string("SIG") + s.name;
  return "signal " + std::to_string(sig);
}

}  // namespace tessera::jobs
