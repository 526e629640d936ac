// The server's parts without sockets: the HTTP codec against hostile bodies, the batcher, and the
// repository's loads, swaps and refusals over a real store on disk.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "serve/batcher.h"
#include "serve/http_codec.h"
#include "serve/inference.h"
#include "serve/repository.h"
#include "tests/datasets/test_util.h"
#include "tests/store/tiny_mlp.h"

namespace tessera::serve {
namespace {

namespace fs = std::filesystem;
using datasets::testing::ThrownMessage;

// The status and message of the RequestError fn throws.
template <typename Fn>
std::pair<int, std::string> Refused(Fn&& fn) {
  try {
    fn();
  } catch (const RequestError& e) {
    return {e.status(), e.what()};
  }
  ADD_FAILURE() << "no RequestError";
  return {0, ""};
}

const char* kGood = R"({"id": "7", "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
                        "data": [[1, 2], [3, 4.5]]}], "outputs": [{"name": "logits"}],
                        "parameters": {"top_k": 2}})";

TEST(HttpCodec, ReadsJsonTensorsNestedOrFlat) {
  InferRequest r = ParseHttpInfer(kGood, -1, "m", "");
  EXPECT_EQ(r.id, "7");
  EXPECT_EQ(r.top_k, 2);
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_EQ(r.inputs[0].shape, (Shape{2, 2}));
  EXPECT_EQ(r.inputs[0].values, (std::vector<float>{1, 2, 3, 4.5f}));
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_EQ(r.outputs[0].name, "logits");
}

TEST(HttpCodec, ReadsTritonBinaryTensors) {
  const std::string header =
      R"({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}}],
          "parameters": {"binary_data_output": true}})";
  const std::string body = header + std::string("\x01\x02\xff", 3);
  InferRequest r = ParseHttpInfer(body, static_cast<int64_t>(header.size()), "m", "1");
  EXPECT_EQ(r.inputs[0].values, (std::vector<float>{1, 2, 255}));
  EXPECT_TRUE(r.binary_outputs);
  // A byte too many or too few, and a header length beyond the body.
  EXPECT_EQ(Refused([&] { ParseHttpInfer(body + "x", static_cast<int64_t>(header.size()), "m", ""); }).first, 400);
  EXPECT_CONTAINS(Refused([&] { ParseHttpInfer(body.substr(0, body.size() - 1), static_cast<int64_t>(header.size()), "m", ""); }).second,
                  "binary_data_size");
  EXPECT_CONTAINS(Refused([&] { ParseHttpInfer(body, 1 << 20, "m", ""); }).second, "Inference-Header-Content-Length");
}

TEST(HttpCodec, RefusesHostileBodiesNamingTheField) {
  struct Case {
    std::string body, part;
  } cases[] = {
      {"{", "not valid JSON"},
      {"666e66666666", "not valid JSON: "},  // a number past a double escaped as nlohmann's out_of_range (fuzzing)
      {std::string(100000, '['), "nested deeper"},
      {"[1]", "JSON object"},
      {R"({"inputs": []})", "non-empty array"},
      {R"({"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1]}]})", "holds 1 elements"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1, 2]}]})", "more than the 1"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [256]}]})", "is not a UINT8"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [1.5]}]})", "is not a UINT8"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ["a"]}]})", "not a number"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})", "not a numeric type"},
      {R"({"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": []}]})", "must be >= 0"},
      {R"({"inputs": [{"name": "input", "shape": [1e3], "datatype": "FP32", "data": []}]})", "must be an integer"},
      {R"({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]})", "'name' is missing"},
      {R"({"inputs": [{"name": 3, "shape": [1], "datatype": "FP32", "data": [1]}]})", "must be a string"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"top_k": 0}})",
       "top_k"},
      {R"({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}],
           "outputs": [{"name": "logits", "parameters": {"classification": "x"}}]})", "classification"},
  };
  for (const Case& c : cases) {
    auto [status, message] = Refused([&] { ParseHttpInfer(c.body, -1, "m", ""); });
    EXPECT_EQ(status, 400) << c.body.substr(0, 80);
    EXPECT_CONTAINS(message, c.part);
  }
  // A shape whose element count overflows is refused before anything is allocated.
  EXPECT_EQ(Refused([] {
              ParseHttpInfer(R"({"inputs": [{"name": "i", "shape": [4294967296, 4294967296, 8], "datatype": "FP32",
                                 "data": []}]})", -1, "m", "");
            }).first,
            413);
}

