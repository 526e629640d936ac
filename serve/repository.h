// The models a server serves and the versions of each it has loaded, kept in step with the model
// store: a thread polls the store (plain directory listings, so NFS and Lustre work as well as a
// local disk), loads a newly wanted version in the background, checks it (sha256 against the
// manifest, the network against the weights, a warm-up batch) and only then swaps it in. A
// version that fails to load is reported in the log and in /metrics, never served, and not tried
// again; the versions already serving go on serving.
//
// Version policies (Triton's version_policy, TF Serving's model_version_policy):
//   NAME, NAME@latest     the newest version that loads
//   NAME@latest:N         the N newest that load
//   NAME@3  NAME@1,3      exactly those versions
//   NAME@production       the version an alias names, followed as the alias moves
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve/served_version.h"

namespace tessera::serve {

struct VersionPolicy {
  enum Kind { kLatest, kSpecific, kAlias } kind = kLatest;
  int latest = 1;                 // kLatest: how many of the newest
  std::vector<int64_t> versions;  // kSpecific
  std::string alias;              // kAlias
  std::string Describe() const;   // "latest:2", "versions 1,3", "alias production"
};

struct ModelPolicy {
  std::string model;
  VersionPolicy policy;
};
// Parses one --model argument (the forms above). ConfigError naming the argument when malformed.
ModelPolicy ParseModelPolicy(const std::string& text);

struct RepositoryOptions {
  std::string store_root;
  std::vector<ModelPolicy> models;  // empty: every model in the store, each at latest
  BatchOptions batching;
  double poll_interval_s = 2;
};

class Repository {
 public:
  using LogFn = std::function<void(const std::string&)>;
  Repository(RepositoryOptions options, ServerMetrics* metrics, LogFn log);
  ~Repository();

  // One look at the store: loads what the policies want, swaps it in, drops what they no longer
  // want. The polling thread calls this; so may anyone (tests, a reload endpoint).
  void Poll();
  // Polls every poll_interval_s on a thread of its own until the repository is destroyed.
  void StartPolling();

  // Every model has a version serving.
  bool Ready() const;
  // `model` is one this server knows (configured, or found in the store).
  bool Serves(const std::string& model) const;
  // The version a request names: "" (the policy's default: the alias's target, or the newest
  // serving), a number, "latest", or the policy's alias. RequestError 400 for a malformed name,
  // 404 naming what is served when there is no such model or version.
  std::shared_ptr<const ServedVersion> Get(const std::string& model, const std::string& version) const;

  struct ModelState {
    std::string model;
    VersionPolicy policy;
    std::vector<int64_t> serving;          // ascending
    int64_t default_version = 0;           // 0: none
    std::map<int64_t, std::string> failed;  // version -> why it is not served
  };
  std::vector<ModelState> State() const;
  ModelState State(const std::string& model) const;  // RequestError 404 for an unknown model

 private:
  struct Model {
    VersionPolicy policy;
    std::map<int64_t, std::shared_ptr<const ServedVersion>> serving;
    int64_t default_version = 0;
    std::map<int64_t, std::string> failed;
    std::string last_error;  // of the last poll, logged when it changes
  };
  void PollModel(const std::string& name, const VersionPolicy& policy);
  std::vector<int64_t> Wanted(const std::string& name, const VersionPolicy& policy, const Model& m,
                              const std::map<int64_t, std::string>& failed);
  const Model& Find(const std::string& model) const;  // mu_ held

  RepositoryOptions options_;
  store::Store store_;
  ServerMetrics* metrics_;
  LogFn log_;
  mutable std::mutex mu_;  // guards models_ (a request's lookup holds it for a map find)
  std::map<std::string, Model> models_;
  std::mutex poll_mu_;  // one Poll() at a time
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread poller_;
};

}  // namespace tessera::serve
