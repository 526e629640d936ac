// The two tiers of docs/errors.md: recoverable failures throw a class derived from tessera::Error,
// broken invariants go through the fatal handler, whose default prints and aborts the process.
#include <gtest/gtest.h>

#include <csignal>
#include <string>

#include "core/error.h"

namespace tessera {
namespace {

// The single-process fatal handler: the message names file, line, condition and the streamed
// pieces, and the process ends by SIGABRT (not by exit, which would run destructors and flush).
TEST(FatalHandlerDeathTest, DefaultHandlerPrintsTheCheckAndAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(TESSERA_CHECK(1 + 1 == 3, "(deliberately broken, step ", 7, ")"),
              ::testing::KilledBySignal(SIGABRT),
              "^tessera: fatal: .*error_test\\.cc:[0-9]+: check failed: 1 \\+ 1 == 3 \\(deliberately broken, step 7\\)");
}

[[noreturn]] void ThrowingHandler(const std::string& message) { throw ValueError("handled: " + message); }
void ReturningHandler(const std::string&) {}

// An installed handler receives the same message; SetFatalHandler returns the previous one, and
// nullptr restores the default.
TEST(FatalHandler, AnInstalledHandlerGetsTheMessageAndCanBeUndone) {
  FatalHandler previous = SetFatalHandler(&ThrowingHandler);
  try {
    TESSERA_CHECK(false, "x=", 3);
    ADD_FAILURE() << "the handler was not called";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("error_test.cc:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("check failed: false x=3"), std::string::npos) << e.what();
  }
  EXPECT_EQ(SetFatalHandler(previous), &ThrowingHandler);
  TESSERA_CHECK(true, "never evaluated into a failure");
}

// A handler that returns is itself a bug: the process still aborts.
TEST(FatalHandlerDeathTest, AHandlerThatReturnsStillAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        SetFatalHandler(&ReturningHandler);
        TESSERA_CHECK(false);
      },
      ::testing::KilledBySignal(SIGABRT), "");
}

// Recoverable failures are tessera::Error and keep their message; the subclasses the trainer tells
// apart stay distinct.
TEST(ErrorClasses, DeriveFromErrorAndKeepTheirMessage) {
  try {
    TESSERA_THROW(ShapeError, "matmul: ", 3, "x", 4, " by ", 5, "x", 6);
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "matmul: 3x4 by 5x6");
    EXPECT_NE(dynamic_cast<const ShapeError*>(&e), nullptr);
  }
  EXPECT_THROW(throw DeviceError("d"), Error);
  EXPECT_THROW(throw ConfigError("c"), Error);
}

}  // namespace
}  // namespace tessera
