// tessera corpus (text files -> train and test token files) and tessera generate (text from a
// trained GPT).
#include <cstdio>
#include <memory>

#include "datasets/text.h"
#include "jobs/generate.h"
#include "launch/commands.h"

namespace tessera::launch {

namespace {

Command AddCorpus(CLI::App& app) {
  auto o = std::make_shared<datasets::CorpusOptions>();
  CLI::App* c = app.add_subcommand(
      "corpus",
      "Build a language-model corpus from text files: byte-level train.bin and test.bin token files "
      "(llm.c's layout) for data { kind: TOKENS }");
  c->add_option("inputs", o->inputs,
                "Text files or directories (e.g. /usr/share/games/fortunes, from Debian's fortunes package); "
                "lines holding only '%' separate documents")
      ->required();
  c->add_option("-o,--out", o->out_dir, "The directory that receives train.bin and test.bin")->required();
  c->add_option("--test-every", o->test_every, "Every n-th document goes to the test split")
      ->capture_default_str();
  return {c, [o] {
            datasets::CorpusSummary s = datasets::BuildCorpus(*o);
            std::printf("corpus: %lld documents from %lld files\n  %s  %lld tokens\n  %s  %lld tokens\n",
                        static_cast<long long>(s.documents), static_cast<long long>(s.files),
                        s.train_path.c_str(), static_cast<long long>(s.train_tokens), s.test_path.c_str(),
                        static_cast<long long>(s.test_tokens));
            return 0;
          }};
}

Command AddGenerate(CLI::App& app) {
  struct Args {
    std::string reference, prompt = "\n";
    jobs::SampleOptions sample;
  };
  auto a = std::make_shared<Args>();
  CLI::App* g =
      app.add_subcommand("generate", "Print text a trained GPT writes after a prompt (byte-level tokens)");
  g->add_option("model", a->reference,
                "A checkpoint (file, step directory, run directory: its latest) or a store version "
                "(store://ROOT/MODEL@ALIAS, store://ROOT/MODEL/3)")
      ->required();
  g->add_option("-p,--prompt", a->prompt, "The text to continue (default: a newline)");
  g->add_option("-n,--tokens", a->sample.max_new_tokens, "How many tokens to generate")
      ->capture_default_str();
  g->add_option("-t,--temperature", a->sample.temperature, "Softmax temperature; 0 is greedy")
      ->capture_default_str();
  g->add_option("-k,--top-k", a->sample.top_k, "Sample among the k most likely tokens (0: all)")
      ->capture_default_str();
  g->add_option("--seed", a->sample.seed, "Seed of the sampling")->capture_default_str();
  return {g, [a] {
            jobs::ValidateSampleOptions(a->sample);
            jobs::LoadedGpt gpt = jobs::LoadGpt(a->reference);
            std::fprintf(stderr, "tessera: %s\n", gpt.description.c_str());
            std::vector<int32_t> prompt;
            for (uint16_t t : datasets::EncodeBytes(a->prompt)) prompt.push_back(t);
            std::fputs(a->prompt.c_str(), stdout);
            jobs::Generate(gpt, prompt, a->sample, [](int32_t t) {
              std::fputs(datasets::DecodeBytes({t}).c_str(), stdout);
              std::fflush(stdout);
            });
            std::fputc('\n', stdout);
            return 0;
          }};
}

}  // namespace

std::vector<Command> AddTextCommands(CLI::App& app) { return {AddCorpus(app), AddGenerate(app)}; }

}  // namespace tessera::launch
