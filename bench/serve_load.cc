// serve_load: a closed-loop load generator for KServe v2 / Triton-protocol servers (tessera serve,
// MLServer, Triton, KServe), for bench/run_serve_bench.sh.
//
//   serve_load --mode MODE --port PORT [--host 127.0.0.1] [--model w2] [--model-version V]
//              [--concurrency 16] [--requests 4000] [--warmup 200] [--images 1000]
//              [--noop-body json|binary] [--connect-at-once] [--tag KEY=VALUE ...]
//
// Modes (what one request is):
//   http-json     POST /v2/models/M[/versions/V]/infer, a JSON body: one Fashion-MNIST test image,
//                 input "input" UINT8 [1,1,28,28] as "data", output "logits" asked for as JSON.
//   http-binary   the same with Triton's binary tensor extension both ways: the image's 784 bytes
//                 after the JSON header (Inference-Header-Content-Length, binary_data_size), and
//                 "logits" asked for with parameters.binary_data (40 bytes after the response header).
//   grpc          inference.GRPCInferenceService/ModelInfer, the image in raw_input_contents.
//   http-noop     POST /v2/noop with the http-json body (--noop-body binary: the http-binary body):
//                 tessera's no-op endpoint, which reads the body and answers {}: the HTTP ceiling.
//   grpc-noop     GRPCInferenceService/ServerLive: the gRPC ceiling.
//   http-live     GET /v2/health/live: any v2 server's cheapest HTTP endpoint (MLServer has no no-op).
//
// `concurrency` client threads each hold one keep-alive connection (HTTP: a cpp-httplib client;
// gRPC: a channel with its own subchannel pool, so its own TCP connection) and send one request at
// a time. The connections are opened one after another (GET /v2/health/live, gRPC ServerLive;
// --connect-at-once: by each thread's first request, all at the same instant). Each client sends
// warmup / concurrency requests first; then all start together and send
// requests / concurrency counted ones. Every response must be 200 (gRPC: OK) and carry 10 finite
// logits for the one image (no-op modes: 200), or serve_load exits 1 naming the first failure.
// Prints one JSON line: requests/s over the counted part (all requests / the time from the start
// to the last thread's last answer) and the latency percentiles of every counted request.
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

#ifdef TESSERA_WITH_GRPC
#include <grpcpp/grpcpp.h>

#include "serve/grpc_service.grpc.pb.h"
#endif

#include "bench/bench_util.h"

namespace tessera::bench {
namespace {

using json = nlohmann::json;
constexpr int kPixels = 28 * 28;
constexpr int kClasses = 10;
constexpr const char* kImages = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

struct Options {
  std::string mode = "http-json", host = "127.0.0.1", model = "w2", version, images_path = kImages;
  std::string noop_body = "json";
  int port = 0, concurrency = 16, images = 1000;
  int64_t requests = 4000, warmup = 200;
  double timeout_s = 60;
  bool connect_at_once = false;
  std::vector<std::pair<std::string, std::string>> tags;
};

// The first `count` images of a gzip IDX file (the Fashion-MNIST test set), 784 bytes each.
std::vector<std::string> ReadImages(const std::string& path, int count) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) TESSERA_THROW(IoError, path, ": cannot open");
  unsigned char header[16];
  if (gzread(f, header, 16) != 16) TESSERA_THROW(IoError, path, ": not an IDX file");
  auto be32 = [&](int at) {
    return (uint32_t{header[at]} << 24) | (uint32_t{header[at + 1]} << 16) | (uint32_t{header[at + 2]} << 8) |
           header[at + 3];
  };
  if (be32(0) != 0x803 || be32(8) != 28 || be32(12) != 28) TESSERA_THROW(IoError, path, ": not 28x28 uint8 IDX images");
  const int n = std::min<int>(count, static_cast<int>(be32(4)));
  std::vector<std::string> out(static_cast<size_t>(n), std::string(kPixels, '\0'));
  for (std::string& img : out)
    if (gzread(f, img.data(), kPixels) != kPixels) TESSERA_THROW(IoError, path, ": truncated");
  gzclose(f);
  return out;
}

const char* kInputSpec = R"({"name":"input","datatype":"UINT8","shape":[1,1,28,28],)";

std::string JsonBody(const std::string& img) {
  std::string s = std::string(R"({"inputs":[)") + kInputSpec + R"("data":[)";
  for (int i = 0; i < kPixels; ++i) {
    if (i) s += ',';
    s += std::to_string(static_cast<unsigned char>(img[static_cast<size_t>(i)]));
  }
  return s + R"(]}],"outputs":[{"name":"logits"}]})";
}

