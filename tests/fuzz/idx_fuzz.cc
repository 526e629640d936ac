// IDX images and labels (datasets/idx.cc), plain or gzip-compressed: the header, its declared
// sizes against memory, the body, and what follows it.
#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  // The first byte chooses which of the pair is fuzzed; the other is a valid 2-label file.
  if (size < 1) return 0;
  static const uint8_t kLabels[] = {0, 0, 8, 1, 0, 0, 0, 2, 1, 0};
  const std::string fuzzed = fuzz::WriteInput(data + 1, size - 1, "fuzzed-idx");
  const std::string labels = fuzz::WriteInput(kLabels, sizeof kLabels, "labels-idx");
  try {
    std::unique_ptr<datasets::Dataset> d =
        data[0] & 1 ? datasets::OpenIdx(labels, fuzzed) : datasets::OpenIdx(fuzzed, labels);
    Tensor x, y;
    datasets::AllocateBatch(*d, 1, &x, &y);
    d->Get({d->size() - 1}, x, y);
  } catch (const Error&) {
  }
  return 0;
}
