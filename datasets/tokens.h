// Token files and the language-model dataset over them.
//
// A token file is a text corpus already tokenised, in llm.c's layout so that its tools read ours
// (and numpy.memmap with offset=1024 reads the tokens): a header of 256 little-endian int32, then
// the tokens as little-endian uint16.
//   header[0] = 20240520 (magic), header[1] = 1 (version: uint16 tokens), header[2] = the number
//   of tokens, header[3] = the vocabulary size (tessera's addition: llm.c leaves it 0, and then the
//   largest token + 1 is taken); the rest are 0.
// The file is memory-mapped, never read whole: a corpus may be larger than memory. Replace a token
// file (write a new one and rename it over the old, as WriteTokenFile does), never rewrite it in
// place: a file truncated under a running job takes the job down with SIGBUS.
//
// The dataset cuts the stream into non-overlapping windows of T tokens: example i is tokens
// [i T, i T + T) and its labels are the next tokens, [i T + 1, i T + T + 1), so there are
// (N - 1) / T examples. Any sampler order over those indices works, as for any other dataset.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "datasets/dataset.h"

namespace tessera::datasets {

constexpr int32_t kTokenFileMagic = 20240520;
constexpr int32_t kTokenFileVersion = 1;
constexpr int64_t kTokenHeaderBytes = 256 * 4;
constexpr int64_t kMaxVocabulary = 65536;  // uint16 tokens

// Writes `tokens` (each < vocab) to `path` atomically and durably. Throws ValueError for a token
// outside [0, vocab) or a vocab outside [1, 65536], IoError when the file cannot be written.
void WriteTokenFile(const std::string& path, const std::vector<uint16_t>& tokens, int64_t vocab);

// A read-only memory map of a token file. Throws IoError when it cannot be opened or mapped, and
// DataError naming the file and the field for a bad magic or version, a token count that does not
// match the file's size, a vocabulary outside [1, 65536], or (checked once when opened) a token
// >= the vocabulary.
class TokenFile {
 public:
  explicit TokenFile(const std::string& path);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return count_; }
  int64_t vocab() const { return vocab_; }
  const uint16_t* tokens() const { return tokens_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t count_ = 0, vocab_ = 0;
};

// The windows of `sequence_length` tokens of a token file (see the top of this file): features i32
// [T] and labels i32 [T]; num_classes() is the vocabulary. Throws ValueError for a sequence length
// < 1, DataError for a file too short for one window, and TokenFile's errors.
std::unique_ptr<Dataset> OpenTokens(const std::string& path, int64_t sequence_length);

// How often each token occurs in a token file, counted over the whole stream.
std::vector<int64_t> TokenCounts(const TokenFile& file);

// The perplexity of `test` under the unigram distribution of `train` (add-one smoothed over the
// larger of the two vocabularies): the number a language model must beat to have learned anything
// beyond token frequencies.
double UnigramPerplexity(const TokenFile& train, const TokenFile& test);

}  // namespace tessera::datasets
