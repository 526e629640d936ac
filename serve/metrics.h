// The server's Prometheus metrics, exposed at /metrics in the text exposition format (0.0.4).
//
// Families are declared once, with their help text and label names; a sample is addressed by its
// label values. Everything is thread-safe; one mutex per family is plenty at the request rates a
// CPU server sees (a counter add costs well under a microsecond).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::serve {

class MetricFamily {
 public:
  enum Kind { kCounter, kGauge, kHistogram };
  MetricFamily(std::string name, std::string help, Kind kind, std::vector<std::string> labels,
               std::vector<double> buckets = {});
  // Counter or gauge.
  void Add(const std::vector<std::string>& label_values, double delta = 1);
  void Set(const std::vector<std::string>& label_values, double value);
  // Removes one sample (a gauge for a version no longer loaded).
  void Remove(const std::vector<std::string>& label_values);
  // Histogram.
  void Observe(const std::vector<std::string>& label_values, double value);
  double Value(const std::vector<std::string>& label_values) const;  // counter or gauge; 0 if absent
  void Render(std::string& out) const;

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket, not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  std::string Labels(const std::vector<std::string>& values, const std::string& extra = "") const;
  std::string name_, help_;
  Kind kind_;
  std::vector<std::string> labels_;
  std::vector<double> buckets_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, double> values_;
  std::map<std::vector<std::string>, Histogram> histograms_;
};

// Every metric the server keeps (docs/serving.md lists them).
struct ServerMetrics {
  ServerMetrics();
  MetricFamily requests;        // tessera_serve_requests_total{model,version,protocol,status}
  MetricFamily failures;        // tessera_serve_request_failures_total{model,version,protocol,status}
  MetricFamily latency;         // tessera_serve_request_duration_seconds{model,protocol}
  MetricFamily queue_time;      // tessera_serve_queue_duration_seconds{model}
  MetricFamily batch_size;      // tessera_serve_batch_size{model}, per request
  MetricFamily loaded;          // tessera_serve_version_loaded{model,version} (1 while loaded)
  MetricFamily swaps;           // tessera_serve_swaps_total{model}
  MetricFamily load_failures;   // tessera_serve_load_failures_total{model,version}
  MetricFamily in_flight;       // tessera_serve_requests_in_flight
  // The whole exposition, with process_resident_memory_bytes read now.
  std::string Render() const;
};

// This process's resident set size in bytes (from /proc/self/statm), 0 when unreadable.
int64_t ResidentBytes();

// Escapes a label value for the exposition format.
std::string EscapeLabel(const std::string& v);

}  // namespace tessera::serve
