#include "serve/server.h"

#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <thread>

#include "core/io/durable.h"
#include "serve/grpc_server.h"

namespace tessera::serve {
namespace {

void Log(const std::string& line) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "%s tessera serve: %s\n", io::UtcNow().c_str(), line.c_str());
  std::fflush(stderr);
}

std::string ReadToken(const std::string& path) {
  std::string t = io::ReadSmallFile(path, 4096, "--auth-token-file");
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
  if (t.empty()) TESSERA_THROW(ConfigError, "--auth-token-file ", path, " is empty");
  return t;
}

}  // namespace

int RunServer(ServerOptions o) {
  // Signals are taken by sigwait() on this thread alone: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // glibc gives threads arenas of their own, up to 8 per core, and keeps what each arena once held:
  // with the threads a version's load and workers start, RSS crept up ~4 MB per swap until every
  // arena existed. A few shared arenas keep RSS at the versions served (MALLOC_ARENA_MAX overrides).
  if (!std::getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
  if (!o.auth_token_file.empty()) o.http.auth_token = ReadToken(o.auth_token_file);
  ServerMetrics metrics;
  std::atomic<bool> draining{false};
  Repository repository(o.repository, &metrics, Log);
  Log("loading from store " + o.repository.store_root);
  repository.Poll();
  if (!repository.Ready())
    Log("not ready: some model has no version that loads; /v2/health/ready answers 503 until one does");
  repository.StartPolling();

  HttpServer http(repository, metrics, o.http, draining);
  const int http_port = http.Bind();
  std::unique_ptr<GrpcServer> grpc;
  int grpc_port = -1;
  if (o.grpc_port >= 0) {
    grpc = std::make_unique<GrpcServer>(repository, metrics, o.http.host, o.grpc_port, o.http.auth_token, draining,
                                        o.http.max_body_bytes);
    grpc_port = grpc->port();
  }
  std::thread http_thread([&http] { http.Serve(); });
  if (!o.port_file.empty())
    io::WriteFileAtomically(o.port_file, detail::StrCat("{\"http\": ", http_port, ", \"grpc\": ", grpc_port,
                                                        ", \"pid\": ", getpid(), "}\n"));
  Log(detail::StrCat("listening: HTTP on ", o.http.host, ":", http_port,
                     grpc ? detail::StrCat(", gRPC on ", o.http.host, ":", grpc_port) : std::string(),
                     "; polling the store every ", o.repository.poll_interval_s, " s"));

  int sig = 0;
  sigwait(&signals, &sig);
  draining = true;
  Log(std::string("got ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ": draining (no new connections; finishing "
      "the requests in progress)");
  http.Stop();
  http_thread.join();
  if (grpc) grpc->Stop();
  Log("stopped");
  return 0;
}

}  // namespace tessera::serve
