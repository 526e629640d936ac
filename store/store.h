// The model store: numbered, immutable versions of trained models in the directory layout that
// TensorFlow Serving and Triton users know (docs/model-store.md has the whole contract).
//
//   ROOT/MODEL/3/weights.h5          the weights (core/io/weights.h), readable with h5py
//   ROOT/MODEL/3/model.pbtxt         the architecture and input preparation (store.proto)
//   ROOT/MODEL/3/manifest.pbtxt      metrics, lineage, sha256 of every file (store.proto)
//   ROOT/MODEL/aliases/production    the version an alias names, and its history
//   ROOT/MODEL/.staging/TOKEN/       a publish in progress (never read)
//   ROOT/MODEL/.lock/                held while an alias moves or gc runs
//
// Publishing stages the version under .staging/, fsyncs and verifies it, then makes it visible in
// one rename(2) to the next free number: a reader sees a version whole or not at all, and
// publishers on any number of hosts sharing the file system never collide (a rename onto an
// existing version fails, and the loser takes the next number). Alias moves and gc take the
// model's lock (an atomic mkdir, which NFS and Lustre also guarantee).
//
// Every file is read as hostile: sizes are capped before reading, names are checked, and every
// error names the model, the version and the file. Needs no trainer and no MPI. Safe to use from
// several threads and processes at once.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/io/weights.h"
#include "core/nn/module.h"
#include "store/store.pb.h"

namespace tessera::store {

// A request the store cannot honour: an unknown model, version or alias, a bad name, a rollback
// with nowhere to go. (Damaged or unreadable files are IoError.)
class StoreError : public Error {
  using Error::Error;
};
// The model, version or alias asked for does not exist (a server answers 404).
class NotFoundError : public StoreError {
  using StoreError::StoreError;
};

// Names: a model is [A-Za-z0-9][A-Za-z0-9._-]{0,127} (no "..", nothing hidden); an alias the same
// but starting with a letter and never "latest" (implicit: the highest version). StoreError names
// the problem.
void ValidateModelName(const std::string& name);
void ValidateAliasName(const std::string& name);

// A reference to a version, as users write one:
//   MODEL  MODEL@latest  MODEL@production  MODEL@3  MODEL/3
//   store://ROOT/MODEL@production  store://ROOT/MODEL/3  store:///abs/root/MODEL
// `ref` is "latest", a version number or an alias name. Only a store:// reference names a root; a
// bare one with a '/' in its model part is refused (a model name never holds one).
struct VersionRef {
  std::string root;  // "" when the text named none
  std::string model;
  std::string ref = "latest";
  bool explicit_ref = false;  // the text named a version or alias (MODEL@..., MODEL/3)
};
VersionRef ParseVersionRef(const std::string& text);
std::string FormatVersionRef(const VersionRef& r);  // store://ROOT/MODEL@REF

// One version as listed.
struct VersionInfo {
  int64_t version = 0;
  std::string dir;
  VersionManifest manifest;
  std::vector<std::string> aliases;  // names pointing at it ("latest" included when it is)
};

struct PublishRequest {
  std::string model;
  std::vector<io::WeightsView> weights;  // the model's tensors, by name ("0.weight")
  io::WeightsMeta weights_meta;          // step, job_spec, dtype, source
  Architecture architecture;
  std::map<std::string, double> metrics;
  Lineage lineage;
  std::string alias;  // moved to the new version once it is published, when not empty
};

struct PublishResult {
  int64_t version = 0;
  std::string dir;
  int64_t bytes = 0;    // of all files of the version
  int attempts = 1;     // renames tried: more than one when another publisher took a number first
};

struct AliasChange {
  std::string alias;
  int64_t from = 0;  // 0: the alias is new
  int64_t to = 0;
};

struct GcResult {
  std::vector<int64_t> deleted, kept;
  int stale_staging_removed = 0;
};

// A version loaded for use: its files' contents checked against the manifest.
struct LoadedVersion {
  std::string model;
  int64_t version = 0;
  std::string dir;
  VersionManifest manifest;
  Architecture architecture;
  io::WeightsInfo weights;  // the tensor list (the data went where the sink said)
};

class Store {
 public:
  // `root` need not exist yet (Publish creates it).
  explicit Store(std::string root);
  const std::string& root() const { return root_; }

