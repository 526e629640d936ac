#include "jobs/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/model_spec.h"
#include "core/ops/ops.h"
#include "jobs/checkpoint.h"
#include "jobs/publish.h"
#include "jobs/spec.h"
#include "store/store.h"

namespace tessera::jobs {

void ValidateSampleOptions(const SampleOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    TESSERA_THROW(ConfigError, "--temperature must be a finite number >= 0 (0: greedy), got ", o.temperature);
  if (o.top_k < 0) TESSERA_THROW(ConfigError, "--top-k must be >= 0 (0: every token), got ", o.top_k);
  if (o.max_new_tokens < 0) TESSERA_THROW(ConfigError, "--tokens must be >= 0, got ", o.max_new_tokens);
}

int32_t SampleToken(const float* logits, int64_t vocab, const SampleOptions& o, PhiloxGenerator& gen) {
  if (o.temperature == 0) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = o.top_k > 0 && o.top_k < vocab ? o.top_k : vocab;
  // The k largest logits, ties broken by the lower id so that the draw does not depend on the sort.
  auto larger = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), larger);
  const double top = logits[ids[0]];
  std::vector<double> weight(static_cast<size_t>(k));
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += weight[i] = std::exp((logits[ids[i]] - top) / o.temperature);
  double u = gen.Uniform() * total;
  for (int64_t i = 0; i < k; ++i) {
    if (u < weight[i]) return ids[i];
    u -= weight[i];
  }
  return ids[k - 1];
}

namespace {

// The model spec a checkpoint or store version was trained with, and the length of the windows it
// was trained on (0: not recorded).
struct Trained {
  models::ModelSpec spec;
  int64_t sequence_length = 0;
};

Trained TrainedModelOf(const std::string& reference, const InitSource& source) {
  if (!source.from_store) {
    const JobSpec job = ParseJobSpec(ReadCheckpointInfo(source.weights_path).meta.job_spec, reference);
    return {job.model(), job.data().sequence_length()};
  }
  store::VersionRef ref = store::ParseVersionRef(reference);
  const store::Architecture a = store::Store(ref.root).ReadArchitecture(ref.model, source.parent.version());
  return {a.model(), a.input_shape_size() == 1 ? a.input_shape(0) : 0};
}

}  // namespace

LoadedGpt LoadGpt(const std::string& reference) {
  const InitSource source = ResolveInitFrom(reference);
  const Trained trained = TrainedModelOf(reference, source);
  const models::ModelSpec& spec = trained.spec;
  if (!spec.has_gpt())
    TESSERA_THROW(ConfigError, reference, " holds a ", models::DescribeModel(spec),
                  " model; generation needs a GPT");
  LoadedGpt g;
  g.context = spec.gpt().context();
  // Positions past the trained windows kept their initial embeddings: generate within them.
  if (trained.sequence_length > 0 && trained.sequence_length < g.context) g.context = trained.sequence_length;
  g.vocab = spec.gpt().vocab();
  g.net = models::BuildModel(spec, {spec.gpt().context()});
  g.params = std::make_unique<nn::FlatParameters>(*g.net);
  for (const std::string& line : InitFromWeights(source, *g.params))
    if (line.find(": loaded from ") == std::string::npos)
      TESSERA_THROW(ConfigError, reference, ": ", line, ": the weights do not hold the whole model");
  if (!std::isfinite(ops::SumSquares(g.params->values())))
    TESSERA_THROW(DataError, reference, ": the weights hold a NaN or infinity");
  g.net->SetTraining(false);
  g.description = detail::StrCat(models::DescribeModel(spec), " from ", source.weights_path,
                                 "; it sees the last ", g.context, " tokens");
  return g;
}

std::vector<int32_t> Generate(LoadedGpt& gpt, const std::vector<int32_t>& prompt, const SampleOptions& o,
                              const std::function<void(int32_t)>& on_token) {
  ValidateSampleOptions(o);
  if (prompt.empty()) TESSERA_THROW(ConfigError, "generation needs a prompt of at least one token");
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= gpt.vocab)
      TESSERA_THROW(ConfigError, "prompt token ", prompt[i], " at position ", i,
                    " is outside the model's vocabulary of ", gpt.vocab);
  PhiloxGenerator gen(o.seed, /*stream=*/0x6e78);
  std::vector<int32_t> tokens = prompt, out;
  for (int64_t n = 0; n < o.max_new_tokens; ++n) {
    const int64_t t = std::min<int64_t>(gpt.context, static_cast<int64_t>(tokens.size()));
    Tensor ids = Tensor::Empty({1, t}, DType::kI32);
    std::copy(tokens.end() - t, tokens.end(), ids.data<int32_t>());
    Tensor logits = gpt.net->Forward(ids);  // [1, t, vocab]
    const int32_t next = SampleToken(logits.data<float>() + (t - 1) * gpt.vocab, gpt.vocab, o, gen);
    tokens.push_back(next);
    out.push_back(next);
    if (on_token) on_token(next);
  }
  return out;
}

}  // namespace tessera::jobs
