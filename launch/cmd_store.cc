// tessera store list | show | publish | alias | rollback | gc | verify | export-onnx | quantize
// (docs/model-store.md).
// Tables for people, --json for scripts; the store root comes from a store:// reference, --store
// or $TESSERA_STORE, in that order.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/io/weights.h"
#include "core/model_spec.h"
#include "jobs/checkpoint.h"
#include "jobs/publish.h"
#include "jobs/quantize.h"
#include "jobs/spec.h"
#include "launch/commands.h"
#include "store/onnx/export.h"
#include "store/store.h"

namespace tessera::launch {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct StoreArgs {
  std::string root, ref, alias, path, model;
  int keep = 0;
  int64_t samples = 1000;
  bool json = false, dry_run = false;
};

// The version reference of the command line, with its store root decided.
store::VersionRef Ref(const StoreArgs& a, const std::string& text) {
  store::VersionRef r = store::ParseVersionRef(text);
  if (r.root.empty()) r.root = a.root;
  if (r.root.empty() && std::getenv("TESSERA_STORE")) r.root = std::getenv("TESSERA_STORE");
  if (r.root.empty())
    TESSERA_THROW(ConfigError,
                  "which model store? Give --store ROOT, set TESSERA_STORE, or write store://ROOT/", r.model);
  return r;
}

std::string Root(const StoreArgs& a) {
  if (!a.root.empty()) return a.root;
  if (const char* env = std::getenv("TESSERA_STORE")) return env;
  TESSERA_THROW(ConfigError, "which model store? Give --store ROOT or set TESSERA_STORE");
}

json ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok()) return json::object();
  return json::parse(out);
}

std::string Join(const std::vector<std::string>& v, const char* sep = ",") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s.empty() ? "-" : s;
}

std::string Metric(const store::VersionManifest& m, const char* name) {
  auto it = m.metrics().find(name);
  if (it == m.metrics().end()) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", it->second);
  return buf;
}

// A version for --json: its manifest (without the long job spec), number, directory and aliases.
json VersionJson(const store::VersionInfo& info) {
  json j = ToJson(info.manifest);
  j["version"] = info.version;
  j["dir"] = info.dir;
  j["aliases"] = info.aliases;
  if (j.contains("lineage") && j["lineage"].is_object()) j["lineage"].erase("job_spec");
  return j;
}

int64_t Bytes(const store::VersionManifest& m) {
  int64_t b = 0;
  for (const auto& f : m.files()) b += f.bytes();
  return b;
}

