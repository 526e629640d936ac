// Token files (datasets/tokens.cc, llm.c's layout): the header's magic, version, count and
// vocabulary against the file's size and its tokens, then windows of the stream and the unigram
// counts over it.
#include "core/error.h"
#include "datasets/tokens.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera;
  // The first byte picks the window length (1 to 8); the rest is the file.
  if (size < 1) return 0;
  const int64_t t = 1 + data[0] % 8;
  const std::string path = fuzz::WriteInput(data + 1, size - 1, "fuzzed-tokens");
  try {
    std::unique_ptr<datasets::Dataset> d = datasets::OpenTokens(path, t);
    Tensor x, y;
    datasets::AllocateBatch(*d, 2, &x, &y);
    d->Get({0, d->size() - 1}, x, y);
    datasets::TokenFile f(path);
    datasets::UnigramPerplexity(f, f);
  } catch (const Error&) {
  }
  return 0;
}