TEST(HttpCodec, WritesJsonOrBinaryOutputs) {
  InferResponse r{"m", "3", "id9", {}};
  OutputTensor t;
  t.name = "logits";
  t.datatype = "FP32";
  t.shape = {1, 2};
  t.f32 = {0.5f, -1};
  r.outputs.push_back(t);
  HttpBody json = EncodeHttpInfer(r);
  EXPECT_EQ(json.content_type, "application/json");
  EXPECT_EQ(json.header_length, -1);
  EXPECT_CONTAINS(json.content, R"("data":[0.5,-1.0])");
  EXPECT_CONTAINS(json.content, R"("model_version":"3")");
  r.outputs[0].binary = true;
  HttpBody bin = EncodeHttpInfer(r);
  ASSERT_GT(bin.header_length, 0);
  EXPECT_EQ(bin.content.size(), static_cast<size_t>(bin.header_length) + 8);
  float back[2];
  std::memcpy(back, bin.content.data() + bin.header_length, 8);
  EXPECT_EQ(back[0], 0.5f);
  EXPECT_EQ(back[1], -1.0f);
}

TEST(Batcher, MergesConcurrentRequestsAndReturnsEachItsOwnRows) {
  BatchOptions o;
  o.max_batch_size = 16;
  o.max_queue_delay_us = 20000;
  std::atomic<int64_t> largest{0};
  Batcher b(o, 2, 1,
            [&](int, const float* x, int64_t n, float* y) {
              int64_t seen = largest.load();
              while (n > seen && !largest.compare_exchange_weak(seen, n)) {
              }
              for (int64_t i = 0; i < n; ++i) y[i] = x[2 * i] + x[2 * i + 1];
            },
            [](double, int64_t) {});
  std::vector<std::thread> clients;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 12; ++c)
    clients.emplace_back([&, c] {
      for (int k = 0; k < 20; ++k) {
        float x[2] = {static_cast<float>(c), static_cast<float>(k)}, y = -1;
        b.Run(x, 1, &y);
        if (y != c + k) ++wrong;
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(largest, 1) << "12 concurrent clients and a 20 ms delay: some batch must hold more than one";
  EXPECT_LE(largest, 16);
}

TEST(Batcher, AFullQueueIsRefusedWith503AndRetryAfter) {
  BatchOptions o;
  o.max_queue = 1;
  o.batching = false;
  std::atomic<bool> release{false};
  Batcher b(o, 1, 1,
            [&](int, const float*, int64_t, float* y) {
              while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
              y[0] = 1;
            },
            [](double, int64_t) {});
  float x = 0, y1 = 0, y2 = 0;
  std::thread first([&] { b.Run(&x, 1, &y1); });   // runs (blocked)
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::thread second([&] { b.Run(&x, 1, &y2); });  // waits in the queue
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  float y3 = 0;
  try {
    b.Run(&x, 1, &y3);
    ADD_FAILURE() << "a third request fit a queue of one";
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status(), 503);
    EXPECT_GT(e.retry_after_s(), 0);
    EXPECT_CONTAINS(e.what(), "--max-queue");
  }
  release = true;
  first.join();
  second.join();
  EXPECT_EQ(y1, 1);
  EXPECT_EQ(y2, 1);
}

class RepositoryTest : public ::testing::Test {
 protected:
  int64_t Publish(float seed, const std::string& alias = "") {
    store::PublishRequest r = mlp_.Request("m", seed);
    r.alias = alias;
    return store::Store(root_).Publish(r).version;
  }
  // A copy of version `from` as the next version, with one byte of its weights changed: what a
  // disk error or a hand edit leaves, and what the sha256 in the manifest catches.
  int64_t CorruptCopy(int64_t from) {
    const int64_t to = store::Store(root_).Versions("m").back() + 1;
    const fs::path src = fs::path(root_) / "m" / std::to_string(from), dst = fs::path(root_) / "m" / std::to_string(to);
    fs::copy(src, dst);
    const fs::path w = dst / "weights.h5";
    fs::permissions(w, fs::perms::owner_write, fs::perm_options::add);
    std::fstream f(w, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    f.seekp(size - 3);
    f.put('\x5a');
    return to;
  }
  RepositoryOptions Options(const std::string& model_arg) {
    RepositoryOptions o;
    o.store_root = root_;
    o.models.push_back(ParseModelPolicy(model_arg));
    o.batching.max_batch_size = 4;
    o.batching.max_queue_delay_us = 0;
    return o;
  }
  InputTensor Input(std::vector<float> v) {
    return {"input", "FP32", {static_cast<int64_t>(v.size() / 4), 4}, std::move(v)};
  }
  datasets::testing::ScratchDir scratch_;
  std::string root_ = scratch_.File("store");
  store::Mlp mlp_;
  ServerMetrics metrics_;
  std::vector<std::string> log_;
  Repository::LogFn Log() {
    return [this](const std::string& s) { log_.push_back(s); };
  }
};

TEST_F(RepositoryTest, ServesTheNewestVersionAndSwapsWhenOneIsPublished) {
  Publish(1);
  Repository repo(Options("m"), &metrics_, Log());
  EXPECT_FALSE(repo.Ready());
  repo.Poll();
  ASSERT_TRUE(repo.Ready());
  std::shared_ptr<const ServedVersion> v1 = repo.Get("m", "");
  EXPECT_EQ(v1->version(), 1);
  Publish(2);
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), 2);
  EXPECT_EQ(repo.State("m").serving, (std::vector<int64_t>{2}));
  EXPECT_EQ(metrics_.swaps.Value({"m"}), 2);
  // The old version, still held (by a request in flight, say), keeps answering.
  int64_t rows = 0;
  EXPECT_EQ(v1->Logits(Input({1, 2, 3, 4}), &rows).size(), 2u);
  EXPECT_EQ(Refused([&] { repo.Get("m", "1"); }).first, 404);
  EXPECT_EQ(Refused([&] { repo.Get("other", ""); }).first, 404);
  EXPECT_EQ(Refused([&] { repo.Get("..", ""); }).first, 400);
  EXPECT_EQ(Refused([&] { repo.Get("m", "../1"); }).first, 400);
}