int List(const StoreArgs& a) {
  store::Store st(Root(a));
  if (a.model.empty()) {
    json out = json::array();
    if (!a.json) std::printf("%-32s %8s %7s  %s\n", "MODEL", "VERSIONS", "LATEST", "ALIASES");
    for (const std::string& m : st.Models()) {
      std::vector<int64_t> v = st.Versions(m);
      std::vector<std::string> aliases;
      for (const auto& [name, version] : st.Aliases(m))
        aliases.push_back(name + "=" + std::to_string(version));
      if (a.json)
        out.push_back({{"model", m}, {"versions", v}, {"aliases", st.Aliases(m)}});
      else
        std::printf("%-32s %8zu %7s  %s\n", m.c_str(), v.size(),
                    v.empty() ? "-" : std::to_string(v.back()).c_str(), Join(aliases).c_str());
    }
    if (a.json) std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  store::ValidateModelName(a.model);
  json out = json::array();
  if (!a.json)
    std::printf("%7s  %-20s %8s %9s %12s  %s\n", "VERSION", "CREATED", "STEP", "TEST_ACC", "BYTES",
                "ALIASES");
  for (const store::VersionInfo& info : st.DescribeAll(a.model)) {
    const store::VersionManifest& m = info.manifest;
    if (a.json) {
      out.push_back(VersionJson(info));
    } else {
      std::printf("%7lld  %-20s %8lld %9s %12lld  %s\n", static_cast<long long>(info.version),
                  m.created().c_str(), static_cast<long long>(m.lineage().step()),
                  Metric(m, "test_accuracy").c_str(), static_cast<long long>(Bytes(m)),
                  Join(info.aliases).c_str());
    }
  }
  if (a.json) std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

int Show(const StoreArgs& a) {
  store::VersionRef r = Ref(a, a.ref);
  store::Store st(r.root);
  const int64_t v = st.Resolve(r.model, r.ref);
  store::VersionInfo info = st.Describe(r.model, v);
  store::Architecture arch = st.ReadArchitecture(r.model, v);
  const store::VersionManifest& m = info.manifest;
  if (a.json) {
    json j = VersionJson(info);
    j["lineage"]["job_spec"] = m.lineage().job_spec();  // show: the whole of it
    j["architecture"] = ToJson(arch);
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  const store::Lineage& l = m.lineage();
  std::printf("%s version %lld (%s)\n", r.model.c_str(), static_cast<long long>(v), info.dir.c_str());
  std::printf("  aliases:   %s\n", Join(info.aliases, ", ").c_str());
  std::printf("  created:   %s by tessera %s (%s@%s)\n", m.created().c_str(), m.tessera_version().c_str(),
              l.user().c_str(), l.host().c_str());
  std::printf("  model:     %s%s; input %s %s, %d classes\n", models::DescribeModel(arch.model()).c_str(),
              arch.quantization() == store::INT8 ? " (int8)" : "", arch.input_dtype().c_str(),
              ShapeString(Shape(arch.input_shape().begin(), arch.input_shape().end())).c_str(),
              arch.classes());
  std::printf("  metrics:  ");
  std::map<std::string, double> sorted(m.metrics().begin(), m.metrics().end());
  for (const auto& [name, value] : sorted) std::printf(" %s %.4f", name.c_str(), value);
  std::printf("\n  lineage:   job '%s' at step %lld, world size %d, commit %s\n", l.job_name().c_str(),
              static_cast<long long>(l.step()), l.world_size(), l.source_commit().c_str());
  if (!l.derivation().empty()) std::printf("             %s\n", l.derivation().c_str());
  if (l.has_parent())
    std::printf("             %s %s version %lld (%s)\n",
                l.derivation().empty() ? "fine-tuned from" : "made from", l.parent().model().c_str(),
                static_cast<long long>(l.parent().version()), l.parent().reference().c_str());
  if (!l.parent_checkpoint().empty())
    std::printf("             fine-tuned from checkpoint %s\n", l.parent_checkpoint().c_str());
  if (l.has_slurm())
    std::printf("             Slurm job %s%s%s, restart %d\n", l.slurm().job_id().c_str(),
                l.slurm().array_task_id().empty() ? "" : " task ", l.slurm().array_task_id().c_str(),
                l.slurm().restart_count());
  if (!l.checkpoint().empty()) std::printf("             checkpoint %s\n", l.checkpoint().c_str());
  for (const auto& d : l.datasets())
    std::printf("             data %s (sha256 %s)\n", d.name().c_str(), d.sha256().substr(0, 16).c_str());
  std::printf("  files:\n");
  for (const auto& f : m.files())
    std::printf("    %-14s %12lld bytes  sha256 %s\n", f.name().c_str(), static_cast<long long>(f.bytes()),
                f.sha256().c_str());
  return 0;
}

// The run directory a checkpoint path lies in (RUN/checkpoints/step-N/checkpoint.h5), or "".
std::string RunDirOf(const std::string& given, const std::string& file) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(given) / "summary.json", ec)) return given;
  fs::path p = fs::absolute(file, ec).lexically_normal();
  for (int up = 0; up < 4 && p.has_parent_path(); ++up) {
    p = p.parent_path();
    if (fs::is_regular_file(p / "summary.json", ec)) return p.string();
  }
  return "";
}

