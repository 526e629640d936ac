// The model store (store/store.h): publishing, listing and resolving, aliases and rollback, gc,
// verification of damaged versions, loading, and concurrent publishers on threads. The
// multi-process cases (8 processes publishing at once, kill -9 during publish) are in
// store_cli_test.sh.
#include "store/store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "core/io/checksum.h"
#include "tests/datasets/test_util.h"  // ThrownMessage, EXPECT_CONTAINS
#include "tests/store/tiny_mlp.h"

namespace tessera::store {
namespace {

namespace fs = std::filesystem;
using datasets::testing::ThrownMessage;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "tessera_store_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override {
    // Versions are read-only files in writable directories: remove_all copes.
    fs::remove_all(root_);
  }

  PublishRequest Request(const std::string& model, float seed) { return mlp_.Request(model, seed); }
  std::string Dir(const std::string& rel) const { return (fs::path(root_) / rel).string(); }

  std::string root_;
  Mlp mlp_;
  std::vector<float>& w_ = mlp_.w;
};

TEST_F(StoreTest, PublishedVersionsAreNumberedCompleteAndReadOnly) {
  Store st(root_);
  EXPECT_TRUE(st.Versions("m").empty());
  PublishResult a = st.Publish(Request("m", 1));
  PublishResult b = st.Publish(Request("m", 2));
  EXPECT_EQ(a.version, 1);
  EXPECT_EQ(b.version, 2);
  EXPECT_EQ(st.Versions("m"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(st.Models(), (std::vector<std::string>{"m"}));
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(Dir("m/1"))) {
    files.insert(e.path().filename().string());
    struct stat s {};
    ASSERT_EQ(stat(e.path().c_str(), &s), 0);
    EXPECT_EQ(s.st_mode & 0222, 0u) << e.path() << " is writable";
  }
  EXPECT_EQ(files, (std::set<std::string>{"weights.h5", "model.pbtxt", "manifest.pbtxt"}));
  EXPECT_TRUE(fs::is_empty(Dir("m/.staging"))) << "the staging directory is emptied by each publish";
  VersionManifest m = st.ReadManifest("m", 2);
  EXPECT_EQ(m.model(), "m");
  EXPECT_DOUBLE_EQ(m.metrics().at("test_accuracy"), 0.5 + 2.0f / 100);
  EXPECT_EQ(m.lineage().job_name(), "unit");
  ASSERT_EQ(m.files_size(), 2);
  // The manifest's sha256 is sha256sum's.
  EXPECT_EQ(m.files(0).sha256(), io::Sha256File(Dir("m/2/weights.h5")));
  EXPECT_TRUE(st.Verify("m", 1).empty());
  EXPECT_TRUE(st.Verify("m", 2).empty());
}

TEST_F(StoreTest, LoadReadsTheWeightsAndChecksTheirSha256) {
  Store st(root_);
  st.Publish(Request("m", 3));
  std::map<std::string, std::vector<float>> got;
  LoadedVersion v = st.Load("m", 1, [&](const io::TensorRecord& t) -> void* {
    auto& buf = got[t.path];
    buf.resize(static_cast<size_t>(t.bytes / 4));
    return buf.data();
  });
  EXPECT_EQ(v.version, 1);
  EXPECT_EQ(v.architecture.model().mlp().out_features(), 2);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got["/model/1.weight"], w_);
  // A changed byte anywhere in the file (here: HDF5's own metadata, which HDF5 notices too) is
  // named as a file that does not match its manifest: the sha256 covers every byte.
  const std::string weights = Dir("m/1/weights.h5");
  fs::permissions(weights, fs::perms::owner_write, fs::perm_options::add);
  std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(-1, std::ios::end);
  f.put('\x5a');
  f.close();
  std::string msg = ThrownMessage<IoError>([&] { st.Load("m", 1, [](const io::TensorRecord&) { return nullptr; }); });
  EXPECT_CONTAINS(msg, weights);
  EXPECT_CONTAINS(msg, "does not match manifest.pbtxt");
}

