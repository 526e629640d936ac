// The HTTP/REST endpoints of the inference protocol (docs/serving.md lists them), on
// cpp-httplib's thread-per-connection server with keep-alive.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "serve/http_codec.h"
#include "serve/metrics.h"
#include "serve/repository.h"

namespace httplib {
class Server;
}

namespace tessera::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (Port() says which)
  int threads = 96;  // connections served at once (each keep-alive connection holds one)
  int64_t max_body_bytes = 16 << 20;
  std::string auth_token;  // non-empty: every endpoint but /v2/health/* and /metrics wants it
  CodecLimits limits;
};

class HttpServer {
 public:
  HttpServer(Repository& repository, ServerMetrics& metrics, HttpOptions options, const std::atomic<bool>& draining);
  ~HttpServer();
  // Binds the socket (ConfigError naming the address when it cannot) and returns the port.
  int Bind();
  // Serves until Stop(); the requests in progress when Stop() is called are finished first.
  void Serve();
  void Stop();

 private:
  void Routes();
  Repository& repository_;
  ServerMetrics& metrics_;
  HttpOptions options_;
  const std::atomic<bool>& draining_;
  std::unique_ptr<httplib::Server> server_;
};

// The server metadata and model metadata documents, shared with gRPC's answers.
nlohmann::json ServerMetadataJson();
nlohmann::json ModelMetadataJson(const Repository& repository, const std::string& model, const std::string& version);

}  // namespace tessera::serve
