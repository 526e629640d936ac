// GrpcServer in a build without gRPC: `tessera serve --grpc-port` says how to get it.
#include "serve/grpc_server.h"

namespace tessera::serve {

struct GrpcServer::Impl {};

GrpcServer::GrpcServer(Repository&, ServerMetrics&, const std::string&, int, const std::string&,
                       const std::atomic<bool>&, int64_t) {
  TESSERA_THROW(ConfigError, "this tessera was built without gRPC: install libgrpc++-dev and protobuf-compiler-grpc "
                "(scripts/setup.sh does) and build again, or serve HTTP only (no --grpc-port)");
}
GrpcServer::~GrpcServer() = default;
void GrpcServer::Stop() {}
bool HaveGrpc() { return false; }

}  // namespace tessera::serve
