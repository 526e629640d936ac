// HDF5 training data (datasets/hdf5_dataset.cc): the file, its datasets' types, shapes and labels,
// and the rows read on demand.
#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  const std::string path = fuzz::WriteInput(data, size, "fuzzed.h5");
  try {
    std::unique_ptr<datasets::Dataset> d = datasets::OpenHdf5(path, "features", "labels");
    Tensor x, y;
    const int64_t n = std::min<int64_t>(d->size(), 4);
    datasets::AllocateBatch(*d, n, &x, &y);
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < n; ++i) rows.push_back(d->size() - 1 - i);
    d->Get(rows, x, y);
  } catch (const Error&) {
  }
  return 0;
}
