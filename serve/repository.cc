#include "serve/repository.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

namespace tessera::serve {
namespace {

bool AllDigits(const std::string& s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string Join(const std::vector<int64_t>& v) {
  std::string out;
  for (int64_t x : v) out += (out.empty() ? "" : ",") + std::to_string(x);
  return out.empty() ? "none" : out;
}

template <typename M>
std::vector<int64_t> Keys(const M& m) {
  std::vector<int64_t> out;
  for (const auto& kv : m) out.push_back(kv.first);
  return out;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

std::string VersionPolicy::Describe() const {
  if (kind == kAlias) return "alias " + alias;
  if (kind == kSpecific) return "versions " + Join(versions);
  return latest == 1 ? "latest" : "latest:" + std::to_string(latest);
}

ModelPolicy ParseModelPolicy(const std::string& text) {
  ModelPolicy p;
  const size_t at = text.find('@');
  p.model = text.substr(0, at);
  try {
    store::ValidateModelName(p.model);
  } catch (const store::StoreError& e) {
    TESSERA_THROW(ConfigError, "--model ", text, ": ", e.what());
  }
  if (at == std::string::npos) return p;
  const std::string rest = text.substr(at + 1);
  auto bad = [&](const std::string& why) { TESSERA_THROW(ConfigError, "--model ", text, ": ", why); };
  if (rest == "latest") return p;
  if (rest.rfind("latest:", 0) == 0) {
    const std::string n = rest.substr(7);
    if (!AllDigits(n) || std::atoll(n.c_str()) < 1 || std::atoll(n.c_str()) > 1000)
      bad("latest:N takes N from 1 to 1000, got '" + n + "'");
    p.policy.latest = std::atoi(n.c_str());
    return p;
  }
  if (!rest.empty() && rest[0] >= '0' && rest[0] <= '9') {
    p.policy.kind = VersionPolicy::kSpecific;
    size_t start = 0;
    for (;;) {
      const size_t comma = rest.find(',', start);
      const std::string v = rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!AllDigits(v) || std::atoll(v.c_str()) < 1) bad("'" + v + "' is not a version number (1, 2, ...)");
      p.policy.versions.push_back(std::atoll(v.c_str()));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    std::sort(p.policy.versions.begin(), p.policy.versions.end());
    p.policy.versions.erase(std::unique(p.policy.versions.begin(), p.policy.versions.end()), p.policy.versions.end());
    return p;
  }
  try {
    store::ValidateAliasName(rest);
  } catch (const store::StoreError& e) {
    bad(e.what());
  }
  p.policy.kind = VersionPolicy::kAlias;
  p.policy.alias = rest;
  return p;
}

Repository::Repository(RepositoryOptions options, ServerMetrics* metrics, LogFn log)
    : options_(std::move(options)), store_(options_.store_root), metrics_(metrics), log_(std::move(log)) {
  for (const ModelPolicy& p : options_.models) models_[p.model].policy = p.policy;
}

Repository::~Repository() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

void Repository::StartPolling() {
  poller_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(stop_mu_);
    while (!stop_cv_.wait_for(lock, std::chrono::duration<double>(options_.poll_interval_s), [this] { return stop_; })) {
      lock.unlock();
      Poll();
      lock.lock();
    }
  });
}

void Repository::Poll() {
  std::lock_guard<std::mutex> poll_lock(poll_mu_);
  std::vector<std::pair<std::string, VersionPolicy>> models;
  if (options_.models.empty()) {  // every model in the store, new ones included
    try {
      for (const std::string& m : store_.Models()) models.emplace_back(m, VersionPolicy{});
    } catch (const std::exception& e) {
      log_(detail::StrCat("cannot list the models of store ", options_.store_root, ": ", e.what()));
    }
  } else {
    for (const ModelPolicy& p : options_.models) models.emplace_back(p.model, p.policy);
  }
  for (const auto& [name, policy] : models) PollModel(name, policy);
}

std::vector<int64_t> Repository::Wanted(const std::string& name, const VersionPolicy& policy, const Model& m,
                                        const std::map<int64_t, std::string>& failed) {
  if (policy.kind == VersionPolicy::kAlias) {
    const int64_t target = store_.Resolve(name, policy.alias);
    if (failed.count(target)) return Keys(m.serving);  // the alias names a version that cannot serve: keep on
    return {target};
  }
  std::vector<int64_t> available = store_.Versions(name), out;
  if (policy.kind == VersionPolicy::kSpecific) {
    for (int64_t v : policy.versions)
      if (std::binary_search(available.begin(), available.end(), v) && !failed.count(v)) out.push_back(v);
    return out;
  }
  for (auto it = available.rbegin(); it != available.rend() && static_cast<int>(out.size()) < policy.latest; ++it)
    if (!failed.count(*it)) out.push_back(*it);
  return out;
}

void Repository::PollModel(const std::string& name, const VersionPolicy& policy) {
  Model before;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Model& m = models_[name];
    m.policy = policy;
    before = m;
  }
  std::map<int64_t, std::string> failed = before.failed;
  std::map<int64_t, std::shared_ptr<const ServedVersion>> loaded = before.serving;
  std::vector<int64_t> wanted;
  std::string error;
  try {
    for (int round = 0; round < 1000; ++round) {  // each round that fails drops a version from the next
      wanted = Wanted(name, policy, before, failed);
      bool all = true;
      for (int64_t v : wanted) {
        if (loaded.count(v)) continue;
        const auto start = std::chrono::steady_clock::now();
        try {
          loaded[v] = ServedVersion::Load(store_, name, v, options_.batching, metrics_);
          log_(detail::StrCat("loaded ", name, " version ", v, " (", loaded[v]->bytes(), " bytes of weights, checked, ",
                              "warmed up, in ", static_cast<int>(Seconds(start) * 1000), " ms)"));
        } catch (const std::exception& e) {
          failed[v] = e.what();
          all = false;
          if (metrics_) metrics_->load_failures.Add({name, std::to_string(v)});
          log_(detail::StrCat("NOT serving ", name, " version ", v, ": ", e.what()));
        }
      }
      if (all) break;
    }
  } catch (const std::exception& e) {  // the store itself: no such model or alias, unreadable
    error = e.what();
  }
  if (error.empty() && wanted.empty() && before.serving.empty())
    error = detail::StrCat("no version to serve in store ", options_.store_root, " (policy ", policy.Describe(), ")");
  std::map<int64_t, std::shared_ptr<const ServedVersion>> serving;
  for (int64_t v : wanted)
    if (loaded.count(v)) serving[v] = loaded[v];
  if (serving.empty() || !error.empty()) serving = before.serving;  // never swap to nothing
  int64_t def = serving.empty() ? 0 : serving.rbegin()->first;
  if (policy.kind == VersionPolicy::kAlias && error.empty() && !wanted.empty() && serving.count(wanted[0]))
    def = wanted[0];
  else if (policy.kind == VersionPolicy::kAlias && serving.count(before.default_version))
    def = before.default_version;
  const bool changed = Keys(serving) != Keys(before.serving) || def != before.default_version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Model& m = models_[name];
    m.serving = serving;
    m.failed = failed;
    m.default_version = def;
    if (error != m.last_error && !error.empty())
      log_(detail::StrCat(name, ": ", error, serving.empty() ? "" : "; still serving version " + Join(Keys(serving))));
    m.last_error = error;
  }
  // Only after a load or a swap: at every poll it would also drop the workers' cached buffers.
  if (changed || failed.size() != before.failed.size()) ReleaseFreedMemory();
  if (!changed) return;
  log_(detail::StrCat(name, " (", policy.Describe(), ") serves version ", Join(Keys(serving)), ", by default ", def,
                      " (was ", Join(Keys(before.serving)), ")"));
  if (!metrics_) return;
  metrics_->swaps.Add({name});
  for (int64_t v : Keys(before.serving))
    if (!serving.count(v)) metrics_->loaded.Remove({name, std::to_string(v)});
  for (int64_t v : Keys(serving)) metrics_->loaded.Set({name, std::to_string(v)}, 1);
}
// `before` and `loaded` go out of scope here: a version no longer served is freed as soon as its
// last request ends.