std::string BinaryHeader() {
  return std::string(R"({"inputs":[)") + kInputSpec + R"("parameters":{"binary_data_size":784}}],)" +
         R"("outputs":[{"name":"logits","parameters":{"binary_data":true}}]})";
}

bool TenFinite(const float* v) {
  for (int i = 0; i < kClasses; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// "" when `body` (the answer to an http-json or http-binary request) holds the 10 logits.
std::string CheckHttpInfer(const httplib::Response& r) {
  size_t json_size = r.body.size();
  if (r.has_header("Inference-Header-Content-Length")) json_size = std::stoul(r.get_header_value("Inference-Header-Content-Length"));
  if (json_size > r.body.size()) return "Inference-Header-Content-Length beyond the body";
  json j = json::parse(r.body.begin(), r.body.begin() + static_cast<std::ptrdiff_t>(json_size), nullptr, false);
  if (j.is_discarded() || !j.contains("outputs")) return "no outputs in " + r.body.substr(0, 200);
  size_t binary_at = json_size;
  for (const json& o : j["outputs"]) {
    size_t size = 0;
    if (o.contains("parameters") && o["parameters"].contains("binary_data_size"))
      size = o["parameters"]["binary_data_size"].get<size_t>();
    if (o.value("name", "") == "logits") {
      float v[kClasses];
      if (size > 0) {
        if (size != sizeof v || binary_at + size > r.body.size()) return "binary logits of " + std::to_string(size) + " bytes";
        std::memcpy(v, r.body.data() + binary_at, sizeof v);
      } else {
        const json& d = o["data"];
        if (!d.is_array() || d.size() != kClasses) return "logits without 10 values: " + o.dump().substr(0, 200);
        for (int i = 0; i < kClasses; ++i) v[i] = d[static_cast<size_t>(i)].get<float>();
      }
      return TenFinite(v) ? "" : "logits not finite";
    }
    binary_at += size;
  }
  return "no output 'logits' in " + r.body.substr(0, 200);
}

// One client: its own connection, its requests, their latencies.
class Client {
 public:
  virtual ~Client() = default;
  // Sends request `i`; "" when the answer is right, else what is wrong.
  virtual std::string Send(int64_t i) = 0;
  // Opens the connection (a liveness request on it); "" when it answered.
  virtual std::string Connect() = 0;
};

class HttpClient final : public Client {
 public:
  HttpClient(const Options& o, const std::vector<std::string>& images, int thread)
      : o_(o), thread_(thread), cli_(o.host, o.port) {
    cli_.set_keep_alive(true);
    cli_.set_tcp_nodelay(true);
    const time_t t = static_cast<time_t>(o.timeout_s);
    cli_.set_connection_timeout(t);
    cli_.set_read_timeout(t);
    cli_.set_write_timeout(t);
    const std::string base = "/v2/models/" + o.model + (o.version.empty() ? "" : "/versions/" + o.version);
    const bool binary = o.mode == "http-binary" || (o.mode == "http-noop" && o.noop_body == "binary");
    path_ = o.mode == "http-noop" ? "/v2/noop" : base + "/infer";
    if (binary) {
      const std::string h = BinaryHeader();
      headers_.emplace("Inference-Header-Content-Length", std::to_string(h.size()));
      content_type_ = "application/octet-stream";
      for (const std::string& img : images) bodies_.push_back(h + img);
    } else if (o.mode != "http-live") {
      content_type_ = "application/json";
      for (const std::string& img : images) bodies_.push_back(JsonBody(img));
    }
  }
  std::string Connect() override {
    httplib::Result r = cli_.Get("/v2/health/live");
    if (!r) return "HTTP error " + httplib::to_string(r.error());
    return r->status == 200 ? "" : "GET /v2/health/live: HTTP " + std::to_string(r->status);
  }
  std::string Send(int64_t i) override {
    httplib::Result r = o_.mode == "http-live"
                            ? cli_.Get("/v2/health/live")
                            : cli_.Post(path_, headers_, bodies_[Pick(i)], content_type_);
    if (!r) return "HTTP error " + httplib::to_string(r.error());
    if (r->status != 200) return "HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 300);
    if (o_.mode == "http-noop" || o_.mode == "http-live") return "";
    return CheckHttpInfer(*r);
  }

 private:
  size_t Pick(int64_t i) const { return static_cast<size_t>((thread_ * 7919 + i) % static_cast<int64_t>(bodies_.size())); }
  const Options& o_;
  const int thread_;
  httplib::Client cli_;
  httplib::Headers headers_;
  std::string path_, content_type_;
  std::vector<std::string> bodies_;
};

#ifdef TESSERA_WITH_GRPC
namespace pb = ::inference;

class GrpcClient final : public Client {
 public:
  GrpcClient(const Options& o, const std::vector<std::string>& images, int thread) : o_(o), thread_(thread) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own, not one shared
    args.SetMaxReceiveMessageSize(16 << 20);
    stub_ = pb::GRPCInferenceService::NewStub(
        grpc::CreateCustomChannel(o.host + ":" + std::to_string(o.port), grpc::InsecureChannelCredentials(), args));
    for (const std::string& img : images) {
      pb::ModelInferRequest r;
      r.set_model_name(o.model);
      r.set_model_version(o.version);
      auto* in = r.add_inputs();
      in->set_name("input");
      in->set_datatype("UINT8");
      for (int64_t d : {1, 1, 28, 28}) in->add_shape(d);
      r.add_outputs()->set_name("logits");
      r.add_raw_input_contents(img);
      requests_.push_back(std::move(r));
    }
  }
  std::string Connect() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000)));
    pb::ServerLiveRequest req;
    pb::ServerLiveResponse res;
    grpc::Status s = stub_->ServerLive(&ctx, req, &res);
    return s.ok() ? "" : "ServerLive: gRPC " + std::to_string(s.error_code()) + ": " + s.error_message();
  }
  std::string Send(int64_t i) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000)));
    if (o_.mode == "grpc-noop") {
      pb::ServerLiveRequest req;
      pb::ServerLiveResponse res;
      grpc::Status s = stub_->ServerLive(&ctx, req, &res);
      if (!s.ok()) return "gRPC " + std::to_string(s.error_code()) + ": " + s.error_message();
      return res.live() ? "" : "ServerLive: not live";
    }
    pb::ModelInferResponse res;
    grpc::Status s = stub_->ModelInfer(&ctx, requests_[static_cast<size_t>((thread_ * 7919 + i) % static_cast<int64_t>(requests_.size()))], &res);
    if (!s.ok()) return "gRPC " + std::to_string(s.error_code()) + ": " + s.error_message();
    for (int k = 0; k < res.outputs_size(); ++k) {
      const auto& out = res.outputs(k);
      if (out.name() != "logits") continue;
      float v[kClasses];
      if (res.raw_output_contents_size() > k) {
        const std::string& raw = res.raw_output_contents(k);
        if (raw.size() != sizeof v) return "raw logits of " + std::to_string(raw.size()) + " bytes";
        std::memcpy(v, raw.data(), sizeof v);
      } else if (out.contents().fp32_contents_size() == kClasses) {
        for (int c = 0; c < kClasses; ++c) v[c] = out.contents().fp32_contents(c);
      } else {
        return "logits without 10 values";
      }
      return TenFinite(v) ? "" : "logits not finite";
    }
    return "no output 'logits'";
  }

 private:
  const Options& o_;
  const int thread_;
  std::unique_ptr<pb::GRPCInferenceService::Stub> stub_;
  std::vector<pb::ModelInferRequest> requests_;
};
#endif

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size()))) - 1;
  return sorted[std::min(i, sorted.size() - 1)];
}

