#include "serve/grpc_server.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "serve/grpc_service.grpc.pb.h"
#include "serve/http_server.h"
#include "serve/inference.h"

namespace tessera::serve {
namespace {

using Clock = std::chrono::steady_clock;
namespace pb = ::inference;

grpc::Status ToStatus(const RequestError& e) {
  grpc::StatusCode code = grpc::StatusCode::INVALID_ARGUMENT;
  switch (e.status()) {
    case 401: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case 404: code = grpc::StatusCode::NOT_FOUND; break;
    case 413: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case 429:
    case 503: code = grpc::StatusCode::UNAVAILABLE; break;
    default: code = e.status() >= 500 ? grpc::StatusCode::INTERNAL : grpc::StatusCode::INVALID_ARGUMENT;
  }
  return grpc::Status(code, e.what());
}

int HttpStatusOf(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK: return 200;
    case grpc::StatusCode::UNAUTHENTICATED: return 401;
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 413;
    case grpc::StatusCode::UNAVAILABLE: return 503;
    case grpc::StatusCode::INTERNAL: return 500;
    default: return 400;
  }
}

int64_t IntParam(const pb::InferParameter& p, const std::string& where) {
  if (p.has_int64_param()) return p.int64_param();
  if (p.has_uint64_param() && p.uint64_param() < (uint64_t{1} << 62)) return static_cast<int64_t>(p.uint64_param());
  if (p.has_bool_param()) return p.bool_param();
  throw RequestError(400, where + ": must be an integer parameter");
}

template <typename T>
std::vector<float> FromContents(const std::string& where, const google::protobuf::RepeatedField<T>& values,
                                int64_t count, bool integral) {
  if (values.size() != count)
    throw RequestError(400, detail::StrCat(where, ": ", values.size(), " values for ", count, " elements"));
  std::vector<float> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const T v = values[static_cast<int>(i)];
    const float f = static_cast<float>(v);
    if (!std::isfinite(f) || (integral && static_cast<T>(f) != v))
      throw RequestError(400, detail::StrCat(where, ": element ", i, " is not exactly a finite 32-bit float"));
    out[static_cast<size_t>(i)] = f;
  }
  return out;
}

InputTensor DecodeInput(const pb::ModelInferRequest& r, int i) {
  const pb::ModelInferRequest::InferInputTensor& t = r.inputs(i);
  const std::string where = detail::StrCat("inputs[", i, "] ('", t.name(), "')");
  InputTensor in;
  in.name = t.name();
  in.datatype = t.datatype();
  in.shape.assign(t.shape().begin(), t.shape().end());
  const int64_t count = CheckedElementCount(where + ".shape", in.shape, int64_t{64} << 20);
  if (r.raw_input_contents_size() > 0) {
    if (r.raw_input_contents_size() != r.inputs_size())
      throw RequestError(400, detail::StrCat("raw_input_contents has ", r.raw_input_contents_size(), " entries for ",
                                             r.inputs_size(), " inputs"));
    const std::string& raw = r.raw_input_contents(i);
    in.values = DecodeRaw(where, in.datatype, raw.data(), raw.size(), count);
    return in;
  }
  const pb::InferTensorContents& c = t.contents();
  const std::string& d = in.datatype;
  if (d == "UINT8" || d == "UINT16" || d == "UINT32") in.values = FromContents(where, c.uint_contents(), count, true);
  else if (d == "INT8" || d == "INT16" || d == "INT32") in.values = FromContents(where, c.int_contents(), count, true);
  else if (d == "INT64") in.values = FromContents(where, c.int64_contents(), count, true);
  else if (d == "UINT64") in.values = FromContents(where, c.uint64_contents(), count, true);
  else if (d == "FP32") in.values = FromContents(where, c.fp32_contents(), count, false);
  else if (d == "FP64") in.values = FromContents(where, c.fp64_contents(), count, false);
  else throw RequestError(400, where + ": datatype '" + d + "' is not a numeric type tessera takes (UINT8, FP32, ...)");
  return in;
}

