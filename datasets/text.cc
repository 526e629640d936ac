#include "datasets/text.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/io/durable.h"
#include "datasets/tokens.h"

namespace tessera::datasets {
namespace fs = std::filesystem;

std::vector<uint16_t> EncodeBytes(std::string_view text) {
  std::vector<uint16_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::string DecodeBytes(const std::vector<int32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) {
    if (t >= 0 && t < kByteVocabulary)
      out.push_back(static_cast<char>(t));
    else
      out += "\xEF\xBF\xBD";
  }
  return out;
}

namespace {

constexpr int64_t kMaxInputBytes = int64_t{1} << 30;

std::vector<std::string> InputFiles(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (!fs::is_directory(in, ec)) {
      files.push_back(in);
      continue;
    }
    std::vector<std::string> here;
    for (const fs::path& p : io::ListDirOrThrow(in))
      if (p.filename().string().find('.') == std::string::npos && fs::is_regular_file(p, ec))
        here.push_back(p.string());
    std::sort(here.begin(), here.end());
    if (here.empty())
      TESSERA_THROW(IoError, in, ": the directory holds no files without an extension to read");
    files.insert(files.end(), here.begin(), here.end());
  }
  return files;
}

// The documents of one file: the text between lines that hold only "%".
std::vector<std::string_view> Documents(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t start = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    if (text.substr(pos, end - pos) == "%") {
      if (pos > start) docs.push_back(text.substr(start, pos - start));
      start = std::min(text.size(), end + 1);
    }
    pos = end + 1;
  }
  if (start < text.size()) docs.push_back(text.substr(start));
  return docs;
}

}  // namespace

CorpusSummary BuildCorpus(const CorpusOptions& o) {
  if (o.inputs.empty()) TESSERA_THROW(ValueError, "corpus: no input files or directories given");
  if (o.test_every < 2) TESSERA_THROW(ValueError, "corpus: test_every must be >= 2, got ", o.test_every);
  CorpusSummary s;
  std::vector<uint16_t> train, test;
  for (const std::string& file : InputFiles(o.inputs)) {
    const std::string text = io::ReadSmallFile(file, kMaxInputBytes, "corpus input");
    ++s.files;
    for (std::string_view doc : Documents(text)) {
      std::vector<uint16_t>& split = s.documents++ % o.test_every == o.test_every - 1 ? test : train;
      std::vector<uint16_t> tokens = EncodeBytes(doc);
      split.insert(split.end(), tokens.begin(), tokens.end());
      for (uint16_t t : EncodeBytes("%\n")) split.push_back(t);
    }
  }
  if (train.empty() || test.empty())
    TESSERA_THROW(ValueError, "corpus: ", s.documents, " documents in ", s.files, " files leave the ",
                  train.empty() ? "training" : "test", " split empty (every ", o.test_every,
                  "th document is a test document)");
  io::CreateDurableDirectories(o.out_dir);
  s.train_path = (fs::path(o.out_dir) / "train.bin").string();
  s.test_path = (fs::path(o.out_dir) / "test.bin").string();
  WriteTokenFile(s.train_path, train, kByteVocabulary);
  WriteTokenFile(s.test_path, test, kByteVocabulary);
  s.train_tokens = static_cast<int64_t>(train.size());
  s.test_tokens = static_cast<int64_t>(test.size());
  return s;
}

}  // namespace tessera::datasets
