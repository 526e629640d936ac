#include "datasets/tokens.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/io/durable.h"

namespace tessera::datasets {

void WriteTokenFile(const std::string& path, const std::vector<uint16_t>& tokens, int64_t vocab) {
  if (vocab < 1 || vocab > kMaxVocabulary)
    TESSERA_THROW(ValueError, path, ": a token file's vocabulary must be in [1, ", kMaxVocabulary, "], got ",
                  vocab);
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] >= vocab)
      TESSERA_THROW(ValueError, path, ": token ", tokens[i], " at position ", i,
                    " is outside the vocabulary of ", vocab);
  if (tokens.size() > static_cast<size_t>(INT32_MAX))
    TESSERA_THROW(ValueError, path, ": ", tokens.size(), " tokens do not fit the header's int32 count");
  std::vector<int32_t> header(256, 0);
  header[0] = kTokenFileMagic;
  header[1] = kTokenFileVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  header[3] = static_cast<int32_t>(vocab);
  std::string bytes(kTokenHeaderBytes + tokens.size() * 2, '\0');
  std::memcpy(bytes.data(), header.data(), kTokenHeaderBytes);  // little-endian hosts only, as llm.c
  if (!tokens.empty()) std::memcpy(bytes.data() + kTokenHeaderBytes, tokens.data(), tokens.size() * 2);
  io::WriteFileAtomically(path, bytes);
}

TokenFile::TokenFile(const std::string& path) : path_(path) {
  io::RequireRegularFile(path, "token file");
  io::ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) TESSERA_THROW(IoError, path, ": cannot open the token file: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0)
    TESSERA_THROW(IoError, path, ": cannot stat the token file: ", std::strerror(errno));
  const int64_t bytes = st.st_size;
  if (bytes < kTokenHeaderBytes)
    TESSERA_THROW(DataError, path, ": ", bytes, " bytes is shorter than a token file's ", kTokenHeaderBytes,
                  "-byte header");
  map_bytes_ = static_cast<size_t>(bytes);
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    TESSERA_THROW(IoError, path, ": cannot map the token file: ", std::strerror(errno));
  }
  try {
    int32_t header[4];
    std::memcpy(header, map_, sizeof header);
    if (header[0] != kTokenFileMagic)
      TESSERA_THROW(DataError, path, ": header[0] (magic) is ", header[0], ", not ", kTokenFileMagic,
                    ": not a token file");
    if (header[1] != kTokenFileVersion)
      TESSERA_THROW(DataError, path, ": header[1] (version) is ", header[1], "; only version ",
                    kTokenFileVersion, " (uint16 tokens) is read");
    count_ = header[2];
    if (count_ < 0 || kTokenHeaderBytes + 2 * count_ != bytes)
      TESSERA_THROW(DataError, path, ": header[2] says ", header[2], " tokens, but the file's ", bytes,
                    " bytes hold ", (bytes - kTokenHeaderBytes) / 2, " (", bytes - kTokenHeaderBytes,
                    " bytes after the header)");
    tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + kTokenHeaderBytes);
    int64_t largest = -1;
    for (int64_t i = 0; i < count_; ++i) largest = std::max<int64_t>(largest, tokens_[i]);
    vocab_ = header[3];
    if (vocab_ == 0) vocab_ = largest + 1;  // llm.c's files leave it unset
    if (vocab_ < 1 || vocab_ > kMaxVocabulary)
      TESSERA_THROW(DataError, path, ": header[3] (vocabulary size) is ", header[3], ", outside [1, ",
                    kMaxVocabulary, "]");
    if (largest >= vocab_)
      TESSERA_THROW(DataError, path, ": token ", largest, " is outside the vocabulary of ", vocab_,
                    " (header[3])");
  } catch (...) {
    ::munmap(map_, map_bytes_);
    throw;
  }
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

namespace {

class TokenDataset : public Dataset {
 public:
  TokenDataset(const std::string& path, int64_t t) : file_(path), t_(t) {
    if (t < 1) TESSERA_THROW(ValueError, path, ": the sequence length must be >= 1, got ", t);
    size_ = file_.size() > 0 ? (file_.size() - 1) / t : 0;
    if (size_ < 1)
      TESSERA_THROW(DataError, path, ": ", file_.size(), " tokens are too few for one window of ", t,
                    " tokens and its next token");
  }
  int64_t size() const override { return size_; }
  Shape example_shape() const override { return {t_}; }
  int num_classes() const override { return static_cast<int>(file_.vocab()); }
  DType feature_dtype() const override { return DType::kI32; }
  Shape label_shape() const override { return {t_}; }
  void Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) override {
    internal::CheckGetArgs(Describe(), size_, {t_}, indices, features, labels, DType::kI32, {t_});
    int32_t* x = features.data<int32_t>();
    int32_t* y = labels.data<int32_t>();
    for (size_t i = 0; i < indices.size(); ++i) {
      const uint16_t* src = file_.tokens() + indices[i] * t_;
      for (int64_t j = 0; j < t_; ++j) {
        x[i * t_ + j] = src[j];
        y[i * t_ + j] = src[j + 1];
      }
    }
  }
  std::string Describe() const override {
    return detail::StrCat("tokens ", file_.path(), " (", file_.size(), " tokens: ", size_, " x [", t_,
                          "], vocabulary ", file_.vocab(), ")");
  }

 private:
  TokenFile file_;
  int64_t t_, size_ = 0;
};

}  // namespace

std::unique_ptr<Dataset> OpenTokens(const std::string& path, int64_t sequence_length) {
  return std::make_unique<TokenDataset>(path, sequence_length);
}

std::vector<int64_t> TokenCounts(const TokenFile& file) {
  std::vector<int64_t> counts(static_cast<size_t>(file.vocab()), 0);
  for (int64_t i = 0; i < file.size(); ++i) {
    const uint16_t t = file.tokens()[i];
    if (t >= counts.size())  // checked when opened: only a file rewritten since gets here
      TESSERA_THROW(DataError, file.path(), ": token ", t, " at position ", i,
                    " is outside the vocabulary of ", file.vocab(), " (was the file rewritten while open?)");
    ++counts[t];
  }
  return counts;
}

double UnigramPerplexity(const TokenFile& train, const TokenFile& test) {
  std::vector<int64_t> counts = TokenCounts(train);
  counts.resize(static_cast<size_t>(std::max(train.vocab(), test.vocab())), 0);
  const double total = static_cast<double>(train.size()) + static_cast<double>(counts.size());
  double nll = 0;
  for (int64_t i = 0; i < test.size(); ++i) {
    const uint16_t t = test.tokens()[i];
    const double c = t < counts.size() ? static_cast<double>(counts[t]) : 0.0;
    nll -= std::log((c + 1.0) / total);
  }
  return test.size() > 0 ? std::exp(nll / static_cast<double>(test.size())) : 1.0;
}

}  // namespace tessera::datasets