TEST_F(StoreTest, ReferencesResolveToVersionsAndAliases) {
  Store st(root_);
  st.Publish(Request("m", 1));
  st.Publish(Request("m", 2));
  st.SetAlias("m", "production", 1);
  EXPECT_EQ(st.Resolve("m", "latest"), 2);
  EXPECT_EQ(st.Resolve("m", ""), 2);
  EXPECT_EQ(st.Resolve("m", "1"), 1);
  EXPECT_EQ(st.Resolve("m", "production"), 1);
  EXPECT_CONTAINS(ThrownMessage<NotFoundError>([&] { st.Resolve("m", "7"); }), "model 'm' in " + root_ + ": no version 7 (versions 1 to 2)");
  EXPECT_CONTAINS(ThrownMessage<NotFoundError>([&] { st.Resolve("m", "staging"); }), "no alias 'staging'");
  EXPECT_CONTAINS(ThrownMessage<NotFoundError>([&] { st.Resolve("other", "latest"); }), "no published version");
  VersionRef r = ParseVersionRef("store:///data/models/fmnist@production");
  EXPECT_EQ(r.root, "/data/models");
  EXPECT_EQ(r.model, "fmnist");
  EXPECT_EQ(r.ref, "production");
  r = ParseVersionRef("store://runs/store/fmnist/3");
  EXPECT_EQ(r.root, "runs/store");
  EXPECT_EQ(r.ref, "3");
  EXPECT_TRUE(r.explicit_ref);
  EXPECT_CONTAINS(ThrownMessage<StoreError>([] { ParseVersionRef("../etc@1"); }), "is not a model name (it holds '/')");
  r = ParseVersionRef("fmnist");
  EXPECT_EQ(r.root, "");
  EXPECT_EQ(r.ref, "latest");
  EXPECT_FALSE(r.explicit_ref);
  EXPECT_EQ(ParseVersionRef("fmnist@2").ref, "2");
  // Path tricks and odd names are refused, naming the name.
  for (const char* bad : {"../etc", ".hidden", "a/../b", "", "x@", "m@latest/..", "m@.x", "12"})
    EXPECT_THROW(
        {
          VersionRef p = ParseVersionRef(bad);
          if (p.model == "etc" || p.model == "b") throw StoreError("the path escaped the root");
        },
        StoreError)
        << bad;
  EXPECT_CONTAINS(ThrownMessage<StoreError>([] { ValidateAliasName("latest"); }), "implicit");
  EXPECT_CONTAINS(ThrownMessage<StoreError>([] { ValidateModelName("a b"); }), "model name 'a b' is not valid");
}

