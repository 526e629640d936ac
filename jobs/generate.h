// Text generation from a trained GPT (compare nanoGPT's sample.py): the model from a checkpoint or
// a model store version, and sampling one token at a time, greedy or with temperature and top-k.
//
// Each new token runs the model over the last `context` tokens (there is no key-value cache yet):
// fine for the small models a CPU trains, quadratic in the context for large ones.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "core/random.h"

namespace tessera::jobs {

struct SampleOptions {
  int64_t max_new_tokens = 256;
  double temperature = 0.8;  // 0: greedy (always the most likely token)
  int64_t top_k = 0;         // sample among the k most likely tokens (0: all of them)
  uint64_t seed = 0;
};

// Throws ConfigError naming the option for a negative or non-finite temperature, a negative
// top_k or max_new_tokens.
void ValidateSampleOptions(const SampleOptions& options);

// The next token from one position's logits [vocab]: the argmax when temperature is 0 (the lowest
// id among equal maxima); otherwise a draw from softmax(logits / temperature) over the top_k
// largest logits (all when top_k is 0 or >= vocab).
int32_t SampleToken(const float* logits, int64_t vocab, const SampleOptions& options, PhiloxGenerator& gen);

// A trained GPT, ready to run forward in inference mode.
struct LoadedGpt {
  std::unique_ptr<nn::Sequential> net;
  std::unique_ptr<nn::FlatParameters> params;
  int64_t context = 0, vocab = 0;  // context: the window it runs over (the trained sequence length)
  std::string description;         // "gpt 4 layers, ... from runs/x/checkpoints/step-00000100"
};

// Loads a GPT from `reference`: a checkpoint (a file, a step directory, a checkpoints or run
// directory: its latest) or a store version (store://ROOT/MODEL@ALIAS, store://ROOT/MODEL/3).
// ConfigError when it is not a GPT or a parameter is missing from its weights.
LoadedGpt LoadGpt(const std::string& reference);

// Extends `prompt` (at least one token) by options.max_new_tokens tokens and returns them (the
// prompt excluded), calling on_token with each as it is drawn. The model sees at most its last
// `context` tokens: the length of the windows it was trained on.
std::vector<int32_t> Generate(LoadedGpt& gpt, const std::vector<int32_t>& prompt,
                              const SampleOptions& options,
                              const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace tessera::jobs
