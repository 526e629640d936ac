#include "serve/http_server.h"

#include <httplib.h>

#include <chrono>
#include <cmath>

#include "core/version.h"
#include "serve/inference.h"
#include "tessera/config.h"

namespace tessera::serve {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

void Answer(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void AnswerError(httplib::Response& res, const RequestError& e) {
  res.status = e.status();
  res.set_content(ErrorJson(e.what()), "application/json");
  if (e.retry_after_s() > 0) res.set_header("Retry-After", std::to_string(static_cast<int>(std::ceil(e.retry_after_s()))));
}

bool OpenEndpoint(const std::string& path) { return path.rfind("/v2/health/", 0) == 0 || path == "/metrics"; }

const char* kModelPath = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";

}  // namespace

json ServerMetadataJson() {
  return {{"name", "tessera"},
          {"version", std::string(TESSERA_VERSION) + "+" + SourceCommit()},
          {"extensions", {"binary_tensor_data", "classification", "model_repository"}}};
}

json ModelMetadataJson(const Repository& repository, const std::string& model, const std::string& version) {
  std::shared_ptr<const ServedVersion> v = repository.Get(model, version);
  Repository::ModelState state = repository.State(model);
  json versions = json::array();
  for (int64_t s : state.serving) versions.push_back(std::to_string(s));
  auto tensors = [](const std::vector<TensorMetadata>& ts) {
    json out = json::array();
    for (const TensorMetadata& t : ts) out.push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}});
    return out;
  };
  json j = {{"name", model},        {"versions", versions},           {"platform", "tessera"},
            {"inputs", tensors(v->Inputs())}, {"outputs", tensors(v->Outputs())}};
  // Beyond the protocol's fields: the version these answers describe, and what else it takes.
  j["version"] = v->version_string();
  j["parameters"] = {{"accepted_datatypes", v->architecture().input_dtype() == "FP32"
                                                ? json{"FP32"}
                                                : json{v->architecture().input_dtype(), "FP32"}}};
  return j;
}

