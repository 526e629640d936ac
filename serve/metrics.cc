#include "serve/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <sstream>

namespace tessera::serve {
namespace {

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

const std::vector<double> kLatencyBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
const std::vector<double> kBatchBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};

}  // namespace

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

MetricFamily::MetricFamily(std::string name, std::string help, Kind kind, std::vector<std::string> labels,
                           std::vector<double> buckets)
    : name_(std::move(name)), help_(std::move(help)), kind_(kind), labels_(std::move(labels)),
      buckets_(std::move(buckets)) {}

void MetricFamily::Add(const std::vector<std::string>& lv, double delta) {
  std::lock_guard<std::mutex> lock(mu_);
  values_[lv] += delta;
}

void MetricFamily::Set(const std::vector<std::string>& lv, double value) {
  std::lock_guard<std::mutex> lock(mu_);
  values_[lv] = value;
}

void MetricFamily::Remove(const std::vector<std::string>& lv) {
  std::lock_guard<std::mutex> lock(mu_);
  values_.erase(lv);
}

void MetricFamily::Observe(const std::vector<std::string>& lv, double value) {
  std::lock_guard<std::mutex> lock(mu_);
  Histogram& h = histograms_[lv];
  if (h.counts.empty()) h.counts.assign(buckets_.size(), 0);
  for (size_t i = 0; i < buckets_.size(); ++i)
    if (value <= buckets_[i]) {
      ++h.counts[i];
      break;
    }
  ++h.count;
  h.sum += value;
}

double MetricFamily::Value(const std::vector<std::string>& lv) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = values_.find(lv);
  return it == values_.end() ? 0 : it->second;
}

std::string MetricFamily::Labels(const std::vector<std::string>& values, const std::string& extra) const {
  std::string out;
  for (size_t i = 0; i < labels_.size() && i < values.size(); ++i)
    out += (out.empty() ? "" : ",") + labels_[i] + "=\"" + EscapeLabel(values[i]) + "\"";
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

void MetricFamily::Render(std::string& out) const {
  static const char* kTypes[] = {"counter", "gauge", "histogram"};
  out += "# HELP " + name_ + " " + help_ + "\n# TYPE " + name_ + " " + kTypes[kind_] + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  if (kind_ != kHistogram) {
    for (const auto& [lv, v] : values_) out += name_ + Labels(lv) + " " + Number(v) + "\n";
    return;
  }
  for (const auto& [lv, h] : histograms_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      cumulative += h.counts[i];
      char le[32];
      std::snprintf(le, sizeof le, "%g", buckets_[i]);
      out += name_ + "_bucket" + Labels(lv, std::string("le=\"") + le + "\"") + " " + std::to_string(cumulative) + "\n";
    }
    out += name_ + "_bucket" + Labels(lv, "le=\"+Inf\"") + " " + std::to_string(h.count) + "\n";
    out += name_ + "_sum" + Labels(lv) + " " + Number(h.sum) + "\n";
    out += name_ + "_count" + Labels(lv) + " " + std::to_string(h.count) + "\n";
  }
}

ServerMetrics::ServerMetrics()
    : requests("tessera_serve_requests_total", "Inference requests answered, by model, version, protocol and HTTP status.",
               MetricFamily::kCounter, {"model", "version", "protocol", "status"}),
      failures("tessera_serve_request_failures_total", "Inference requests answered with an error status.",
               MetricFamily::kCounter, {"model", "version", "protocol", "status"}),
      latency("tessera_serve_request_duration_seconds", "Time from a request's arrival to its response.",
              MetricFamily::kHistogram, {"model", "protocol"}, kLatencyBuckets),
      queue_time("tessera_serve_queue_duration_seconds", "Time a request waited for its batch to start.",
                 MetricFamily::kHistogram, {"model"}, kLatencyBuckets),
      batch_size("tessera_serve_batch_size", "Examples in the forward pass that answered each request (one observation per request).", MetricFamily::kHistogram,
                 {"model"}, kBatchBuckets),
      loaded("tessera_serve_version_loaded", "1 for each version loaded and serving.", MetricFamily::kGauge,
             {"model", "version"}),
      swaps("tessera_serve_swaps_total", "Changes of the set of versions a model serves.", MetricFamily::kCounter,
            {"model"}),
      load_failures("tessera_serve_load_failures_total",
                    "Versions that failed to load (corrupt, unreadable, wrong architecture) and were not served.",
                    MetricFamily::kCounter, {"model", "version"}),
      in_flight("tessera_serve_requests_in_flight", "Inference requests being answered now.", MetricFamily::kGauge,
                {}) {}

std::string ServerMetrics::Render() const {
  std::string out;
  for (const MetricFamily* f : {&requests, &failures, &latency, &queue_time, &batch_size, &loaded, &swaps,
                                &load_failures, &in_flight})
    f->Render(out);
  out += "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
         "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes " +
         std::to_string(ResidentBytes()) + "\n";
  return out;
}

int64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long size = 0, resident = 0;
  const int got = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return got == 2 ? resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace tessera::serve
