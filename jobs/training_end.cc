// TrainingRun (jobs/training_run.h): the end of a run -- publishing and the summary.
#include "jobs/training_run.h"

namespace tessera::jobs::internal {

namespace fs = std::filesystem;


// that it failed, from rank 0: one broadcast on every rank, whatever rank 0 found.
void TrainingRun::PublishIfAsked() {
  const PublishSpec& p = spec_.publish();
  if (p.store().empty()) return;
  WholeParameters whole(*dp_);  // stage 3: rank 0 publishes the whole model
  summary_.published_model = p.model().empty() ? spec_.name() : p.model();
  std::string error;
  store::PublishResult result;
  bool again = false;  // a finished run evaluated again, already published: nothing new
  if (lead_) {
    try {
      if (already_complete_) {
        std::ifstream in(opt_.run_dir + "/summary.json");
        json s = json::parse(in, nullptr, false);
        if (!s.is_discarded() && s.value("published_version", int64_t{0}) > 0) {
          result.version = s["published_version"].get<int64_t>();
          result.dir = s.value("published_dir", "");
          again = true;
        }
      }
      if (!again) {
        const bool best = p.when() == PublishSpec::BEST && best_step_ >= 0;
        const EvalResult& eval = best ? best_eval_ : last_eval_;
        const int64_t at = best ? best_step_ : step_;
        std::map<std::string, double> metrics;
        const json evaluation = EvalJson(eval);
        for (auto& [name, value] : evaluation.items()) metrics[name] = value.get<double>();
        const std::vector<store::FileDigest> datasets =
            dataset_digests_.valid() ? dataset_digests_.get() : DatasetDigests(spec_);
        store::Lineage lineage =
            LineageOf(spec_, at, world_, opt_.run_dir, best ? "" : summary_.checkpoint, init_.get(), &datasets);
        CheckWeightsFinite(best ? best_values_ : params_->values(), detail::StrCat("to publish (step ", at, ")"));
        result = PublishWeights(spec_, *params_, best ? best_values_ : params_->values(),
                                ArchitectureOf(spec_, train_data_->example_shape(), classes_), metrics, lineage);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int64_t version = error.empty() ? result.version : -1;
  if (group_) {
    Tensor v = Tensor::FromVector({static_cast<double>(version)}, {1}, DType::kF64);
    group_->Broadcast(v, 0, Collective())->Wait();
    version = static_cast<int64_t>(v.data<double>()[0]);
  }
  if (version <= 0) {
    if (!error.empty()) TESSERA_THROW(IoError, "publish to ", p.store(), ": ", error);
    TESSERA_THROW(IoError, "publish to ", p.store(), ": rank 0 could not publish (rank 0 reports why)");
  }
  summary_.published_version = version;
  summary_.published_dir = result.dir;
  if (again) {
    log_->Say("publish: already published as version %lld\n", static_cast<long long>(version));
    return;
  }
  log_->set_quiet(false);  // a finished run published only now records it
  log_->Emit({{"event", "publish"}, {"store", p.store()}, {"model", summary_.published_model}, {"version", version},
              {"alias", p.alias()}, {"dir", result.dir}, {"bytes", result.bytes}});
  log_->Say("publish: %s version %lld in %s%s%s\n", summary_.published_model.c_str(), static_cast<long long>(version),
            p.store().c_str(), p.alias().empty() ? "" : ", alias ", p.alias().c_str());
}

// summary.json gains the published version (rank 0).
void TrainingRun::RecordPublishInSummary() {
  if (!lead_ || summary_.published_version <= 0) return;
  const std::string path = opt_.run_dir + "/summary.json";
  std::ifstream in(path);
  json s = json::parse(in, nullptr, false);
  if (s.is_discarded() || !s.is_object()) s = json::object();
  s["published_store"] = spec_.publish().store();
  s["published_model"] = summary_.published_model;
  s["published_version"] = summary_.published_version;
  s["published_dir"] = summary_.published_dir;
  log_->WriteSummary(s);
}

void TrainingRun::WriteSummary() {
  summary_.steps = step_;
  summary_.epochs_completed = static_cast<int>(step_ / steps_per_epoch_);
  summary_.final_train_loss = last_window_loss_;
  summary_.test_loss = last_eval_.loss;
  summary_.test_accuracy = last_eval_.Accuracy();
  summary_.test_precision = last_eval_.cm.MacroPrecision();
  summary_.test_recall = last_eval_.cm.MacroRecall();
  summary_.test_f1 = last_eval_.cm.MacroF1();
  for (int r = 0; r < last_eval_.cm.num_classes(); ++r) {
    std::vector<int64_t> row;
    for (int c = 0; c < last_eval_.cm.num_classes(); ++c) row.push_back(last_eval_.cm.count(r, c));
    summary_.confusion_matrix.push_back(row);
  }
  summary_.train_seconds = train_seconds_;
  double rank_sps = train_seconds_ > 0 ? total_samples_ / train_seconds_ : 0;
  summary_.samples_per_sec = rank_sps;
  if (group_) {
    Tensor v = Tensor::FromVector({rank_sps}, {1}, DType::kF64);
    group_->AllReduce(v, Collective())->Wait();
    summary_.samples_per_sec = v.data<double>()[0];
  }
  summary_.wall_seconds = Seconds(t_start_, Clock::now());
  summary_.language_model = last_eval_.language_model;
  summary_.test_perplexity = last_eval_.language_model ? last_eval_.Perplexity() : 0;
  summary_.tokens_per_sec = summary_.samples_per_sec * static_cast<double>(tokens_per_example_);
  Tensor rss = Tensor::FromVector({static_cast<double>(ProcessMemoryBytes("VmHWM:")),
                                    static_cast<double>(between_steps_rss_)}, {2}, DType::kI64);
  if (group_) {
    Tensor all = Tensor::Empty({2 * world_}, DType::kI64);
    group_->AllGather(rss, all, Collective())->Wait();
    rss = all;
  }
  summary_.peak_rss_bytes.clear();
  summary_.between_steps_rss_bytes.clear();
  for (int r = 0; r < rss.numel() / 2; ++r) {
    summary_.peak_rss_bytes.push_back(rss.data<int64_t>()[2 * r]);
    summary_.between_steps_rss_bytes.push_back(rss.data<int64_t>()[2 * r + 1]);
  }
  if (!lead_) return;
  if (already_complete_ && fs::exists(opt_.run_dir + "/summary.json")) return;
  json s = {{"name", summary_.name},
            {"steps", summary_.steps},
            {"epochs_completed", summary_.epochs_completed},
            {"final_train_loss", summary_.final_train_loss},
            {"test_loss", summary_.test_loss},
            {"test_accuracy", summary_.test_accuracy},
            {"test_precision", summary_.test_precision},
            {"test_recall", summary_.test_recall},
            {"test_f1", summary_.test_f1},
            {"confusion_matrix", summary_.confusion_matrix},
            {"samples_per_sec", summary_.samples_per_sec},
            {"train_seconds", summary_.train_seconds},
            {"wall_seconds", summary_.wall_seconds},
            {"threads", t_.threads()},
            {"world_size", world_},
            {"zero_stage", summary_.zero_stage},
            {"memory_per_rank", {{"parameter_bytes", summary_.parameter_bytes},
                                 {"gradient_bytes", summary_.gradient_bytes},
                                 {"optimizer_state_bytes", summary_.optimizer_state_bytes},
                                 {"gathered_unit_bytes", summary_.gathered_unit_bytes}}},
            {"peak_rss_bytes", summary_.peak_rss_bytes},
            {"between_steps_rss_bytes", summary_.between_steps_rss_bytes},
            {"resumed_from_step", summary_.resumed_from_step},
            {"checkpoint", summary_.checkpoint},
            {"tessera_version", TESSERA_VERSION}};
  if (last_eval_.language_model) {  // no classes: perplexity and the next token's accuracy instead
    for (const char* k : {"test_precision", "test_recall", "test_f1", "confusion_matrix"}) s.erase(k);
    s["test_perplexity"] = last_eval_.Perplexity();
    s["test_tokens"] = last_eval_.tokens;
    s["tokens_per_sec"] = summary_.tokens_per_sec;
  }
  log_->WriteSummary(s);
}

}  // namespace tessera::jobs::internal