TEST_F(StoreTest, AliasesMoveRollBackAndKeepTheirHistory) {
  Store st(root_);
  for (int i = 1; i <= 3; ++i) st.Publish(Request("m", static_cast<float>(i)));
  AliasChange c = st.SetAlias("m", "production", 1);
  EXPECT_EQ(c.from, 0);
  EXPECT_EQ(st.SetAlias("m", "production", 2).from, 1);
  EXPECT_EQ(st.SetAlias("m", "production", 3).from, 2);
  EXPECT_EQ(st.Aliases("m").at("production"), 3);
  AliasChange back = st.Rollback("m", "production");
  EXPECT_EQ(back.from, 3);
  EXPECT_EQ(back.to, 2);
  EXPECT_EQ(st.Rollback("m", "production").to, 1);
  EXPECT_CONTAINS(ThrownMessage<StoreError>([&] { st.Rollback("m", "production"); }), "nothing to roll back to");
  EXPECT_CONTAINS(ThrownMessage<NotFoundError>([&] { st.SetAlias("m", "production", 9); }), "no version 9");
  EXPECT_CONTAINS(ThrownMessage<NotFoundError>([&] { st.Rollback("m", "staging"); }), "no alias 'staging'");
  // The file is protobuf text a person can read; no temporary file is left beside it.
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(Dir("m/aliases"))) names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"production"}));
  std::ifstream in(Dir("m/aliases/production"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_CONTAINS(text, "version: 1");
  // A publish can move an alias too.
  PublishRequest r = Request("m", 4);
  r.alias = "staging";
  EXPECT_EQ(st.Publish(r).version, 4);
  EXPECT_EQ(st.Resolve("m", "staging"), 4);
}

TEST_F(StoreTest, GcKeepsTheNewestAndEveryAliasedVersion) {
  Store st(root_);
  for (int i = 1; i <= 6; ++i) st.Publish(Request("m", static_cast<float>(i)));
  st.SetAlias("m", "production", 1);
  st.SetAlias("m", "staging", 2);
  st.SetAlias("m", "staging", 3);  // 2 stays protected: a rollback of staging goes there
  GcResult dry = st.Gc("m", 2, true);
  EXPECT_EQ(dry.deleted, (std::vector<int64_t>{4}));
  EXPECT_EQ(st.Versions("m").size(), 6u) << "a dry run deletes nothing";
  GcResult r = st.Gc("m", 2);
  EXPECT_EQ(r.deleted, (std::vector<int64_t>{4}));
  EXPECT_EQ(r.kept, (std::vector<int64_t>{1, 2, 3, 5, 6}));
  EXPECT_EQ(st.Versions("m"), (std::vector<int64_t>{1, 2, 3, 5, 6}));
  EXPECT_FALSE(fs::exists(Dir("m/4")));
  EXPECT_EQ(st.Rollback("m", "staging").to, 2);
  // The next publish never reuses a number.
  EXPECT_EQ(st.Publish(Request("m", 7)).version, 7);
  EXPECT_CONTAINS(ThrownMessage<StoreError>([&] { st.Gc("m", 0); }), "--keep must be >= 1");
  // An unreadable alias stops gc: it cannot tell which version the alias protects.
  std::ofstream(Dir("m/aliases/broken")) << "version: {{";
  EXPECT_THROW(st.Gc("m", 1), IoError);
  EXPECT_EQ(st.Versions("m").size(), 6u);
}

TEST_F(StoreTest, VerifyNamesTheDamagedOrMissingFile) {
  Store st(root_);
  st.Publish(Request("m", 1));
  ASSERT_TRUE(st.Verify("m", 1).empty());
  const std::string dir = Dir("m/1");
  auto writable = [](const std::string& p) { fs::permissions(p, fs::perms::owner_write, fs::perm_options::add); };
  // A changed architecture: its sha256 no longer matches.
  writable(dir + "/model.pbtxt");
  std::ofstream(dir + "/model.pbtxt", std::ios::app) << "# edited\n";
  std::vector<std::string> p = st.Verify("m", 1);
  ASSERT_FALSE(p.empty());
  EXPECT_CONTAINS(p[0], dir + "/model.pbtxt: does not match manifest.pbtxt");
  // A missing weights file.
  fs::remove(dir + "/weights.h5");
  p = st.Verify("m", 1);
  bool named = false;
  for (const std::string& line : p) named |= line.find(dir + "/weights.h5: no such file") != std::string::npos;
  EXPECT_TRUE(named) << "no problem names the missing weights.h5";
  // An extra file, and a manifest that does not parse.
  std::ofstream(dir + "/notes.txt") << "x";
  p = st.Verify("m", 1);
  named = false;
  for (const std::string& line : p) named |= line.find(dir + "/notes.txt: not listed in manifest.pbtxt") != std::string::npos;
  EXPECT_TRUE(named) << "no problem names notes.txt";
  writable(dir + "/manifest.pbtxt");
  std::ofstream(dir + "/manifest.pbtxt") << "files { name: ";
  p = st.Verify("m", 1);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_CONTAINS(p[0], dir + "/manifest.pbtxt: a version manifest does not parse: line 1");
}

TEST_F(StoreTest, AVersionWhoseWeightsDoNotFitItsArchitectureFailsVerify) {
  Store st(root_);
  PublishRequest r = Request("m", 1);
  r.architecture.mutable_model()->mutable_mlp()->set_out_features(5);  // the weights have 2 outputs
  st.Publish(r);
  std::vector<std::string> p = st.Verify("m", 1);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_CONTAINS(p[0], "/model/3.bias has shape [2] but the architecture needs [5]");
  EXPECT_CONTAINS(p[1], "/model/3.weight has shape [2, 3] but the architecture needs [5, 3]");
}

// An int8 version (as `tessera store quantize` publishes one): int8 weights with f32 scales, which
// the store reads back as they were written, and whose dtypes must be the architecture's.
TEST_F(StoreTest, Int8VersionsHoldInt8WeightsOfTheDtypeTheirArchitectureNeeds) {
  Store st(root_);
  PublishRequest r = Request("m", 1);
  std::vector<int8_t> q1(12), q3(6);
  for (size_t i = 0; i < q1.size(); ++i) q1[i] = static_cast<int8_t>(static_cast<int>(i) * 21 - 127);
  for (size_t i = 0; i < q3.size(); ++i) q3[i] = static_cast<int8_t>(-static_cast<int>(i));
  std::vector<float> s1{0.5f, 0.25f, 0.125f}, s3{1.0f, 2.0f}, in1{0.01f}, in3{0.02f};
  r.architecture.set_quantization(INT8);
  r.weights = {{"1.weight", {3, 4}, DType::kI8, q1.data()},  {"1.bias", {3}, DType::kF32, mlp_.b.data()},
               {"1.weight_scale", {3}, DType::kF32, s1.data()}, {"1.input_scale", {1}, DType::kF32, in1.data()},
               {"3.weight", {2, 3}, DType::kI8, q3.data()},  {"3.bias", {2}, DType::kF32, mlp_.b2.data()},
               {"3.weight_scale", {2}, DType::kF32, s3.data()}, {"3.input_scale", {1}, DType::kF32, in3.data()}};
  r.weights_meta.dtype = "int8";
  st.Publish(r);
  EXPECT_TRUE(st.Verify("m", 1).empty());
  std::unique_ptr<nn::Sequential> net = BuildNetwork(st.ReadArchitecture("m", 1));
  std::map<std::string, std::vector<char>> got;
  st.LoadNetwork("m", 1, *net, [&](const io::TensorRecord& t) -> void* {
    EXPECT_EQ(t.dtype, t.path.find(".weight") != std::string::npos && t.path.find("scale") == std::string::npos
                           ? DType::kI8
                           : DType::kF32)
        << t.path;
    got[t.path].resize(static_cast<size_t>(t.bytes));
    return got[t.path].data();
  });
  ASSERT_EQ(got.size(), 8u);
  EXPECT_EQ(std::memcmp(got["/model/1.weight"].data(), q1.data(), q1.size()), 0);
  EXPECT_EQ(std::memcmp(got["/model/3.weight_scale"].data(), s3.data(), 8), 0);

  // The same tensors under an f32 architecture, and f32 weights under an INT8 one: refused.
  r.architecture.set_quantization(NONE);
  st.Publish(r);
  std::string all;
  for (const std::string& line : st.Verify("m", 2)) all += line + "\n";
  EXPECT_CONTAINS(all, "/model/1.weight is i8 but model.pbtxt's network needs f32");
  EXPECT_CONTAINS(all, "/model/1.input_scale is not part of the architecture");
  PublishRequest f = Request("m", 2);
  f.architecture.set_quantization(INT8);
  st.Publish(f);
  std::unique_ptr<nn::Sequential> qnet = BuildNetwork(st.ReadArchitecture("m", 3));
  EXPECT_CONTAINS(ThrownMessage<ConfigError>([&] {
                    st.LoadNetwork("m", 3, *qnet, [](const io::TensorRecord&) -> void* { return nullptr; });
                  }),
                  "m version 3: /model/1.weight is f32 but model.pbtxt's network needs i8 (quantization: INT8)");
}

TEST_F(StoreTest, NonFiniteWeightsAreNotPublished) {
  Store st(root_);
  PublishRequest r = Request("m", 1);
  w_[5] = std::nanf("");
  w_[7] = INFINITY;
  EXPECT_CONTAINS(ThrownMessage<StoreError>([&] { st.Publish(r); }),
                  "refusing to publish: tensor 1.weight holds 2 of 12 values that are NaN or infinite");
  EXPECT_TRUE(st.Versions("m").empty());
  EXPECT_FALSE(fs::exists(Dir("m/.staging"))) << "refused before anything was written";
}

// Publishers on several threads at once (the multi-process case is store_cli_test.sh): every
// publish gets its own number, none is lost, each version verifies.
TEST_F(StoreTest, ConcurrentPublishersNeverCollide) {
  constexpr int kThreads = 6, kEach = 5;
  std::vector<std::vector<int64_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      Mlp own;  // its own buffers
      Store st(root_);
      for (int i = 0; i < kEach; ++i) got[t].push_back(st.Publish(own.Request("m", static_cast<float>(t * 10 + i))).version);
    });
  for (auto& t : threads) t.join();
  std::set<int64_t> all;
  for (const auto& v : got) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), kThreads * kEach);
  Store st(root_);
  for (int64_t v : st.Versions("m")) {
    EXPECT_TRUE(st.Verify("m", v).empty()) << "version " << v;
    // Each version holds what its publisher wrote: the step names the publish.
    VersionManifest m = st.ReadManifest("m", v);
    bool mine = false;
    for (int t = 0; t < kThreads; ++t)
      for (size_t i = 0; i < got[t].size(); ++i)
        if (got[t][i] == v) mine = m.lineage().step() == t * 10 + static_cast<int>(i);
    EXPECT_TRUE(mine) << "version " << v << " holds another publish's weights";
  }
}

}  // namespace
}  // namespace tessera::store
