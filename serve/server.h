// `tessera serve`: the repository, the HTTP endpoints and (when built with gRPC) the gRPC service
// together, started and stopped the way an operator expects: ready once every model has a version
// loaded; on SIGTERM or SIGINT not ready, no new connections, what is in progress finished, exit 0.
#pragma once

#include <string>

#include "serve/http_server.h"
#include "serve/repository.h"

namespace tessera::serve {

struct ServerOptions {
  RepositoryOptions repository;
  HttpOptions http;
  int grpc_port = -1;  // -1: no gRPC; 0: any free port
  std::string auth_token_file;
  std::string port_file;  // once listening: {"http": PORT, "grpc": PORT, "pid": PID}, written atomically
};

// Runs the server until SIGTERM or SIGINT; returns the exit status. A port in use or a bad token
// file is thrown as tessera::Error; a store with nothing to serve yet is not an error (the server
// starts, says so in the log, and answers not ready until a version loads).
int RunServer(ServerOptions options);

}  // namespace tessera::serve