  // ---- reading ----------------------------------------------------------------------------------
  std::vector<std::string> Models() const;
  // The committed versions of `model`, ascending (empty when there is none, or no such model).
  std::vector<int64_t> Versions(const std::string& model) const;
  // Alias name -> version, for every readable alias of `model`.
  std::map<std::string, int64_t> Aliases(const std::string& model) const;
  // The version `ref` names: "latest" (or ""), a number, or an alias. NotFoundError naming the
  // model and reference when there is none.
  int64_t Resolve(const std::string& model, const std::string& ref) const;
  std::string VersionDir(const std::string& model, int64_t version) const;
  VersionInfo Describe(const std::string& model, int64_t version) const;
  // Describe() of every version, ascending, listing the directory and the aliases once.
  std::vector<VersionInfo> DescribeAll(const std::string& model) const;
  VersionManifest ReadManifest(const std::string& model, int64_t version) const;
  Architecture ReadArchitecture(const std::string& model, int64_t version) const;
  // Checks the manifest and architecture, the size and sha256 of every file against the manifest,
  // the weights file's structure and CRCs, and that the architecture builds a model with exactly
  // the weights' tensors: one line per problem, each naming the model, version and file.
  std::vector<std::string> Verify(const std::string& model, int64_t version) const;
  // Reads version `version` of `model`: the manifest and architecture, then the weights into the
  // buffers `sink` gives, checking, concurrently, the file's sha256 against the manifest (which
  // covers every byte the per-tensor CRCs would). IoError naming the file on any mismatch.
  LoadedVersion Load(const std::string& model, int64_t version, const io::TensorSink& sink) const;
  // Load() for a network built from the version's architecture: every parameter of `net` must be
  // in the weights at the network's shape (ConfigError naming the version and tensor otherwise);
  // `sink` is asked for the network's tensors only, each in its stored dtype.
  LoadedVersion LoadNetwork(const std::string& model, int64_t version, nn::Module& net,
                            const io::TensorSink& sink) const;
  // LoadNetwork() into `net` itself: every parameter gets a host tensor of its own
  // (nn::AllocateParameters) holding the version's values, float ones as f32.
  LoadedVersion LoadInto(const std::string& model, int64_t version, nn::Module& net) const;

  // ---- writing ----------------------------------------------------------------------------------
  // Publishes a new version (see the top of this file). Refuses non-finite weights.
  PublishResult Publish(const PublishRequest& request);
  // Points `alias` at `version` (which must exist), recording the previous target in its history.
  AliasChange SetAlias(const std::string& model, const std::string& alias, int64_t version);
  // Moves `alias` back to the version it named before its last move. StoreError when it has no
  // history or that version is gone.
  AliasChange Rollback(const std::string& model, const std::string& alias);
  // Deletes all but the newest `keep` versions (keep >= 1), never one an alias names, and staging
  // left by publishers that died more than `stale_after_s` ago. `dry_run`: report only.
  GcResult Gc(const std::string& model, int keep, bool dry_run = false, double stale_after_s = 3600);

 private:
  std::string ModelDir(const std::string& model) const;
  std::string root_;
};

// The network a version's architecture describes, parameters declared but not laid out: the model
// spec's, with its Linear and Conv2d layers made int8 when the architecture says INT8.
std::unique_ptr<nn::Sequential> BuildNetwork(const Architecture& a);

// The contents of a version's files as tessera writes them (also used by `store verify` to
// re-create nothing: only for tests and tools).
std::string ArchitectureText(const Architecture& a);
std::string ManifestText(const VersionManifest& m);

}  // namespace tessera::store