int Run(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) TESSERA_THROW(ValueError, a, " needs a value");
      return argv[++i];
    };
    if (a == "--mode") o.mode = next();
    else if (a == "--host") o.host = next();
    else if (a == "--port") o.port = std::stoi(next());
    else if (a == "--model") o.model = next();
    else if (a == "--model-version") o.version = next();
    else if (a == "--concurrency") o.concurrency = std::stoi(next());
    else if (a == "--requests") o.requests = std::stoll(next());
    else if (a == "--warmup") o.warmup = std::stoll(next());
    else if (a == "--images") o.images = std::stoi(next());
    else if (a == "--images-file") o.images_path = next();
    else if (a == "--noop-body") o.noop_body = next();
    else if (a == "--timeout-s") o.timeout_s = std::stod(next());
    else if (a == "--connect-at-once") o.connect_at_once = true;
    else if (a == "--tag") {
      const std::string kv = next();
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) TESSERA_THROW(ValueError, "--tag wants KEY=VALUE, got ", kv);
      o.tags.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    } else {
      TESSERA_THROW(ValueError, "unknown argument ", a, " (see the comment at the top of bench/serve_load.cc)");
    }
  }
  static const std::vector<std::string> kModes = {"http-json", "http-binary", "grpc", "http-noop", "grpc-noop", "http-live"};
  if (std::find(kModes.begin(), kModes.end(), o.mode) == kModes.end()) TESSERA_THROW(ValueError, "unknown --mode ", o.mode);
  if (o.port <= 0) TESSERA_THROW(ValueError, "--port is required");
  if (o.concurrency < 1 || o.requests < o.concurrency) TESSERA_THROW(ValueError, "need --requests >= --concurrency >= 1");
  if (o.noop_body != "json" && o.noop_body != "binary") TESSERA_THROW(ValueError, "--noop-body is json or binary");
  const bool grpc = o.mode.rfind("grpc", 0) == 0;
