#include "jobs/preemption.h"

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace tessera::jobs {
namespace {

volatile std::sig_atomic_t g_received = 0;
std::vector<int> g_watched;

extern "C" void RecordSignal(int sig) {
  if (g_received == 0) g_received = sig;
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
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = RecordSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a read or a collective's poll interrupted by the signal goes on
  for (int sig : signals)
    if (sigaction(sig, &sa, nullptr) != 0)
      TESSERA_THROW(ConfigError, "cannot watch signal ", SignalName(sig), ": ", std::strerror(errno));
  g_watched = signals;
}

void StopWatchingPreemptSignals() {
  for (int sig : g_watched) std::signal(sig, SIG_DFL);
  g_watched.clear();
}

int PreemptSignalReceived() { return g_received; }

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