int Publish(const StoreArgs& a) {
  const std::string path = jobs::ResolveCheckpoint(a.path);
  jobs::CheckpointInfo info = jobs::ReadCheckpointInfo(path);
  jobs::JobSpec spec = jobs::ParseJobSpec(info.meta.job_spec, path + " @job_spec");
  // The tensors, checked against their CRCs on the way in.
  std::vector<std::unique_ptr<char[]>> buffers;
  store::PublishRequest req;
  io::ReadWeights(
      path,
      [&](const io::TensorRecord& t) -> void* {
        buffers.push_back(std::make_unique<char[]>(static_cast<size_t>(t.bytes)));
        req.weights.push_back({t.path.substr(7), t.shape, t.dtype, buffers.back().get()});
        return buffers.back().get();
      },
      io::WeightsReadOptions{true, true});  // the user's own checkpoint, of any format this build reads
  req.model = a.model.empty() ? spec.name() : a.model;
  req.alias = a.alias;
  req.architecture = jobs::ArchitectureOf(spec);
  req.weights_meta.step = info.meta.step;
  req.weights_meta.job_spec = info.meta.job_spec;
  req.weights_meta.dtype = info.meta.dtype;
  req.weights_meta.source = fs::absolute(path).lexically_normal().string();
  // The run's final evaluation, when the run directory's summary is of this very step.
  const std::string run_dir = RunDirOf(a.path, path);
  if (!run_dir.empty()) {
    std::ifstream in(run_dir + "/summary.json");
    json s = json::parse(in, nullptr, false);
    if (!s.is_discarded() && s.value("steps", int64_t{-1}) == info.meta.step)
      for (const char* k :
           {"test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1", "test_perplexity"})
        if (s.contains(k) && s[k].is_number()) req.metrics[k] = s[k].get<double>();
  }
  // The parent as the run resolved it when it started (RUN_DIR/init_from.json).
  std::unique_ptr<jobs::InitSource> init = run_dir.empty() ? nullptr : jobs::ReadInitRecord(run_dir);
  if (!init && !spec.train().init_from().empty())
    std::fprintf(stderr,
                 "tessera: warning: lineage: the job started from %s, but no run directory records what it "
                 "resolved to; the version names no parent\n",
                 spec.train().init_from().c_str());
  req.lineage = jobs::LineageOf(spec, info.meta.step, info.kind == "checkpoint" ? info.meta.world_size : 1,
                                run_dir, info.kind == "checkpoint" ? path : "", init.get());
  store::Store st(Root(a));
  store::PublishResult r = st.Publish(req);
  if (a.json) {
    std::printf("%s\n", json({{"model", req.model},
                              {"version", r.version},
                              {"dir", r.dir},
                              {"bytes", r.bytes},
                              {"alias", a.alias}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("published %s version %lld: %s (%.1f MB, from %s)%s%s\n", req.model.c_str(),
                static_cast<long long>(r.version), r.dir.c_str(), r.bytes / 1e6, path.c_str(),
                a.alias.empty() ? "" : "; alias ", a.alias.c_str());
  }
  return 0;
}

int SetAlias(const StoreArgs& a) {
  store::VersionRef r = Ref(a, a.ref);
  if (!r.explicit_ref)
    TESSERA_THROW(ConfigError, "store alias ", a.ref, " ", a.alias, ": name the version, e.g. ", r.model,
                  "@3 or ", r.model, "@staging");
  store::Store st(r.root);
  store::AliasChange c = st.SetAlias(r.model, a.alias, st.Resolve(r.model, r.ref));
  if (c.from == 0)
    std::printf("%s@%s -> version %lld (new alias)\n", r.model.c_str(), a.alias.c_str(),
                static_cast<long long>(c.to));
  else
    std::printf("%s@%s: version %lld -> %lld\n", r.model.c_str(), a.alias.c_str(),
                static_cast<long long>(c.from), static_cast<long long>(c.to));
  return 0;
}

int Rollback(const StoreArgs& a) {
  store::VersionRef r = Ref(a, a.ref);
  std::string alias = a.alias.empty() && r.explicit_ref ? r.ref : a.alias;
  if (alias.empty()) TESSERA_THROW(ConfigError, "store rollback: name the alias: ", r.model, "@production");
  store::Store st(r.root);
  store::AliasChange c = st.Rollback(r.model, alias);
  std::printf("%s@%s rolled back: version %lld -> %lld\n", r.model.c_str(), alias.c_str(),
              static_cast<long long>(c.from), static_cast<long long>(c.to));
  return 0;
}

int Gc(const StoreArgs& a) {
  store::VersionRef r = Ref(a, a.ref);
  if (r.explicit_ref) TESSERA_THROW(ConfigError, "store gc ", a.ref, ": gc takes a model, not a version");
  store::Store st(r.root);
  store::GcResult g = st.Gc(r.model, a.keep, a.dry_run);
  auto list = [](const std::vector<int64_t>& v) {
    std::vector<std::string> s;
    for (int64_t x : v) s.push_back(std::to_string(x));
    return Join(s, ", ");
  };
  if (a.json) {
    std::printf("%s\n",
                json({{"deleted", g.deleted}, {"kept", g.kept}, {"dry_run", a.dry_run}}).dump(2).c_str());
    return 0;
  }
  std::printf("%s: %s %s; kept %s%s\n", r.model.c_str(), a.dry_run ? "would delete" : "deleted",
              list(g.deleted).c_str(), list(g.kept).c_str(),
              g.stale_staging_removed
                  ? detail::StrCat("; removed ", g.stale_staging_removed, " stale staging").c_str()
                  : "");
  return 0;
}

int Verify(const StoreArgs& a) {
  store::VersionRef r = Ref(a, a.ref);
  store::Store st(r.root);
  std::vector<int64_t> versions =
      r.explicit_ref ? std::vector<int64_t>{st.Resolve(r.model, r.ref)} : st.Versions(r.model);
  if (versions.empty())
    TESSERA_THROW(store::NotFoundError, "model '", r.model, "' in ", r.root, ": no published version");
  int bad = 0;
  for (int64_t v : versions) {
    std::vector<std::string> problems = st.Verify(r.model, v);
    for (const std::string& p : problems) std::fprintf(stderr, "tessera: %s\n", p.c_str());
    if (problems.empty()) {
      std::printf("%s version %lld: OK (every file's sha256 and every tensor's CRC-32 match)\n",
                  r.model.c_str(), static_cast<long long>(v));
    } else {
      ++bad;
      std::fprintf(stderr, "tessera: %s version %lld: FAILED verification (%zu problem%s)\n", r.model.c_str(),
                   static_cast<long long>(v), problems.size(), problems.size() == 1 ? "" : "s");
    }
  }
  return bad ? 1 : 0;
}

int ExportOnnx(const StoreArgs& a) {
  const store::VersionRef r = Ref(a, a.ref);
  store::Store st(r.root);
  const int64_t v = st.Resolve(r.model, r.ref);
  const store::OnnxExportResult e = store::ExportOnnx(st, r.model, v, a.path);
  std::vector<int64_t> input{-1};
  input.insert(input.end(), e.input_shape.begin(), e.input_shape.end());
  if (a.json) {
    std::printf("%s\n", json({{"model", r.model},
                              {"version", v},
                              {"path", e.path},
                              {"bytes", e.bytes},
                              {"nodes", e.nodes},
                              {"parameters", e.parameters},
                              {"input", input},
                              {"input_type", e.input_type},
                              {"outputs", e.output_shape},
                              {"classes", e.classes}})
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf(
      "exported %s version %lld to %s: %lld bytes, %d nodes, %lld parameters; input 'input' %s %s, "
      "outputs 'logits' and 'probabilities' FLOAT %s (ONNX opset 17)\n",
      r.model.c_str(), static_cast<long long>(v), e.path.c_str(), static_cast<long long>(e.bytes), e.nodes,
      static_cast<long long>(e.parameters), e.input_type.c_str(), ShapeString(input).c_str(),
      ShapeString(e.output_shape).c_str());
  return 0;
}

std::string Percent(const std::map<std::string, double>& m, const char* key) {
  auto it = m.find(key);
  if (it == m.end()) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100 * it->second);
  return buf;
}

int Quantize(const StoreArgs& a) {
  const store::VersionRef r = Ref(a, a.ref);
  store::Store st(r.root);
  const int64_t v = st.Resolve(r.model, r.ref);
  jobs::QuantizeOptions o;
  o.samples = a.samples;
  o.alias = a.alias;
  const jobs::QuantizeResult q = jobs::QuantizeVersion(st, r.model, v, o);
  if (a.json) {
    std::printf("%s\n", json({{"model", r.model},
                              {"parent", v},
                              {"version", q.published.version},
                              {"dir", q.published.dir},
                              {"layers", q.layers},
                              {"calibration_examples", q.calibration_examples},
                              {"parent_weights_bytes", q.parent_weights_bytes},
                              {"weights_bytes", q.weights_bytes},
                              {"parent_metrics", q.parent_metrics},
                              {"metrics", q.metrics}})
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf(
      "published %s version %lld: int8 of version %lld (%d layers, calibrated on %lld training examples)\n",
      r.model.c_str(), static_cast<long long>(q.published.version), static_cast<long long>(v), q.layers,
      static_cast<long long>(q.calibration_examples));
  std::printf(
      "  weights.h5   %lld bytes, %.2f of the f32 version's %lld\n", static_cast<long long>(q.weights_bytes),
      q.parent_weights_bytes > 0 ? static_cast<double>(q.weights_bytes) / q.parent_weights_bytes : 0.0,
      static_cast<long long>(q.parent_weights_bytes));
  if (!q.metrics.empty())
    std::printf("  test accuracy %s (f32: %s)\n", Percent(q.metrics, "test_accuracy").c_str(),
                Percent(q.parent_metrics, "test_accuracy").c_str());
  else
    std::printf("  not evaluated: the job spec names no test split\n");
  if (!a.alias.empty())
    std::printf("  %s@%s -> %lld\n", r.model.c_str(), a.alias.c_str(),
                static_cast<long long>(q.published.version));
  return 0;
}

}  // namespace

std::vector<Command> AddStoreCommands(CLI::App& app) {
  auto a = std::make_shared<StoreArgs>();
  CLI::App* s = app.add_subcommand(
      "store", "The model store: numbered, immutable versions, aliases (docs/model-store.md)");
  s->require_subcommand(1);
  s->footer(
      "A version is named MODEL (latest), MODEL@3, MODEL@ALIAS, or store://ROOT/MODEL@... with its root.\n"
      "The root: the store:// reference, --store, or $TESSERA_STORE.");
  auto root = [&](CLI::App* c) {
    c->add_option("--store", a->root, "The store's root directory (default: $TESSERA_STORE)");
  };
  auto as_json = [&](CLI::App* c) { c->add_flag("--json", a->json, "Print JSON instead of a table"); };
  const char* ref_help = "MODEL, MODEL@VERSION, MODEL@ALIAS or store://ROOT/MODEL@...";

  CLI::App* list = s->add_subcommand("list", "List the models, or the versions of one model");
  list->add_option("model", a->model, "A model (default: list every model)");
  root(list);
  as_json(list);
  CLI::App* show = s->add_subcommand("show", "Show a version: metrics, lineage, architecture, files");
  show->add_option("ref", a->ref, ref_help)->required();
  root(show);
  as_json(show);
  CLI::App* publish = s->add_subcommand("publish", "Publish a checkpoint's model as the next version");
  publish
      ->add_option("path", a->path,
                   "A checkpoint file, step directory, run directory, or an exported model file")
      ->required();
  publish->add_option("--model", a->model, "The model's name in the store (default: the job's name)");
  publish->add_option("--alias", a->alias, "Point this alias at the new version");
  root(publish);
  as_json(publish);
  CLI::App* alias = s->add_subcommand("alias", "Point an alias at a version: store alias MODEL@3 production");
  alias->add_option("ref", a->ref, "The version: MODEL@3, MODEL@staging, ...")->required();
  alias->add_option("alias", a->alias, "The alias to move (any name but 'latest')")->required();
  root(alias);
  CLI::App* rollback = s->add_subcommand("rollback", "Move an alias back to the version it named before");
  rollback->add_option("ref", a->ref, "MODEL@ALIAS (or MODEL, with the alias as a second argument)")
      ->required();
  rollback->add_option("alias", a->alias, "The alias, when not given as MODEL@ALIAS");
  root(rollback);
  CLI::App* gc =
      s->add_subcommand("gc", "Delete old versions: all but the newest --keep, never an aliased one");
  gc->add_option("model", a->ref, "The model")->required();
  gc->add_option("--keep", a->keep, "How many of the newest versions to keep (>= 1)")->required();
  gc->add_flag("--dry-run", a->dry_run, "Say what would be deleted, delete nothing");
  root(gc);
  as_json(gc);
  CLI::App* verify =
      s->add_subcommand("verify", "Check every file's sha256 and every tensor's CRC-32; exit 1 on a problem");
  verify->add_option("ref", a->ref, "MODEL (every version) or one version: MODEL@3, MODEL@ALIAS")->required();
  root(verify);
  CLI::App* onnx = s->add_subcommand(
      "export-onnx",
      "Write a version as an ONNX model (opset 17) for onnxruntime and other "
      "ONNX runtimes: input 'input', outputs 'logits' and 'probabilities' (docs/model-store.md)");
  onnx->add_option("ref", a->ref, ref_help)->required();
  onnx->add_option("output", a->path, "The .onnx file to write (replaced atomically)")->required();
  root(onnx);
  as_json(onnx);
  CLI::App* quantize = s->add_subcommand("quantize",
                                         "Publish an int8 copy of a version for serving: per-channel int8 "
                                         "weights, inputs calibrated on training data (docs/model-store.md)");
  quantize->add_option("ref", a->ref, ref_help)->required();
  quantize->add_option("--samples", a->samples, "Training examples to calibrate each layer's input scale on")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  quantize->add_option("--alias", a->alias, "Point this alias at the new version");
  root(quantize);
  as_json(quantize);
  return {{list, [a] { return List(*a); }},         {show, [a] { return Show(*a); }},
          {publish, [a] { return Publish(*a); }},   {alias, [a] { return SetAlias(*a); }},
          {rollback, [a] { return Rollback(*a); }}, {gc, [a] { return Gc(*a); }},
          {verify, [a] { return Verify(*a); }},     {onnx, [a] { return ExportOnnx(*a); }},
          {quantize, [a] { return Quantize(*a); }}};
}

}  // namespace tessera::launch
