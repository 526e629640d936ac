// Token files (llm.c's layout), the language-model dataset over them, the byte tokenizer and the
// corpus builder: round trips, the windows and their next-token labels, and hostile files.
#include "datasets/tokens.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "datasets/loader.h"
#include "datasets/text.h"
#include "tests/datasets/test_util.h"

namespace tessera::datasets {
namespace {

using testing::ScratchDir;
using testing::ThrownMessage;

void WriteRaw(const std::string& path, const std::vector<int32_t>& header,
              const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> h(256, 0);
  std::copy(header.begin(), header.end(), h.begin());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(h.data()), 1024);
  out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
}

TEST(TokenFile, RoundTripsInLlmcsLayout) {
  ScratchDir dir;
  std::vector<uint16_t> tokens = {5, 0, 255, 7, 300};
  WriteTokenFile(dir.File("t.bin"), tokens, 301);
  TokenFile f(dir.File("t.bin"));
  EXPECT_EQ(f.size(), 5);
  EXPECT_EQ(f.vocab(), 301);
  EXPECT_EQ(std::vector<uint16_t>(f.tokens(), f.tokens() + 5), tokens);
  // Byte for byte what llm.c writes: magic, version, count; then uint16 tokens after 1024 bytes.
  std::ifstream in(dir.File("t.bin"), std::ios::binary);
  std::vector<int32_t> header(256);
  in.read(reinterpret_cast<char*>(header.data()), 1024);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 5);
  EXPECT_EQ(std::filesystem::file_size(dir.File("t.bin")), 1024u + 10u);
}

TEST(TokenFile, AFileWithoutAVocabularyTakesTheLargestTokenPlusOne) {
  ScratchDir dir;
  WriteRaw(dir.File("llmc.bin"), {20240520, 1, 3}, {4, 9, 2});
  EXPECT_EQ(TokenFile(dir.File("llmc.bin")).vocab(), 10);
}

TEST(TokenFile, RefusesHostileFilesNamingWhatIsWrong) {
  ScratchDir dir;
  const std::string p = dir.File("bad.bin");
  WriteRaw(p, {1234, 1, 2}, {1, 2});
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("header[0] (magic) is 1234"),
            std::string::npos);
  WriteRaw(p, {20240520, 2, 2}, {1, 2});
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("header[1] (version) is 2"),
            std::string::npos);
  WriteRaw(p, {20240520, 1, 1000000}, {1, 2});
  EXPECT_NE(ThrownMessage<DataError>([&] {
              TokenFile f(p);
            }).find("says 1000000 tokens, but the file's 1028 bytes hold 2"),
            std::string::npos);
  WriteRaw(p, {20240520, 1, -4}, {});
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("header[2] says -4 tokens"),
            std::string::npos);
  WriteRaw(p, {20240520, 1, 2, 8}, {1, 8});
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("token 8 is outside the vocabulary of 8"),
            std::string::npos);
  WriteRaw(p, {20240520, 1, 2, 70000}, {1, 2});
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("(vocabulary size) is 70000"),
            std::string::npos);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << "short";
  EXPECT_NE(ThrownMessage<DataError>([&] { TokenFile f(p); }).find("shorter than"), std::string::npos);
  EXPECT_FALSE(ThrownMessage<IoError>([&] { TokenFile f(dir.File("missing.bin")); }).empty());
  EXPECT_FALSE(ThrownMessage<IoError>([&] { TokenFile f(dir.File("")); }).empty());  // a directory
  EXPECT_NE(ThrownMessage<ValueError>([&] {
              WriteTokenFile(p, {3, 4}, 4);
            }).find("token 4 at position 1"),
            std::string::npos);
}