InferRequest Decode(const pb::ModelInferRequest& r) {
  InferRequest out;
  out.id = r.id();
  out.model = r.model_name();
  out.version = r.model_version();
  auto top_k = r.parameters().find("top_k");
  if (top_k != r.parameters().end()) {
    const int64_t k = IntParam(top_k->second, "parameters.top_k");
    if (k < 1 || k > 1000) throw RequestError(400, detail::StrCat("parameters.top_k must be from 1 to 1000, got ", k));
    out.top_k = static_cast<int>(k);
  }
  if (r.inputs_size() > 16) throw RequestError(400, detail::StrCat(r.inputs_size(), " inputs; the models served take one"));
  for (int i = 0; i < r.inputs_size(); ++i) out.inputs.push_back(DecodeInput(r, i));
  for (int i = 0; i < r.outputs_size(); ++i) {
    RequestedOutput o;
    o.name = r.outputs(i).name();
    auto c = r.outputs(i).parameters().find("classification");
    if (c != r.outputs(i).parameters().end()) {
      const int64_t k = IntParam(c->second, detail::StrCat("outputs[", i, "].parameters.classification"));
      if (k < 1 || k > 1000) throw RequestError(400, detail::StrCat("outputs[", i, "].parameters.classification must be from 1 to 1000"));
      o.classification = static_cast<int>(k);
    }
    out.outputs.push_back(o);
  }
  return out;
}

void Encode(const InferResponse& r, pb::ModelInferResponse* out) {
  out->set_model_name(r.model);
  out->set_model_version(r.version);
  out->set_id(r.id);
  for (const OutputTensor& t : r.outputs) {
    pb::ModelInferResponse::InferOutputTensor* o = out->add_outputs();
    o->set_name(t.name);
    o->set_datatype(t.datatype);
    for (int64_t d : t.shape) o->add_shape(d);
    out->add_raw_output_contents(t.RawBytes());
  }
}

}  // namespace

class InferenceService final : public pb::GRPCInferenceService::Service {
 public:
  InferenceService(Repository& repository, ServerMetrics& metrics, std::string token, const std::atomic<bool>& draining)
      : repository_(repository), metrics_(metrics), token_(std::move(token)), draining_(draining) {}