#ifndef TESSERA_WITH_GRPC
  if (grpc) TESSERA_THROW(ValueError, "this serve_load was built without gRPC (TESSERA_WITH_GRPC off)");
#endif
  const std::vector<std::string> images = ReadImages(o.images_path, o.images);

  const int n = o.concurrency;
  const bool connect_at_once = o.connect_at_once;
  const int64_t per_thread = o.requests / n, warm_per_thread = (o.warmup + n - 1) / n;
  std::vector<std::unique_ptr<Client>> clients;
  for (int t = 0; t < n; ++t) {
#ifdef TESSERA_WITH_GRPC
    if (grpc) {
      clients.push_back(std::make_unique<GrpcClient>(o, images, t));
      continue;
    }
#endif
    clients.push_back(std::make_unique<HttpClient>(o, images, t));
  }
  // The connections are opened one at a time, as a connection pool fills: `concurrency` connects
  // at the same instant overflow tessera's listen backlog (cpp-httplib's default, 5), and some of
  // those connections then fail (--connect-at-once shows it).
  if (!connect_at_once)
    for (int t = 0; t < n; ++t) {
      const std::string why = clients[static_cast<size_t>(t)]->Connect();
      if (!why.empty()) TESSERA_THROW(IoError, "connection ", t, ": ", why);
    }
  std::vector<std::vector<double>> latencies(static_cast<size_t>(n));
  std::mutex mu;
  std::condition_variable cv;
  int warmed = 0;
  bool go = false;
  Clock::time_point start;
  std::atomic<bool> failed{false};
  std::string failure;
  std::vector<Clock::time_point> finished(static_cast<size_t>(n));
  auto fail = [&](const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    if (!failed.exchange(true)) failure = why;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      Client& c = *clients[static_cast<size_t>(t)];
      std::vector<double>& lat = latencies[static_cast<size_t>(t)];
      lat.reserve(static_cast<size_t>(per_thread));
      int64_t i = 0;
      for (; i < warm_per_thread && !failed; ++i) {
        std::string why = c.Send(i);
        if (!why.empty()) fail("warm-up: " + why);
      }
      {
        std::unique_lock<std::mutex> lock(mu);
        if (++warmed == n) {
          go = true;
          start = Clock::now();
          cv.notify_all();
        }
        cv.wait(lock, [&] { return go; });
      }
      for (int64_t k = 0; k < per_thread && !failed; ++k, ++i) {
        const Clock::time_point t0 = Clock::now();
        std::string why = c.Send(i);
        const Clock::time_point t1 = Clock::now();
        if (!why.empty()) fail(why);
        lat.push_back(Seconds(t0, t1));
      }
      finished[static_cast<size_t>(t)] = Clock::now();
    });
  }
  for (std::thread& t : threads) t.join();
  if (failed) {
    std::fprintf(stderr, "serve_load %s :%d c=%d: %s\n", o.mode.c_str(), o.port, n, failure.c_str());
    return 1;
  }
  const Clock::time_point end = *std::max_element(finished.begin(), finished.end());
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  const double seconds = Seconds(start, end);
  double sum = 0;
  for (double v : all) sum += v;
  json out = {{"mode", o.mode},
              {"port", o.port},
              {"model", o.model},
              {"concurrency", n},
              {"requests", all.size()},
              {"warmup", warm_per_thread * n},
              {"seconds", seconds},
              {"rps", static_cast<double>(all.size()) / seconds},
              {"p50_ms", Percentile(all, 0.50) * 1e3},
              {"p90_ms", Percentile(all, 0.90) * 1e3},
              {"p99_ms", Percentile(all, 0.99) * 1e3},
              {"max_ms", all.back() * 1e3},
              {"mean_ms", sum / static_cast<double>(all.size()) * 1e3}};
  if (o.mode == "http-noop") out["noop_body"] = o.noop_body;
  for (const auto& [k, v] : o.tags) out[k] = v;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) {
  try {
    return tessera::bench::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve_load: %s\n", e.what());
    return 2;
  }
}
