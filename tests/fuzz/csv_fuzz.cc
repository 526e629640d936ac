// CSV tables (datasets/csv.cc): header, label column, fields, numbers; and a test file matched to
// a training file's columns by name.
#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string path = fuzz::WriteInput(data, size, "fuzzed.csv");
  try {
    std::unique_ptr<datasets::Dataset> train = datasets::OpenCsv(path, "label");
    Tensor x, y;
    datasets::AllocateBatch(*train, train->size(), &x, &y);
    std::vector<int64_t> all(static_cast<size_t>(train->size()));
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
    train->Get(all, x, y);
    static const char kTest[] = "b,label,a\n1,0,2\n";
    const std::string test = fuzz::WriteInput(reinterpret_cast<const uint8_t*>(kTest), sizeof kTest - 1, "test.csv");
    datasets::OpenCsv(test, "label", train->feature_names());
  } catch (const Error&) {
  }
  return 0;
}
