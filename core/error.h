// Errors in two tiers (see docs/errors.md):
//  * Recoverable failures -- bad input, bad config, I/O, communication, timeouts -- throw an
//    exception derived from tessera::Error. The message says what went wrong, where (op, file,
//    field, tensor, rank) and, where it helps, what to do.
//  * Broken invariants (bugs) go through TESSERA_CHECK, which reports and stops the whole job via
//    the fatal handler (the default aborts this process; the distributed runtime installs one
//    that aborts every rank). Library code never calls exit().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace tessera {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A tensor shape or dtype that does not fit the op. The message names the op and both shapes.
class ShapeError : public Error { using Error::Error; };
// An argument outside its valid range (negative size, probability > 1, ...).
class ValueError : public Error { using Error::Error; };
// Something asked of a device that it cannot do (no GPU, kernel not compiled for it).
class DeviceError : public Error { using Error::Error; };
class IoError : public Error { using Error::Error; };
class ConfigError : public Error { using Error::Error; };
class DataError : public Error { using Error::Error; };

using FatalHandler = void (*)(const std::string& message);
// Replaces the handler run by TESSERA_CHECK failures; returns the previous one. The handler must
// not return (the default prints to stderr and calls std::abort()).
FatalHandler SetFatalHandler(FatalHandler handler);
[[noreturn]] void Fatal(const char* file, int line, const std::string& message);

namespace detail {
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace tessera

// Throws ErrorType with the streamed pieces as its message: TESSERA_THROW(ShapeError, "a", 1).
#define TESSERA_THROW(ErrorType, ...) throw ErrorType(::tessera::detail::StrCat(__VA_ARGS__))

// Invariant check: on failure stops the job (see SetFatalHandler). Not for user input.
#define TESSERA_CHECK(cond, ...)                                                            \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      ::tessera::Fatal(__FILE__, __LINE__,                                                  \
                       ::tessera::detail::StrCat("check failed: " #cond " ", ##__VA_ARGS__)); \
    }                                                                                       \
  } while (0)
