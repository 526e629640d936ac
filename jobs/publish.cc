#include "jobs/publish.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "core/model_spec.h"
#include "core/version.h"
#include "jobs/build.h"
#include "jobs/checkpoint.h"
#include "jobs/spec.h"

namespace tessera::jobs {

namespace fs = std::filesystem;

store::Architecture ArchitectureOf(const JobSpec& spec, const Shape& example, int classes) {
  store::Architecture a;
  *a.mutable_model() = spec.model();
  for (int64_t d : example) a.add_input_shape(d);
  // IDX files hold bytes (Fashion-MNIST's pixels); CSV and HDF5 features are read as floats; token
  // files hold token ids.
  const DataSpec::Kind kind = spec.data().kind();
  a.set_input_dtype(kind == DataSpec::IDX ? "UINT8" : kind == DataSpec::TOKENS ? "INT32" : "FP32");
  *a.mutable_normalize() = spec.data().normalize();
  a.set_classes(classes);
  return a;
}

store::Architecture ArchitectureOf(const JobSpec& spec) {
  std::string why;
  const DataSpec& d = spec.data();
  if (!NamesSplit(d, true)) {  // e.g. weights written outside tessera
    why = "the job spec names no training data";
  } else {
    try {
      std::unique_ptr<datasets::Dataset> train = OpenSplit(d, true);
      return ArchitectureOf(spec, train->example_shape(), train->num_classes());
    } catch (const Error& e) {
      why = std::string("cannot open the job's training data (") + e.what() + ")";
    }
  }
  std::fprintf(stderr, "tessera: warning: %s; the published input shape is the one the model spec implies\n",
               why.c_str());
  Shape example = models::ImpliedExampleShape(spec.model());
  if (spec.model().has_gpt() && spec.data().sequence_length() > 0) example = {spec.data().sequence_length()};
  return ArchitectureOf(spec, example, static_cast<int>(models::OutFeatures(spec.model())));
}

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

std::vector<store::FileDigest> DatasetDigests(const JobSpec& spec, const std::atomic<bool>* cancel) {
  std::vector<store::FileDigest> out;
  const DataSpec& d = spec.data();
  for (const std::string& path : {d.train_images(), d.train_labels(), d.test_images(), d.test_labels(),
                                  d.train_path(), d.test_path()}) {
    if (path.empty()) continue;
    store::FileDigest f;
    f.set_name(fs::absolute(path).lexically_normal().string());
    try {
      int64_t bytes = 0;
      f.set_sha256(io::Sha256File(path, &bytes, cancel));
      f.set_bytes(bytes);
    } catch (const Error& e) {
      if (cancel && cancel->load()) break;
      std::fprintf(stderr, "tessera: warning: lineage: no checksum for the dataset file: %s\n", e.what());
    }
    out.push_back(f);
  }
  return out;
}

store::Lineage LineageOf(const JobSpec& spec, int64_t step, int world_size, const std::string& run_dir,
                         const std::string& checkpoint, const InitSource* init,
                         const std::vector<store::FileDigest>* datasets) {
  store::Lineage l;
  l.set_job_name(spec.name());
  l.set_job_spec(ToText(spec));
  l.set_source_commit(SourceCommit());
  for (const store::FileDigest& f : datasets ? *datasets : DatasetDigests(spec)) *l.add_datasets() = f;
  if (!Env("SLURM_JOB_ID").empty()) {
    store::SlurmJob* s = l.mutable_slurm();
    s->set_job_id(Env("SLURM_JOB_ID"));
    if (!Env("SLURM_ARRAY_JOB_ID").empty()) s->set_array_job_id(Env("SLURM_ARRAY_JOB_ID"));
    if (!Env("SLURM_ARRAY_TASK_ID").empty()) s->set_array_task_id(Env("SLURM_ARRAY_TASK_ID"));
    s->set_restart_count(std::atoi(Env("SLURM_RESTART_COUNT").c_str()));
  }
  l.set_world_size(world_size);
  l.set_data_parallel(spec.parallel().data() > 0 ? spec.parallel().data() : world_size);
  l.set_zero_stage(l.data_parallel() > 1 ? spec.parallel().zero_stage()
                                         : 0);  // the stage in effect: none on one rank
  l.set_tensor_parallel(spec.parallel().tensor());
  l.set_pipeline_parallel(spec.parallel().pipeline());
  l.set_step(step);
  if (!checkpoint.empty()) l.set_checkpoint(fs::absolute(checkpoint).lexically_normal().string());
  if (!run_dir.empty()) l.set_run_dir(fs::absolute(run_dir).lexically_normal().string());
  l.set_host(io::HostName());
  l.set_user(io::UserName());
  if (init) {
    if (init->from_store)
      *l.mutable_parent() = init->parent;
    else
      l.set_parent_checkpoint(fs::absolute(init->weights_path).lexically_normal().string());
  }
  return l;
}

InitSource ResolveInitFrom(const std::string& reference) {
  InitSource s;
  s.reference = reference;
  if (reference.rfind("store://", 0) != 0) {
    s.weights_path = ResolveCheckpoint(reference);
    return s;
  }
  store::VersionRef ref = store::ParseVersionRef(reference);
  store::Store st(ref.root);
  const int64_t version = st.Resolve(ref.model, ref.ref);
  store::VersionManifest m = st.ReadManifest(ref.model, version);
  s.from_store = true;
  s.weights_path = (fs::path(st.VersionDir(ref.model, version)) / "weights.h5").string();
  s.parent.set_store(fs::absolute(ref.root).lexically_normal().string());
  s.parent.set_model(ref.model);
  s.parent.set_version(version);
  s.parent.set_reference(reference);
  for (const store::FileDigest& f : m.files())
    if (f.name() == "weights.h5") s.parent.set_weights_sha256(f.sha256());
  return s;
}

std::vector<std::string> InitFromWeights(const InitSource& source, nn::FlatParameters& params) {
  if (params.values().dtype() != DType::kF32 && params.values().dtype() != DType::kF64)
    TESSERA_THROW(ValueError, "train.init_from: parameters of dtype ", DTypeName(params.values().dtype()),
                  " cannot be loaded");
  std::map<std::string, const nn::FlatParameters::Entry*> by_name;
  for (const auto& e : params.entries()) by_name["/model/" + e.name] = &e;
  std::map<std::string, std::string> outcome;  // parameter -> what happened
  std::vector<Tensor> staged;                  // read in the file's dtype, converted below
  std::vector<const nn::FlatParameters::Entry*> targets;
  io::ReadWeights(
      source.weights_path,
      [&](const io::TensorRecord& t) -> void* {
        auto it = by_name.find(t.path);
        if (it == by_name.end()) return nullptr;
        const nn::FlatParameters::Entry& e = *it->second;
        if (t.dtype == DType::kI8)
          TESSERA_THROW(ConfigError, "train.init_from: ", source.reference, ": ", t.path,
                        " is int8 (a quantised version, "
                        "for serving): fine-tune the f32 version it was made from, which its lineage names");
        if (t.shape != e.param->shape) {
          outcome[e.name] =
              detail::StrCat("re-initialised (", source.reference, " has shape ", ShapeString(t.shape),
                             ", the model ", ShapeString(e.param->shape), ")");
          return nullptr;
        }
        staged.push_back(Tensor::Empty({e.numel}, t.dtype));
        targets.push_back(&e);
        outcome[e.name] = detail::StrCat("loaded from ", source.reference);
        return staged.back().raw_data();
      },
      io::WeightsReadOptions{!source.from_store, !source.from_store});
  for (size_t i = 0; i < staged.size(); ++i) {
    Tensor src =
        staged[i].dtype() == params.values().dtype() ? staged[i] : staged[i].Cast(params.values().dtype());
    params.values().Slice0(targets[i]->offset, targets[i]->offset + targets[i]->numel).CopyFrom(src);
  }
  if (staged.empty())
    TESSERA_THROW(ConfigError, "train.init_from: ", source.reference, " (", source.weights_path,
                  ") has no tensor of the "
                  "model's names and shapes: it is of a different model, and nothing would be fine-tuned");
  std::vector<std::string> lines;
  for (const auto& e : params.entries()) {
    auto it = outcome.find(e.name);
    lines.push_back(e.name + ": " +
                    (it != outcome.end() ? it->second : "re-initialised (not in " + source.reference + ")"));
  }
  return lines;
}

void WriteInitRecord(const std::string& run_dir, const InitSource& s) {
  nlohmann::json j = {{"reference", s.reference},
                      {"weights_path", fs::absolute(s.weights_path).lexically_normal().string()},
                      {"from_store", s.from_store}};
  if (s.from_store)
    j["parent"] = {{"store", s.parent.store()},
                   {"model", s.parent.model()},
                   {"version", s.parent.version()},
                   {"weights_sha256", s.parent.weights_sha256()},
                   {"reference", s.parent.reference()}};
  io::WriteFileAtomically(run_dir + "/init_from.json", j.dump(2) + "\n");
}

std::unique_ptr<InitSource> ReadInitRecord(const std::string& run_dir) {
  const std::string path = run_dir + "/init_from.json";
  if (!io::Exists(path)) return nullptr;
  nlohmann::json j =
      nlohmann::json::parse(io::ReadSmallFile(path, 1 << 20, "an init_from record"), nullptr, false);
  if (j.is_discarded() || !j.is_object()) TESSERA_THROW(IoError, path, ": is not a valid init_from record");
  auto s = std::make_unique<InitSource>();
  try {
    s->reference = j.at("reference").get<std::string>();
    s->weights_path = j.at("weights_path").get<std::string>();
    s->from_store = j.at("from_store").get<bool>();
    if (s->from_store) {
      const nlohmann::json& p = j.at("parent");
      s->parent.set_store(p.at("store").get<std::string>());
      s->parent.set_model(p.at("model").get<std::string>());
      s->parent.set_version(p.at("version").get<int64_t>());
      s->parent.set_weights_sha256(p.at("weights_sha256").get<std::string>());
      s->parent.set_reference(p.at("reference").get<std::string>());
    }
  } catch (const nlohmann::json::exception& e) {
    TESSERA_THROW(IoError, path, ": is not a valid init_from record: ", e.what());
  }
  return s;
}

store::PublishResult PublishWeights(const JobSpec& spec, nn::FlatParameters& params, const Tensor& values,
                                    const store::Architecture& arch,
                                    const std::map<std::string, double>& metrics,
                                    const store::Lineage& lineage) {
  const PublishSpec& p = spec.publish();
  store::PublishRequest req;
  req.model = p.model().empty() ? spec.name() : p.model();
  req.alias = p.alias();
  req.architecture = arch;
  req.metrics = metrics;
  req.lineage = lineage;
  req.weights_meta.step = lineage.step();
  req.weights_meta.job_spec = ToText(spec);
  req.weights_meta.dtype = values.dtype() == DType::kF64 ? "float64" : "float32";
  req.weights_meta.source = lineage.checkpoint();
  const char* base = static_cast<const char*>(values.raw_data());
  for (const auto& e : params.entries())
    req.weights.push_back({e.name, e.param->shape, values.dtype(), base + e.offset * SizeOf(values.dtype())});
  store::Store st(p.store());
  return st.Publish(req);
}

}  // namespace tessera::jobs
