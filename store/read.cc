// Reading the store: listing models, versions and aliases, resolving references, reading a
// version's files, verifying and loading one.
#include <sys/stat.h>

#include <algorithm>
#include <future>
#include <set>

#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "core/io/hdf5.h"
#include "core/model_spec.h"
#include "core/nn/quantized.h"
#include "store/internal.h"

namespace tessera::store {

using namespace internal;

Store::Store(std::string root) : root_(std::move(root)) {
  if (root_.empty())
    TESSERA_THROW(StoreError, "the model store root is empty (set --store or TESSERA_STORE)");
}

std::string Store::ModelDir(const std::string& model) const {
  ValidateModelName(model);
  return (fs::path(root_) / model).string();
}

std::string Store::VersionDir(const std::string& model, int64_t version) const {
  return (fs::path(ModelDir(model)) / std::to_string(version)).string();
}

namespace {

bool IsRealDirectory(const fs::path& p) {
  struct stat st {};
  return lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// "ROOT/mnist/3/weights.h5" style names for messages.
std::string FileIn(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

// The manifest's entry for `name`, or null.
const FileDigest* Digest(const VersionManifest& m, const std::string& name) {
  for (const FileDigest& f : m.files())
    if (f.name() == name) return &f;
  return nullptr;
}

// Reads the architecture file, checking its size and sha256 against the manifest first.
Architecture ReadArchitectureChecked(const std::string& dir, const VersionManifest& m) {
  const std::string path = FileIn(dir, kArchitectureFile);
  const FileDigest* d = Digest(m, kArchitectureFile);
  if (d == nullptr) TESSERA_THROW(IoError, path, ": not listed in ", kManifestFile);
  std::string text = io::ReadSmallFile(path, kMaxTextFileBytes, "a model architecture");
  std::string sha = io::Sha256Hex(text);
  if (static_cast<int64_t>(text.size()) != d->bytes() || sha != d->sha256())
    TESSERA_THROW(IoError, path, ": does not match ", kManifestFile, " (", text.size(), " bytes, sha256 ",
                  sha, "; the manifest says ", d->bytes(), " bytes, ", d->sha256(), ")");
  Architecture a;
  ReadTextProto(path, &a, "a model architecture");
  if (!a.has_model() || a.model().family_case() == models::ModelSpec::FAMILY_NOT_SET)
    TESSERA_THROW(IoError, path,
                  ": names no model (model { mlp { ... } }, model { cnn { ... } } or model { gpt { ... } })");
  return a;
}

// Why tensor `t` cannot hold parameter `p` ("" when it can): an int8 parameter needs int8 data,
// and a float one float data (f32 or f64, converted on load).
std::string DTypeMismatch(const io::TensorRecord& t, const nn::Parameter& p) {
  if ((p.dtype == DType::kI8) == (t.dtype == DType::kI8)) return "";
  return detail::StrCat(t.path, " is ", DTypeName(t.dtype), " but model.pbtxt's network needs ",
                        p.dtype == DType::kI8 ? "i8 (quantization: INT8)" : "f32");
}

}  // namespace

std::unique_ptr<nn::Sequential> BuildNetwork(const Architecture& a) {
  Shape example(a.input_shape().begin(), a.input_shape().end());
  std::unique_ptr<nn::Sequential> net = models::BuildModel(a.model(), example);
  if (a.quantization() == INT8) nn::QuantizeLayers(*net);
  return net;
}

std::vector<std::string> Store::Models() const {
  std::vector<std::string> out;
  for (const fs::path& e : io::ListDir(root_)) {
    std::string name = e.filename().string();
    try {
      ValidateModelName(name);
    } catch (const StoreError&) {
      continue;
    }
    if (IsRealDirectory(e)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> Store::Versions(const std::string& model) const {
  std::vector<int64_t> out;
  for (const fs::path& e : io::ListDir(ModelDir(model))) {
    int64_t v = ParseVersionName(e.filename().string());
    struct stat st {};
    if (v > 0 && IsRealDirectory(e) && stat((e / kManifestFile).c_str(), &st) == 0 && S_ISREG(st.st_mode))
      out.push_back(v);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::map<std::string, int64_t> Store::Aliases(const std::string& model) const {
  std::map<std::string, int64_t> out;
  for (const fs::path& e : io::ListDir(fs::path(ModelDir(model)) / kAliasesDir)) {
    std::string name = e.filename().string();
    try {
      ValidateAliasName(name);
      Alias a;
      ReadTextProto(e.string(), &a, "an alias");
      if (a.version() > 0) out[name] = a.version();
    } catch (const Error&) {
      continue;  // hidden temporaries, damaged files: Resolve() names the problem when asked
    }
  }
  return out;
}

int64_t Store::Resolve(const std::string& model, const std::string& ref) const {
  const std::string where = "model '" + model + "' in " + root_;
  if (ref.empty() || ref == "latest") {
    std::vector<int64_t> v = Versions(model);
    if (v.empty()) TESSERA_THROW(NotFoundError, where, ": no published version");
    return v.back();
  }
  if (int64_t v = ParseVersionName(ref)) {
    std::vector<int64_t> all = Versions(model);
    if (!std::binary_search(all.begin(), all.end(), v))
      TESSERA_THROW(NotFoundError, where, ": no version ", v,
                    all.empty() ? std::string(" (none is published)")
                                : detail::StrCat(" (versions ", all.front(), " to ", all.back(), ")"));
    return v;
  }
  ValidateAliasName(ref);
  const fs::path path = fs::path(ModelDir(model)) / kAliasesDir / ref;
  if (!io::Exists(path)) TESSERA_THROW(NotFoundError, where, ": no alias '", ref, "'");
  Alias a;
  ReadTextProto(path.string(), &a, "an alias");
  if (a.version() <= 0) TESSERA_THROW(IoError, path.string(), ": names no version");
  std::vector<int64_t> all = Versions(model);
  if (!std::binary_search(all.begin(), all.end(), a.version()))
    TESSERA_THROW(NotFoundError, where, ": alias '", ref, "' names version ", a.version(),
                  ", which does not exist");
  return a.version();
}

VersionManifest Store::ReadManifest(const std::string& model, int64_t version) const {
  const std::string dir = VersionDir(model, version);
  if (!IsRealDirectory(dir))
    TESSERA_THROW(NotFoundError, "model '", model, "' in ", root_, ": no version ", version);
  const std::string path = FileIn(dir, kManifestFile);
  VersionManifest m;
  ReadTextProto(path, &m, "a version manifest");
  if (m.format() != VersionManifest().format())
    TESSERA_THROW(IoError, path, ": format is '", m.format(), "', not '", VersionManifest().format(), "'");
  if (m.format_version() > VersionManifest().format_version())
    TESSERA_THROW(io::FormatError, path, ": format version ", m.format_version(),
                  " is newer than this tessera reads (", VersionManifest().format_version(),
                  "): use a newer tessera");
  if (m.model() != model) TESSERA_THROW(IoError, path, ": names model '", m.model(), "', not '", model, "'");
  std::set<std::string> names;
  for (const FileDigest& f : m.files()) {
    if (f.name() != kWeightsFile && f.name() != kArchitectureFile)
      TESSERA_THROW(IoError, path, ": lists an unknown file '", f.name().substr(0, 80), "'");
    if (!names.insert(f.name()).second) TESSERA_THROW(IoError, path, ": lists ", f.name(), " twice");
    if (!io::IsSha256Hex(f.sha256()) || f.bytes() < 0)
      TESSERA_THROW(IoError, path, ": the entry for ", f.name(), " has no valid size and sha256");
  }
  for (const char* required : {kWeightsFile, kArchitectureFile})
    if (!names.count(required)) TESSERA_THROW(IoError, path, ": does not list ", required);
  return m;
}

Architecture Store::ReadArchitecture(const std::string& model, int64_t version) const {
  return ReadArchitectureChecked(VersionDir(model, version), ReadManifest(model, version));
}

namespace {

// The names pointing at `version` of `all` (ascending) with `aliases`: "latest" first.
std::vector<std::string> NamesOf(int64_t version, const std::vector<int64_t>& all,
                                 const std::map<std::string, int64_t>& aliases) {
  std::vector<std::string> names;
  if (!all.empty() && all.back() == version) names.push_back("latest");
  for (const auto& [name, v] : aliases)
    if (v == version) names.push_back(name);
  return names;
}

}  // namespace

VersionInfo Store::Describe(const std::string& model, int64_t version) const {
  VersionInfo info;
  info.version = version;
  info.dir = VersionDir(model, version);
  info.manifest = ReadManifest(model, version);
  info.aliases = NamesOf(version, Versions(model), Aliases(model));
  return info;
}

std::vector<VersionInfo> Store::DescribeAll(const std::string& model) const {
  const std::vector<int64_t> all = Versions(model);
  const std::map<std::string, int64_t> aliases = Aliases(model);
  std::vector<VersionInfo> out;
  for (int64_t v : all) {
    VersionInfo info;
    info.version = v;
    info.dir = VersionDir(model, v);
    info.manifest = ReadManifest(model, v);
    info.aliases = NamesOf(v, all, aliases);
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<std::string> Store::Verify(const std::string& model, int64_t version) const {
  const std::string dir = VersionDir(model, version);
  if (!IsRealDirectory(dir))
    TESSERA_THROW(NotFoundError, "model '", model, "' in ", root_, ": no version ", version);
  std::vector<std::string> problems;
  VersionManifest m;
  try {
    m = ReadManifest(model, version);
  } catch (const Error& e) {
    return {e.what()};
  }
  for (const FileDigest& f : m.files()) {
    const std::string path = FileIn(dir, f.name());
    try {
      int64_t bytes = 0;
      std::string sha = io::Sha256File(path, &bytes);
      if (bytes != f.bytes() || sha != f.sha256())
        problems.push_back(detail::StrCat(path, ": does not match ", kManifestFile, ": ", bytes,
                                          " bytes, sha256 ", sha, "; the manifest says ", f.bytes(),
                                          " bytes, ", f.sha256()));
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  for (const fs::path& e : io::ListDir(dir)) {
    std::string name = e.filename().string();
    if (name != kManifestFile && Digest(m, name) == nullptr)
      problems.push_back(FileIn(dir, name) + ": not listed in " + kManifestFile);
  }
  const std::string weights = FileIn(dir, kWeightsFile);
  io::WeightsInfo info;
  try {
    for (std::string& p : io::VerifyWeights(weights)) problems.push_back(std::move(p));
    info = io::ReadWeightsInfo(weights);
  } catch (const Error& e) {
    problems.push_back(e.what());
    return problems;
  }
  try {  // The architecture must build a model with exactly the weights' tensors.
    Architecture a = ReadArchitectureChecked(dir, m);
    std::unique_ptr<nn::Sequential> net = BuildNetwork(a);
    std::map<std::string, const nn::Parameter*> want;
    std::map<std::string, const io::TensorRecord*> have;
    for (auto& [name, p] : net->NamedParameters()) want["/model/" + name] = p;
    for (const io::TensorRecord& t : info.tensors) have[t.path] = &t;
    for (const auto& [path, p] : want) {
      auto it = have.find(path);
      if (it == have.end()) {
        problems.push_back(detail::StrCat(weights, ": the architecture's tensor ", path, " is missing"));
        continue;
      }
      if (Shape(it->second->shape) != p->shape)
        problems.push_back(detail::StrCat(weights, ": ", path, " has shape ", ShapeString(it->second->shape),
                                          " but the architecture needs ", ShapeString(p->shape)));
      if (std::string why = DTypeMismatch(*it->second, *p); !why.empty())
        problems.push_back(detail::StrCat(weights, ": ", why));
    }
    for (const auto& [path, shape] : have)
      if (!want.count(path))
        problems.push_back(detail::StrCat(weights, ": ", path, " is not part of the architecture"));
  } catch (const std::exception& e) {  // an architecture too large to build is a problem, not a crash
    problems.push_back(FileIn(dir, kArchitectureFile) + ": " + e.what());
  }
  return problems;
}

LoadedVersion Store::LoadNetwork(const std::string& model, int64_t version, nn::Module& net,
                                 const io::TensorSink& sink) const {
  const std::string where = detail::StrCat(model, " version ", version);
  std::map<std::string, const nn::Parameter*> params;
  for (auto& [name, p] : net.NamedParameters()) params["/model/" + name] = p;
  std::set<std::string> seen;
  LoadedVersion out = Load(model, version, [&](const io::TensorRecord& t) -> void* {
    auto it = params.find(t.path);
    if (it == params.end()) return nullptr;
    // Load checks the file against the manifest; the tensors must also be the network's.
    if (Shape(t.shape) != it->second->shape)
      TESSERA_THROW(ConfigError, where, ": ", t.path, " has shape ", ShapeString(t.shape),
                    " but model.pbtxt's network needs ", ShapeString(it->second->shape));
    if (std::string why = DTypeMismatch(t, *it->second); !why.empty())
      TESSERA_THROW(ConfigError, where, ": ", why);
    seen.insert(t.path);
    return sink(t);
  });
  for (const auto& [path, p] : params)
    if (!seen.count(path)) TESSERA_THROW(ConfigError, where, ": weights.h5 has no tensor ", path);
  return out;
}

LoadedVersion Store::LoadInto(const std::string& model, int64_t version, nn::Module& net) const {
  nn::AllocateParameters(net);
  std::map<std::string, nn::Parameter*> params;
  for (auto& [name, p] : net.NamedParameters()) params["/model/" + name] = p;
  std::vector<std::pair<Tensor, nn::Parameter*>> staged;  // stored in another float dtype, converted below
  LoadedVersion out = LoadNetwork(model, version, net, [&](const io::TensorRecord& t) -> void* {
    nn::Parameter* p = params.at(t.path);
    if (t.dtype == p->dtype) return p->value.raw_data();
    staged.emplace_back(Tensor::Empty(t.shape, t.dtype), p);
    return staged.back().first.raw_data();
  });
  for (auto& [t, p] : staged) p->value.CopyFrom(t.Cast(p->dtype));
  return out;
}

LoadedVersion Store::Load(const std::string& model, int64_t version, const io::TensorSink& sink) const {
  LoadedVersion out;
  out.model = model;
  out.version = version;
  out.dir = VersionDir(model, version);
  out.manifest = ReadManifest(model, version);
  out.architecture = ReadArchitectureChecked(out.dir, out.manifest);
  const std::string weights = FileIn(out.dir, kWeightsFile);
  const FileDigest* d = Digest(out.manifest, kWeightsFile);
  // The sha256 of the whole file is computed on another thread while the tensors are read.
  std::future<std::pair<std::string, int64_t>> sha = std::async(std::launch::async, [&weights] {
    int64_t bytes = 0;
    std::string s = io::Sha256File(weights, &bytes);
    return std::make_pair(s, bytes);
  });
  auto mismatch = [&](const std::pair<std::string, int64_t>& got) {
    return got.second != d->bytes() || got.first != d->sha256()
               ? detail::StrCat(weights, ": does not match ", kManifestFile, " (", got.second,
                                " bytes, sha256 ", got.first, "; the manifest says ", d->bytes(), " bytes, ",
                                d->sha256(), ")")
               : std::string();
  };
  try {
    io::WeightsReadOptions o;
    o.check_crc = false;  // the file's sha256, checked meanwhile, covers every byte the CRCs do
    out.weights = io::ReadWeights(weights, sink, o);
  } catch (const Error& e) {
    // A file changed since it was published says so first, whatever the reader tripped over.
    std::string changed;
    try {
      changed = mismatch(sha.get());
    } catch (const Error&) {
    }
    if (!changed.empty()) TESSERA_THROW(IoError, changed, ": ", e.what());
    throw;
  }
  std::string changed = mismatch(sha.get());
  if (!changed.empty()) TESSERA_THROW(IoError, changed);
  return out;
}

std::string ArchitectureText(const Architecture& a) { return TextProto(a); }
std::string ManifestText(const VersionManifest& m) { return TextProto(m); }

}  // namespace tessera::store