TEST(TokenDataset, WindowsAndTheirNextTokens) {
  ScratchDir dir;
  std::vector<uint16_t> tokens;
  for (int i = 0; i < 11; ++i) tokens.push_back(static_cast<uint16_t>(i));
  WriteTokenFile(dir.File("t.bin"), tokens, 16);
  auto data = OpenTokens(dir.File("t.bin"), 3);
  EXPECT_EQ(data->size(), 3);  // (11 - 1) / 3: every window has its next token
  EXPECT_EQ(data->example_shape(), Shape{3});
  EXPECT_EQ(data->label_shape(), Shape{3});
  EXPECT_EQ(data->feature_dtype(), DType::kI32);
  EXPECT_EQ(data->num_classes(), 16);
  Tensor x, y;
  AllocateBatch(*data, 2, &x, &y);
  data->Get({2, 0}, x, y);
  EXPECT_EQ(x.ToVector(), (std::vector<double>{6, 7, 8, 0, 1, 2}));
  EXPECT_EQ(y.ToVector(), (std::vector<double>{7, 8, 9, 1, 2, 3}));
  EXPECT_FALSE(ThrownMessage<ValueError>([&] { data->Get({0, 3}, x, y); }).empty());
  Tensor wrong = Tensor::Empty({2, 3});  // f32 features
  EXPECT_NE(ThrownMessage<ShapeError>([&] {
              data->Get({0, 1}, wrong, y);
            }).find("needs host features i32[2, 3]"),
            std::string::npos);
  EXPECT_NE(
      ThrownMessage<DataError>([&] { OpenTokens(dir.File("t.bin"), 11); }).find("too few for one window"),
      std::string::npos);
}

TEST(TokenDataset, TheLoaderPassesIdsThroughAndRefusesNormalisation) {
  ScratchDir dir;
  WriteTokenFile(dir.File("t.bin"), EncodeBytes("abcdefghijklmnopqrstuvwxyz"), 256);
  auto data = OpenTokens(dir.File("t.bin"), 5);
  DistributedSampler sampler(data->size(), 2, 1, false, false, 0, 1);
  Loader loader(*data, sampler, LoaderOptions{});
  loader.StartEpoch(0);
  Batch b;
  ASSERT_TRUE(loader.Next(&b));
  EXPECT_EQ(b.features.dtype(), DType::kI32);
  EXPECT_EQ(b.features.ToVector()[0], 'a');
  EXPECT_EQ(b.labels.shape(), (Shape{2, 5}));
  LoaderOptions scaled;
  scaled.scale = 1.0f / 255;
  EXPECT_NE(ThrownMessage<ValueError>([&] { Loader l(*data, sampler, scaled); }).find("token ids"),
            std::string::npos);
}

TEST(UnigramPerplexity, IsTheVocabularyForUniformTokens) {
  ScratchDir dir;
  std::vector<uint16_t> all;
  for (int r = 0; r < 100; ++r)
    for (uint16_t t = 0; t < 4; ++t) all.push_back(t);
  WriteTokenFile(dir.File("a.bin"), all, 4);
  TokenFile f(dir.File("a.bin"));
  EXPECT_NEAR(UnigramPerplexity(f, f), 4.0, 1e-9);
  EXPECT_EQ(TokenCounts(f), (std::vector<int64_t>{100, 100, 100, 100}));
}

TEST(ByteTokenizer, IsLossless) {
  std::string text = "caf\xC3\xA9 \x01\xFF\n";
  std::vector<uint16_t> t = EncodeBytes(text);
  EXPECT_EQ(t.size(), text.size());
  std::vector<int32_t> ids(t.begin(), t.end());
  EXPECT_EQ(DecodeBytes(ids), text);
  EXPECT_EQ(DecodeBytes({300}), "\xEF\xBF\xBD");
}

TEST(Corpus, SplitsFortunesIntoDocumentsAndEveryNthIntoTest) {
  ScratchDir dir;
  std::filesystem::create_directories(dir.File("in"));
  std::ofstream(dir.File("in/a")) << "one\n%\ntwo\nlines\n%\nthree\n";
  std::ofstream(dir.File("in/b")) << "four\n";
  std::ofstream(dir.File("in/a.dat")) << "binary index, skipped";
  CorpusOptions o;
  o.inputs = {dir.File("in")};
  o.out_dir = dir.File("out");
  o.test_every = 2;
  CorpusSummary s = BuildCorpus(o);
  EXPECT_EQ(s.files, 2);
  EXPECT_EQ(s.documents, 4);
  auto text = [](const TokenFile& f) {
    return DecodeBytes(std::vector<int32_t>(f.tokens(), f.tokens() + f.size()));
  };
  EXPECT_EQ(text(TokenFile(s.train_path)), "one\n%\nthree\n%\n");
  EXPECT_EQ(text(TokenFile(s.test_path)), "two\nlines\n%\nfour\n%\n");
  o.test_every = 10;  // four documents: none reaches the test split
  EXPECT_NE(ThrownMessage<ValueError>([&] { BuildCorpus(o); }).find("test split empty"), std::string::npos);
  o.inputs = {dir.File("nothing-here")};
  EXPECT_FALSE(ThrownMessage<IoError>([&] { BuildCorpus(o); }).empty());
}

}  // namespace
}  // namespace tessera::datasets
