// tessera serve: the inference server over a model store (docs/serving.md).
#include <cstdlib>
#include <memory>

#include "core/device.h"
#include "core/threads.h"
#include "launch/commands.h"
#include "serve/grpc_server.h"
#include "serve/server.h"

namespace tessera::launch {

std::vector<Command> AddServeCommands(CLI::App& app) {
  auto o = std::make_shared<serve::ServerOptions>();
  auto models = std::make_shared<std::vector<std::string>>();
  auto threads = std::make_shared<int>(0);
  auto no_batching = std::make_shared<bool>(false);
  o->grpc_port = serve::HaveGrpc() ? 8001 : -1;
  CLI::App* s = app.add_subcommand("serve", "Serve model store versions over the KServe v2 / Triton inference protocol "
                                            "(HTTP and gRPC), swapping in new versions as they are published");
  s->add_option("--store", o->repository.store_root, "The model store root (default: $TESSERA_STORE)");
  s->add_option("--model", *models,
                "A model and its version policy, repeatable: NAME (newest version), NAME@latest:N (the N newest), "
                "NAME@3 or NAME@1,3 (those versions), NAME@ALIAS (the version an alias names, followed as it moves). "
                "Default: every model in the store, newest version");
  s->add_option("--host", o->http.host, "The address to listen on")->capture_default_str();
  s->add_option("--http-port", o->http.port, "HTTP port (0: any free port; see --port-file)")->capture_default_str();
  s->add_option("--grpc-port", o->grpc_port, "gRPC port (0: any free port, -1: no gRPC)")->capture_default_str();
  s->add_option("--port-file", o->port_file, "Write {\"http\": PORT, \"grpc\": PORT, \"pid\": PID} here once listening");
  s->add_option("--max-batch-size", o->repository.batching.max_batch_size,
                "Most examples in one forward pass; also the largest batch one request may send")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  s->add_option("--max-queue-delay-us", o->repository.batching.max_queue_delay_us,
                "How long a batch's first request waits for others to join it")
      ->check(CLI::Range(0, 1000000))->capture_default_str();
  s->add_flag("--no-batching", *no_batching, "Run every request alone, as it arrives");
  s->add_option("--workers", o->repository.batching.workers, "Inference workers per version (batches run at once)")
      ->check(CLI::Range(1, 64))->capture_default_str();
  s->add_option("--threads", *threads, "Intra-op threads of the forward pass (default: $TESSERA_NUM_THREADS or 1)")
      ->check(CLI::Range(1, 256));
  auto device = std::make_shared<std::string>("cpu");
  s->add_option("--device", *device, "Where the forward pass runs: cpu, or cuda / cuda:N (a build with CUDA, on a "
                                     "machine with a GPU)")
      ->capture_default_str();
  s->add_option("--max-queue", o->repository.batching.max_queue,
                "Requests waiting per version before the server answers 503 with Retry-After")
      ->check(CLI::Range(1, 1000000))->capture_default_str();
  s->add_option("--max-body-bytes", o->http.max_body_bytes, "Largest request body (HTTP) or message (gRPC); more: 413")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 31))->capture_default_str();
  s->add_option("--http-threads", o->http.threads, "HTTP connections served at once")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  s->add_option("--auth-token-file", o->auth_token_file,
                "Require 'Authorization: Bearer TOKEN' (TOKEN: this file's contents) on all but /v2/health/* and "
                "/metrics");
  s->add_option("--poll-interval", o->repository.poll_interval_s, "Seconds between looks at the store")
      ->check(CLI::Range(0.05, 3600.0))->capture_default_str();
  s->footer(
      "Examples:\n"
      "  tessera serve --store models --model fmnist-cnn@production\n"
      "  curl localhost:8000/v2/models/fmnist-cnn\n"
      "  curl -X POST localhost:8000/v2/models/fmnist-cnn/infer -H 'Content-Type: application/json' -d @request.json\n"
      "The API, version policies, swaps, metrics and limits: docs/serving.md");
  return {{s, [o, models, threads, no_batching, device] {
             if (*device != "cpu") {
               std::string why;
               const bool cuda = device->rfind("cuda", 0) == 0;
               const std::string index = cuda && device->size() > 5 && (*device)[4] == ':' ? device->substr(5) : "0";
               if (!cuda || (device->size() > 4 && (*device)[4] != ':') || index.empty() ||
                   index.find_first_not_of("0123456789") != std::string::npos || index.size() > 3)
                 TESSERA_THROW(ConfigError, "--device '", *device, "': expected cpu, cuda or cuda:N");
               if (!CudaAvailable(&why)) TESSERA_THROW(ConfigError, "--device ", *device, ": no GPU here (", why, ")");
               const int n = std::stoi(index);
               if (n >= CudaDeviceCount())
                 TESSERA_THROW(ConfigError, "--device ", *device, ": this machine has ", CudaDeviceCount(), " GPUs");
               o->repository.batching.device = Device::CUDA(n);
             }
             if (o->repository.store_root.empty()) {
               const char* env = std::getenv("TESSERA_STORE");
               if (!env) TESSERA_THROW(ConfigError, "which model store? Give --store ROOT or set TESSERA_STORE");
               o->repository.store_root = env;
             }
             for (const std::string& m : *models) {
               serve::ModelPolicy p = serve::ParseModelPolicy(m);
               for (const serve::ModelPolicy& q : o->repository.models)
                 if (q.model == p.model)
                   TESSERA_THROW(ConfigError, "--model names ", p.model, " twice; give one policy per model (",
                                 p.model, "@1,3 serves two versions)");
               o->repository.models.push_back(p);
             }
             if (*threads > 0) SetNumThreads(*threads);
             o->repository.batching.batching = !*no_batching;
             return serve::RunServer(*o);
           }}};
}

}  // namespace tessera::launch