HttpServer::HttpServer(Repository& repository, ServerMetrics& metrics, HttpOptions options,
                       const std::atomic<bool>& draining)
    : repository_(repository), metrics_(metrics), options_(std::move(options)), draining_(draining),
      server_(std::make_unique<httplib::Server>()) {
  const int threads = options_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  server_->set_keep_alive_max_count(100000);
  server_->set_keep_alive_timeout(30);
  server_->set_tcp_nodelay(true);
  Routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::Bind() {
  const int port = options_.port == 0 ? server_->bind_to_any_port(options_.host)
                                      : (server_->bind_to_port(options_.host, options_.port) ? options_.port : -1);
  if (port < 0)
    TESSERA_THROW(ConfigError, "cannot listen for HTTP on ", options_.host, ":", options_.port,
                  " (in use, or not an address of this machine)");
  return port;
}

void HttpServer::Serve() { server_->listen_after_bind(); }
void HttpServer::Stop() { server_->stop(); }

void HttpServer::Routes() {
  httplib::Server& s = *server_;
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options_.auth_token.empty() || OpenEndpoint(req.path)) return httplib::Server::HandlerResponse::Unhandled;
    const std::string got = req.get_header_value("Authorization");
    if (got.rfind("Bearer ", 0) == 0 && SameToken(got.substr(7), options_.auth_token))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    Answer(res, 401, {{"error", got.empty() ? "this server wants 'Authorization: Bearer TOKEN' (--auth-token-file)"
                                            : "the bearer token is not this server's"}});
    return httplib::Server::HandlerResponse::Handled;
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string why = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path
                      : res.status == 413 && req.get_header_value("Content-Type") == "application/x-www-form-urlencoded"
                          ? "the body was sent as a form (application/x-www-form-urlencoded, curl -d's default), which "
                            "is limited to 8 KiB: send it with 'Content-Type: application/json'"
                      : res.status == 413 ? "the request body is larger than this server takes (--max-body-bytes)"
                                          : "HTTP status " + std::to_string(res.status);
    res.set_content(ErrorJson(why), "application/json");
  });

  s.Get("/v2", [](const httplib::Request&, httplib::Response& res) { Answer(res, 200, ServerMetadataJson()); });
  s.Get("/v2/health/live", [](const httplib::Request&, httplib::Response& res) { Answer(res, 200, {{"live", true}}); });
  s.Get("/v2/health/ready", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = !draining_ && repository_.Ready();
    Answer(res, ready ? 200 : 503, {{"ready", ready}});
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.Render(), "text/plain; version=0.0.4");
  });
  s.Post("/v2/noop", [](const httplib::Request&, httplib::Response& res) { Answer(res, 200, json::object()); });
  s.Post("/v2/repository/index", [this](const httplib::Request&, httplib::Response& res) {
    json index = json::array();
    for (const Repository::ModelState& m : repository_.State()) {
      for (int64_t v : m.serving) index.push_back({{"name", m.model}, {"version", std::to_string(v)}, {"state", "READY"}});
      for (const auto& [v, why] : m.failed)
        index.push_back({{"name", m.model}, {"version", std::to_string(v)}, {"state", "UNAVAILABLE"}, {"reason", why}});
    }
    Answer(res, 200, index);
  });
  s.Get(kModelPath, [this](const httplib::Request& req, httplib::Response& res) {
    try {
      Answer(res, 200, ModelMetadataJson(repository_, req.matches[1], req.matches[2]));
    } catch (const RequestError& e) {
      AnswerError(res, e);
    }
  });
  s.Get(std::string(kModelPath) + "/ready", [this](const httplib::Request& req, httplib::Response& res) {
    try {
      std::shared_ptr<const ServedVersion> v = repository_.Get(req.matches[1], req.matches[2]);
      Answer(res, 200, {{"name", v->model()}, {"version", v->version_string()}, {"ready", true}});
    } catch (const RequestError& e) {
      AnswerError(res, e);
    }
  });
  s.Post(std::string(kModelPath) + "/infer", [this](const httplib::Request& req, httplib::Response& res) {
    const Clock::time_point start = Clock::now();
    metrics_.in_flight.Add({}, 1);
    const std::string model = req.matches[1];
    std::string version_label;
    try {
      int64_t header_length = -1;
      if (req.has_header("Inference-Header-Content-Length")) {
        const std::string h = req.get_header_value("Inference-Header-Content-Length");
        char* end = nullptr;
        header_length = std::strtoll(h.c_str(), &end, 10);
        if (h.empty() || *end != '\0' || header_length < 1)
          throw RequestError(400, "Inference-Header-Content-Length '" + h + "' is not a positive byte count");
      }
      try {  // a name with path tricks is answered before the body is read
        store::ValidateModelName(model);
      } catch (const store::StoreError& e) {
        throw RequestError(400, e.what());
      }
      InferRequest request = ParseHttpInfer(req.body, header_length, model, req.matches[2], options_.limits);
      Inference done = RunInference(repository_, request);
      version_label = done.response.version;
      HttpBody body = EncodeHttpInfer(done.response);
      res.status = 200;
      res.set_content(body.content, body.content_type);
      if (body.header_length >= 0) res.set_header("Inference-Header-Content-Length", std::to_string(body.header_length));
    } catch (const RequestError& e) {
      AnswerError(res, e);
    } catch (const std::exception& e) {
      Answer(res, 500, {{"error", std::string("internal error: ") + e.what()}});
    }
    // Only names the server serves become labels: a client sending random names cannot grow /metrics.
    const std::string label = repository_.Serves(model) ? model : "";
    const std::string status = std::to_string(res.status);
    metrics_.requests.Add({label, version_label, "http", status});
    if (res.status >= 400) metrics_.failures.Add({label, version_label, "http", status});
    metrics_.latency.Observe({label, "http"}, std::chrono::duration<double>(Clock::now() - start).count());
    metrics_.in_flight.Add({}, -1);
  });
}

}  // namespace tessera::serve
