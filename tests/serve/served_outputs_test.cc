// Served predictions are the trainer's: a W1 network laid out as the trainer lays it out, published
// with the trainer's own architecture record, answers Fashion-MNIST test images over real HTTP
// (JSON and binary) with the logits the trainer's evaluation computes for them (jobs/evaluate.cc:
// the loader's normalisation, then the network's forward in eval mode).
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/model_spec.h"
#include "datasets/loader.h"
#include "jobs/build.h"
#include "jobs/publish.h"
#include "jobs/spec.h"
#include "serve/http_server.h"
#include "tests/datasets/test_util.h"

namespace tessera::serve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

TEST(ServedOutputs, EqualTheTrainersEvaluationOnFashionMnist) {
  const std::string job = std::string(TESSERA_SOURCE_DIR) + "/jobs/examples/fmnist_mlp.pbtxt";
  jobs::JobSpec spec = jobs::LoadJobSpec(job);
  std::unique_ptr<datasets::Dataset> test = jobs::OpenSplit(spec.data(), false);
  const Shape example = test->example_shape();
  std::unique_ptr<nn::Sequential> net = models::BuildModel(spec.model(), example, test->num_classes());
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 7);
  net->SetTraining(false);

  datasets::testing::ScratchDir scratch;
  const std::string root = scratch.File("store");
  store::PublishRequest pub;
  pub.model = "w1";
  for (const auto& e : params.entries()) pub.weights.push_back({e.name, e.param->shape, DType::kF32, e.param->value.raw_data()});
  pub.architecture = jobs::ArchitectureOf(spec, example, test->num_classes());
  store::Store(root).Publish(pub);

  // The trainer's evaluation of the first 256 test images.
  const int64_t n = 256;
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  Shape fs{n};
  fs.insert(fs.end(), example.begin(), example.end());
  Tensor x = Tensor::Empty(fs), y = Tensor::Empty({n}, DType::kI32);
  test->Get(idx, x, y);
  std::vector<uint8_t> pixels(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) pixels[i] = static_cast<uint8_t>(x.data<float>()[i]);  // IDX bytes
  Tensor prepared = x.Clone();
  datasets::Normalize(prepared, jobs::LoaderOptionsFor(spec, false));
  std::vector<double> want = net->Forward(prepared).ToVector();

  ServerMetrics metrics;
  RepositoryOptions ro;
  ro.store_root = root;
  ro.batching.max_batch_size = 64;
  Repository repo(ro, &metrics, [](const std::string&) {});
  repo.Poll();
  std::atomic<bool> draining{false};
  HttpOptions ho;
  ho.port = 0;
  HttpServer server(repo, metrics, ho, draining);
  const int port = server.Bind();
  std::thread serving([&] { server.Serve(); });
  httplib::Client client("127.0.0.1", port);

  const int64_t per = 64, numel = NumElements(example);
  double worst = 0;
  for (bool binary : {false, true})
    for (int64_t b = 0; b < n; b += per) {
      json input = {{"name", "input"}, {"datatype", "UINT8"}, {"shape", {per, 1, 28, 28}}};
      std::string tail;
      if (binary) {
        input["parameters"] = {{"binary_data_size", per * numel}};
        tail.assign(reinterpret_cast<const char*>(pixels.data() + b * numel), static_cast<size_t>(per * numel));
      } else {
        input["data"] = std::vector<int>(pixels.begin() + b * numel, pixels.begin() + (b + per) * numel);
      }
      const std::string head = json{{"inputs", {input}}, {"outputs", {{{"name", "logits"}}}}}.dump();
      httplib::Headers headers;
      if (binary) headers.emplace("Inference-Header-Content-Length", std::to_string(head.size()));
      auto res = client.Post("/v2/models/w1/infer", headers, head + tail, "application/octet-stream");
      ASSERT_TRUE(res);
      ASSERT_EQ(res->status, 200) << res->body;
      std::vector<float> got = json::parse(res->body)["outputs"][0]["data"].get<std::vector<float>>();
      ASSERT_EQ(got.size(), static_cast<size_t>(per * 10));
      for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[b * 10 + i]));
    }
  EXPECT_LE(worst, 1e-6) << "served logits differ from the trainer's evaluation";
  server.Stop();
  serving.join();
}

}  // namespace
}  // namespace tessera::serve
