#include "core/error.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace tessera {
namespace {
[[noreturn]] void DefaultFatal(const std::string& message) {
  std::fprintf(stderr, "tessera: fatal: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}
std::atomic<FatalHandler> g_fatal{&DefaultFatal};
}  // namespace

FatalHandler SetFatalHandler(FatalHandler handler) {
  return g_fatal.exchange(handler ? handler : &DefaultFatal);
}

void Fatal(const char* file, int line, const std::string& message) {
  g_fatal.load()(detail::StrCat(file, ":", line, ": ", message));
  std::abort();  // a handler that returns is itself a bug
}

}  // namespace tessera
