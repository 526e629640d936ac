// Helpers shared by the datasets tests: a scratch directory and exception-message checks.
#pragma once

#include <gtest/gtest.h>
#include <cxxabi.h>
#include <unistd.h>

#include <typeinfo>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace tessera::datasets::testing {

// A fresh directory under the test temp dir, removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "tessera_datasets_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The message of the ErrorType that `fn` throws; a test failure (and "") when it throws nothing,
// something else, or a subclass of ErrorType: callers tell the error classes apart (the trainer
// falls back on an IoError and stops on its subclass FormatError), so tests name the exact one.
template <typename ErrorType, typename Fn>
std::string ThrownMessage(Fn&& fn) {
  try {
    fn();
  } catch (const ErrorType& e) {
    if (typeid(e) != typeid(ErrorType)) {
      int status = 0;
      char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
      ADD_FAILURE() << "threw " << (status == 0 && name ? name : typeid(e).name()) << ", a subclass of the expected "
                    << "error type: " << e.what();
      std::free(name);
    }
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a different exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "threw nothing";
  return "";
}

}  // namespace tessera::datasets::testing

// EXPECT_CONTAINS(message, "part"): the message holds the part.
#define EXPECT_CONTAINS(haystack, needle)                                                   \
  do {                                                                                      \
    const std::string h_ = (haystack), n_ = (needle);                                       \
    EXPECT_NE(h_.find(n_), std::string::npos) << "expected \"" << n_ << "\" in:\n  " << h_; \
  } while (0)
