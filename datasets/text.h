// Text for language models: the byte-level tokenizer, and a corpus built from text files (such as
// the fortune files Debian's `fortunes` package ships) into train and test token files.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::datasets {

// Byte-level tokens: one token per byte, its value (GPT-2's BPE also starts from bytes). Lossless
// for any input, UTF-8 or not.
constexpr int64_t kByteVocabulary = 256;
std::vector<uint16_t> EncodeBytes(std::string_view text);
// Tokens >= 256 (a model with a larger vocabulary may sample them) become U+FFFD.
std::string DecodeBytes(const std::vector<int32_t>& tokens);

struct CorpusOptions {
  std::vector<std::string> inputs;  // files, or directories whose files are all read (see below)
  std::string out_dir;              // receives train.bin and test.bin
  int64_t test_every = 20;          // every n-th document goes to the test split
};

struct CorpusSummary {
  int64_t files = 0, documents = 0, train_tokens = 0, test_tokens = 0;
  std::string train_path, test_path;
};

// Reads the inputs (a directory's regular files sorted by name, skipping names with a '.': the
// fortune package's .dat indexes and .u8 links), splits each file into documents at lines that
// hold only "%" (the fortune format; a file without them is one document), and writes document k
// (counted over all files) to the test split when k % test_every == test_every - 1, else to the
// training split, each document followed by a "%\n" line (the fortune separator, also after the
// documents of files that have none). Both splits are byte-level
// token files (datasets/tokens.h), written atomically. Throws IoError for an input that cannot be
// read, ValueError for no inputs, test_every < 2, or a split that comes out empty.
CorpusSummary BuildCorpus(const CorpusOptions& options);

}  // namespace tessera::datasets