bool Repository::Ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (models_.empty()) return false;
  for (const auto& kv : models_)
    if (kv.second.serving.empty()) return false;
  return true;
}

bool Repository::Serves(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_.count(model) > 0;
}

const Repository::Model& Repository::Find(const std::string& model) const {
  auto it = models_.find(model);
  if (it == models_.end()) {
    std::string names;
    for (const auto& kv : models_) names += (names.empty() ? "" : ", ") + kv.first;
    throw RequestError(404, detail::StrCat("unknown model '", model, "' (this server serves ",
                                           names.empty() ? "no model yet" : names, ")"));
  }
  return it->second;
}

std::shared_ptr<const ServedVersion> Repository::Get(const std::string& model, const std::string& version) const {
  try {
    store::ValidateModelName(model);
  } catch (const store::StoreError& e) {
    throw RequestError(400, e.what());
  }
  std::lock_guard<std::mutex> lock(mu_);
  const Model& m = Find(model);
  int64_t v = 0;
  if (version.empty() || version == "latest") {
    v = version.empty() ? m.default_version : (m.serving.empty() ? 0 : m.serving.rbegin()->first);
  } else if (AllDigits(version)) {
    v = std::atoll(version.c_str());
  } else if (m.policy.kind == VersionPolicy::kAlias && version == m.policy.alias) {
    v = m.default_version;
  } else {
    try {
      store::ValidateAliasName(version);
    } catch (const store::StoreError& e) {
      throw RequestError(400, detail::StrCat("version '", version, "' of model ", model, ": ", e.what()));
    }
  }
  auto it = m.serving.find(v);
  if (it == m.serving.end())
    throw RequestError(404, detail::StrCat("model ", model, " has no version '", version.empty() ? "default" : version,
                                           "' serving (policy ", m.policy.Describe(), "; serving: ",
                                           Join(Keys(m.serving)), ")"));
  return it->second;
}

std::vector<Repository::ModelState> Repository::State() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModelState> out;
  for (const auto& [name, m] : models_) out.push_back({name, m.policy, Keys(m.serving), m.default_version, m.failed});
  return out;
}

Repository::ModelState Repository::State(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Model& m = Find(model);
  return {model, m.policy, Keys(m.serving), m.default_version, m.failed};
}

}  // namespace tessera::serve
