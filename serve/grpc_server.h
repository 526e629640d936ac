// The gRPC form of the inference protocol (serve/grpc_service.proto), on gRPC's synchronous
// server. Built only where gRPC is (libgrpc++-dev, protobuf-compiler-grpc); elsewhere
// constructing one throws ConfigError saying so, and `tessera serve --grpc-port` is refused.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "serve/metrics.h"
#include "serve/repository.h"

namespace tessera::serve {

class GrpcServer {
 public:
  // Listens on host:port (0: any free port); ConfigError when it cannot.
  GrpcServer(Repository& repository, ServerMetrics& metrics, const std::string& host, int port,
             const std::string& auth_token, const std::atomic<bool>& draining, int64_t max_message_bytes = 16 << 20);
  ~GrpcServer();
  int port() const { return port_; }
  // Finishes the calls in progress (up to 30 s), then stops.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = -1;
};

bool HaveGrpc();

}  // namespace tessera::serve
