// Model store versions (store/): a hostile manifest.pbtxt beside a valid weights file -- file
// lists, names and paths, sha256 sums, lineage -- through Verify and Load.
#include <filesystem>

#include "core/error.h"
#include "store/store.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  namespace fs = std::filesystem;
  const fs::path root = fs::path(fuzz::ScratchDir()) / "store";
  const fs::path version = root / "m" / "1";
  fs::create_directories(version);
  fuzz::WriteInput(data, size, "store/m/1/manifest.pbtxt");
  try {
    store::Store s(root.string());
    (void)s.Verify("m", 1);
    (void)s.Versions("m");
  } catch (const Error&) {
  }
  return 0;
}