TEST_F(RepositoryTest, LogitsAreTheNetworksOnThePreparedInput) {
  Publish(0.5f);
  Repository repo(Options("m@latest"), &metrics_, Log());
  repo.Poll();
  std::vector<float> x = {1, -2, 0.5f, 3, 0, 0, 0, 0};
  int64_t rows = 0;
  std::vector<float> got = repo.Get("m", "1")->Logits(Input(x), &rows);
  ASSERT_EQ(rows, 2);
  // By hand: Linear(4->3) from mlp_.w, b = 0, ReLU, Linear(3->2) from mlp_.w2, b2 = 0.
  for (int r = 0; r < 2; ++r)
    for (int o = 0; o < 2; ++o) {
      double y = 0;
      for (int h = 0; h < 3; ++h) {
        double a = 0;
        for (int i = 0; i < 4; ++i) a += mlp_.w[h * 4 + i] * x[r * 4 + i];
        y += mlp_.w2[o * 3 + h] * std::max(a, 0.0);
      }
      EXPECT_NEAR(got[r * 2 + o], y, 1e-5) << "row " << r << " output " << o;
    }
  EXPECT_CONTAINS(Refused([&] { repo.Get("m", "")->Logits({"x", "FP32", {1, 4}, {0, 0, 0, 0}}, &rows); }).second,
                  "has one input, 'input'");
  EXPECT_CONTAINS(Refused([&] { repo.Get("m", "")->Logits({"input", "INT64", {1, 4}, {0, 0, 0, 0}}, &rows); }).second,
                  "is not accepted");
  EXPECT_CONTAINS(Refused([&] { repo.Get("m", "")->Logits({"input", "FP32", {1, 5}, {0, 0, 0, 0, 0}}, &rows); }).second,
                  "does not fit the model");
  EXPECT_CONTAINS(Refused([&] { repo.Get("m", "")->Logits(Input(std::vector<float>(20, 0)), &rows); }).second,
                  "--max-batch-size");
}

TEST_F(RepositoryTest, ACorruptVersionIsNeverServedAndTheOldOneGoesOn) {
  Publish(1);
  Repository repo(Options("m@latest"), &metrics_, Log());
  repo.Poll();
  const int64_t bad = CorruptCopy(1);
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), 1);
  Repository::ModelState s = repo.State("m");
  ASSERT_EQ(s.failed.count(bad), 1u);
  EXPECT_CONTAINS(s.failed[bad], "does not match manifest.pbtxt");
  EXPECT_EQ(metrics_.load_failures.Value({"m", std::to_string(bad)}), 1);
  bool logged = false;
  for (const std::string& l : log_) logged |= l.find("NOT serving m version " + std::to_string(bad)) != std::string::npos;
  EXPECT_TRUE(logged);
  // Not tried again at the next poll; a good version published after it is served.
  repo.Poll();
  EXPECT_EQ(metrics_.load_failures.Value({"m", std::to_string(bad)}), 1);
  const int64_t good = Publish(3);
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), good);
}