  grpc::Status ServerLive(grpc::ServerContext*, const pb::ServerLiveRequest*, pb::ServerLiveResponse* out) override {
    out->set_live(true);
    return grpc::Status::OK;
  }
  grpc::Status ServerReady(grpc::ServerContext*, const pb::ServerReadyRequest*, pb::ServerReadyResponse* out) override {
    out->set_ready(!draining_ && repository_.Ready());
    return grpc::Status::OK;
  }
  grpc::Status ModelReady(grpc::ServerContext* ctx, const pb::ModelReadyRequest* r, pb::ModelReadyResponse* out) override {
    return Guarded(ctx, [&] {
      try {
        repository_.Get(r->name(), r->version());
        out->set_ready(true);
      } catch (const RequestError& e) {
        if (e.status() != 404) throw;
        out->set_ready(false);
      }
    });
  }
  grpc::Status ServerMetadata(grpc::ServerContext* ctx, const pb::ServerMetadataRequest*,
                              pb::ServerMetadataResponse* out) override {
    return Guarded(ctx, [&] {
      nlohmann::json j = ServerMetadataJson();
      out->set_name(j["name"].get<std::string>());
      out->set_version(j["version"].get<std::string>());
      for (const auto& e : j["extensions"]) out->add_extensions(e.get<std::string>());
    });
  }
  grpc::Status ModelMetadata(grpc::ServerContext* ctx, const pb::ModelMetadataRequest* r,
                             pb::ModelMetadataResponse* out) override {
    return Guarded(ctx, [&] {
      nlohmann::json j = ModelMetadataJson(repository_, r->name(), r->version());
      out->set_name(j["name"].get<std::string>());
      out->set_platform(j["platform"].get<std::string>());
      for (const auto& v : j["versions"]) out->add_versions(v.get<std::string>());
      for (const char* side : {"inputs", "outputs"})
        for (const auto& t : j[side]) {
          auto* m = side[0] == 'i' ? out->add_inputs() : out->add_outputs();
          m->set_name(t["name"].get<std::string>());
          m->set_datatype(t["datatype"].get<std::string>());
          for (const auto& d : t["shape"]) m->add_shape(d.get<int64_t>());
        }
    });
  }
  grpc::Status RepositoryIndex(grpc::ServerContext* ctx, const pb::RepositoryIndexRequest*,
                               pb::RepositoryIndexResponse* out) override {
    return Guarded(ctx, [&] {
      for (const Repository::ModelState& m : repository_.State()) {
        for (int64_t v : m.serving) {
          auto* e = out->add_models();
          e->set_name(m.model);
          e->set_version(std::to_string(v));
          e->set_state("READY");
        }
        for (const auto& [v, why] : m.failed) {
          auto* e = out->add_models();
          e->set_name(m.model);
          e->set_version(std::to_string(v));
          e->set_state("UNAVAILABLE");
          e->set_reason(why);
        }
      }
    });
  }
  grpc::Status ModelInfer(grpc::ServerContext* ctx, const pb::ModelInferRequest* r, pb::ModelInferResponse* out) override {
    const Clock::time_point start = Clock::now();
    metrics_.in_flight.Add({}, 1);
    std::string version;
    grpc::Status status = Guarded(ctx, [&] {
      Inference done = RunInference(repository_, Decode(*r));
      version = done.response.version;
      Encode(done.response, out);
    });
    const std::string label = repository_.Serves(r->model_name()) ? r->model_name() : "";
    const std::string code = std::to_string(HttpStatusOf(status));
    metrics_.requests.Add({label, version, "grpc", code});
    if (!status.ok()) metrics_.failures.Add({label, version, "grpc", code});
    metrics_.latency.Observe({label, "grpc"}, std::chrono::duration<double>(Clock::now() - start).count());
    metrics_.in_flight.Add({}, -1);
    return status;
  }

 private:
  // Checks the bearer token, runs fn, and turns its errors into gRPC status codes.
  template <typename Fn>
  grpc::Status Guarded(grpc::ServerContext* ctx, Fn&& fn) {
    try {
      if (!token_.empty()) {
        auto it = ctx->client_metadata().find("authorization");
        const std::string got = it == ctx->client_metadata().end() ? "" : std::string(it->second.data(), it->second.size());
        if (got.rfind("Bearer ", 0) != 0 || !SameToken(got.substr(7), token_)) throw RequestError(401, "this server wants metadata 'authorization: Bearer TOKEN'");
      }
      fn();
      return grpc::Status::OK;
    } catch (const RequestError& e) {
      return ToStatus(e);
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
    }
  }
  Repository& repository_;
  ServerMetrics& metrics_;
  std::string token_;
  const std::atomic<bool>& draining_;
};

struct GrpcServer::Impl {
  std::unique_ptr<InferenceService> service;
  std::unique_ptr<grpc::Server> server;
};

GrpcServer::GrpcServer(Repository& repository, ServerMetrics& metrics, const std::string& host, int port,
                       const std::string& auth_token, const std::atomic<bool>& draining, int64_t max_message_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->service = std::make_unique<InferenceService>(repository, metrics, auth_token, draining);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(host + ":" + std::to_string(port), grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(impl_->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || port_ <= 0)
    TESSERA_THROW(ConfigError, "cannot listen for gRPC on ", host, ":", port, " (in use, or not an address of this machine)");
}

GrpcServer::~GrpcServer() { Stop(); }

void GrpcServer::Stop() {
  if (!impl_->server) return;
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(30));
  impl_->server->Wait();
  impl_->server.reset();
}

bool HaveGrpc() { return true; }

}  // namespace tessera::serve