TEST_F(RepositoryTest, AnAliasPolicyFollowsTheAliasAndRollback) {
  Publish(1, "production");
  Publish(2);
  Repository repo(Options("m@production"), &metrics_, Log());
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), 1);
  EXPECT_EQ(repo.Get("m", "production")->version(), 1);
  store::Store(root_).SetAlias("m", "production", 2);
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "production")->version(), 2);
  EXPECT_EQ(repo.State("m").serving, (std::vector<int64_t>{2}));
  store::Store(root_).Rollback("m", "production");
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), 1);
  // An alias moved to a corrupt version: the one serving goes on.
  const int64_t bad = CorruptCopy(2);
  store::Store(root_).SetAlias("m", "production", bad);
  repo.Poll();
  EXPECT_EQ(repo.Get("m", "")->version(), 1);
}

TEST_F(RepositoryTest, LatestNAndSpecificVersions) {
  for (float s : {1.f, 2.f, 3.f}) Publish(s);
  Repository two(Options("m@latest:2"), &metrics_, Log());
  two.Poll();
  EXPECT_EQ(two.State("m").serving, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(two.Get("m", "2")->version(), 2);
  EXPECT_EQ(two.Get("m", "")->version(), 3);
  Repository some(Options("m@1,3"), &metrics_, Log());
  some.Poll();
  EXPECT_EQ(some.State("m").serving, (std::vector<int64_t>{1, 3}));
}

TEST_F(RepositoryTest, CudaWorkersAnswerWhatCpuWorkersAnswer) {
  std::string why;
  if (!CudaAvailable(&why)) GTEST_SKIP() << "no GPU: " << why;
  Publish(0.7f);
  Repository cpu(Options("m"), &metrics_, Log());
  RepositoryOptions o = Options("m");
  o.batching.device = Device::CUDA(0);
  Repository gpu(o, &metrics_, Log());
  cpu.Poll();
  gpu.Poll();
  std::vector<float> x = {1, -2, 0.5f, 3, 0.25f, 4, -1, 2};
  int64_t rows = 0;
  std::vector<float> a = cpu.Get("m", "")->Logits(Input(x), &rows), b = gpu.Get("m", "")->Logits(Input(x), &rows);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << i;
}

TEST(ModelPolicy, ParsesEveryFormAndNamesWhatIsWrong) {
  EXPECT_EQ(ParseModelPolicy("m").policy.Describe(), "latest");
  EXPECT_EQ(ParseModelPolicy("m@latest:3").policy.Describe(), "latest:3");
  EXPECT_EQ(ParseModelPolicy("m@3,1,3").policy.Describe(), "versions 1,3");
  EXPECT_EQ(ParseModelPolicy("m@production").policy.Describe(), "alias production");
  EXPECT_CONTAINS(ThrownMessage<ConfigError>([] { ParseModelPolicy("../m"); }), "--model ../m");
  EXPECT_CONTAINS(ThrownMessage<ConfigError>([] { ParseModelPolicy("m@latest:0"); }), "latest:N");
  EXPECT_CONTAINS(ThrownMessage<ConfigError>([] { ParseModelPolicy("m@1,x"); }), "'x' is not a version");
  EXPECT_CONTAINS(ThrownMessage<ConfigError>([] { ParseModelPolicy("m@a/b"); }), "--model m@a/b");
}

TEST_F(RepositoryTest, InferenceBuildsTheOutputsAskedFor) {
  Publish(1);
  Repository repo(Options("m"), &metrics_, Log());
  repo.Poll();
  InferRequest r;
  r.model = "m";
  r.id = "q";
  r.inputs.push_back(Input({1, 2, 3, 4}));
  r.top_k = 2;
  Inference all = RunInference(repo, r);
  ASSERT_EQ(all.response.outputs.size(), 3u);
  EXPECT_EQ(all.response.id, "q");
  EXPECT_EQ(all.response.version, "1");
  const OutputTensor &logits = all.response.outputs[0], &probs = all.response.outputs[1], &classes = all.response.outputs[2];
  EXPECT_NEAR(probs.f32[0] + probs.f32[1], 1.0, 1e-6);
  EXPECT_EQ(classes.shape, (Shape{1, 2}));
  EXPECT_EQ(classes.i64[0], logits.f32[0] >= logits.f32[1] ? 0 : 1);
  r.outputs = {{"probabilities", 1, false}};
  Inference cls = RunInference(repo, r);
  ASSERT_EQ(cls.response.outputs[0].datatype, "BYTES");
  EXPECT_CONTAINS(cls.response.outputs[0].bytes[0], ":" + std::to_string(classes.i64[0]));
  r.outputs = {{"nope"}};
  EXPECT_CONTAINS(Refused([&] { RunInference(repo, r); }).second, "has no output 'nope'");
}

}  // namespace
}  // namespace tessera::serve
