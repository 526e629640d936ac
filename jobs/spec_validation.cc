#include "jobs/spec_validation.h"

#include <sys/stat.h>

#include <functional>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/model_spec.h"
#include "core/models.h"
#include "store/store.h"

namespace tessera::jobs::internal {
namespace pb = google::protobuf;

std::string Locator::Where(const pb::Message& root, const std::string& path) const {
  for (auto& [p, a] : overrides_)
    if (path == p || path.rfind(p + ".", 0) == 0) return "--set " + a;
  const pb::TextFormat::ParseInfoTree* tree = tree_;
  const pb::Descriptor* desc = root.GetDescriptor();
  std::string best = source_;
  std::stringstream ss(path);
  std::string part;
  while (tree && desc && std::getline(ss, part, '.')) {
    const pb::FieldDescriptor* f = desc->FindFieldByName(part);
    if (!f) break;
    pb::TextFormat::ParseLocation loc = tree->GetLocation(f, f->is_repeated() ? 0 : -1);
    if (loc.line < 0) break;
    best = detail::StrCat(source_, ":", loc.line + 1, ":", loc.column + 1);
    if (f->type() != pb::FieldDescriptor::TYPE_MESSAGE) break;
    tree = tree->GetTreeForNested(f, f->is_repeated() ? 0 : -1);
    desc = f->message_type();
  }
  return best;
}

namespace {

// "" when `path` is a regular file; else what it is instead, for the message.
std::string NotARegularFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "file not found: " + path;
  if (S_ISREG(st.st_mode)) return "";
  if (S_ISDIR(st.st_mode)) return "is a directory, not a data file: " + path;
  return "is not a regular file (a device, FIFO or socket): " + path;
}

class Validator {
 public:
  Validator(const JobSpec& spec, const Locator& loc) : spec_(spec), loc_(loc) {}
  void Require(bool ok, const std::string& path, const std::string& message) {
    if (!ok) errors_.push_back(detail::StrCat(loc_.Where(spec_, path), ": ", path, ": ", message));
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  const JobSpec& spec_;
  const Locator& loc_;
  std::vector<std::string> errors_;
};

// 2^40 parameters: 4.4 TB of fp32 weights, beyond any one process's memory.
constexpr int64_t kMaxParameters = int64_t{1} << 40;
// A batch's example offsets are multiplied by steps and ranks: 2^31 keeps them far from overflow.
constexpr int64_t kMaxBatch = int64_t{1} << 31;

template <typename T>
std::string Got(T v) {
  return detail::StrCat(", got ", v);
}

void ValidateModel(const JobSpec& s, Validator& v) {
  const ModelSpec& m = s.model();
  const size_t errors_before = v.errors().size();
  v.Require(m.family_case() != ModelSpec::FAMILY_NOT_SET, "model",
            "choose a model family: model { mlp { ... } }, model { cnn { ... } } or model { gpt { ... } }");
  if (m.has_gpt()) {
    const GptSpec& g = m.gpt();
    for (auto [field, value] :
         {std::pair{"layers", g.layers()}, std::pair{"heads", g.heads()}, std::pair{"width", g.width()},
          std::pair{"context", g.context()}, std::pair{"vocab", g.vocab()}})
      v.Require(value >= 1, std::string("model.gpt.") + field, "must be >= 1" + Got(value));
    for (auto [field, value, most] : {std::tuple{"layers", g.layers(), models::kMaxGptLayers},
                                      std::tuple{"width", g.width(), models::kMaxGptWidth},
                                      std::tuple{"context", g.context(), models::kMaxGptContext},
                                      std::tuple{"vocab", g.vocab(), models::kMaxGptVocab}})
      v.Require(value <= most, std::string("model.gpt.") + field,
                detail::StrCat("must be at most ", most, Got(value)));
    v.Require(g.heads() < 1 || g.width() % g.heads() == 0, "model.gpt.width",
              detail::StrCat("must be a multiple of model.gpt.heads (", g.heads(), ")", Got(g.width())));
    v.Require(g.dropout() >= 0 && g.dropout() < 1, "model.gpt.dropout",
              "must be in [0, 1)" + Got(g.dropout()));
    v.Require(
        s.parallel().zero_stage() < 3, "parallel.zero_stage",
        "stage 3 does not take model.gpt yet: its output head shares the token embedding, which stage 3 "
        "would give back after the first layer; use stage 0, 1 or 2");
    v.Require(s.data().kind() == DataSpec::TOKENS, "data.kind",
              "model.gpt reads token ids: set data { kind: TOKENS train_path: ... test_path: ... } (`tessera "
              "corpus` builds them from text)");
  }
  if (m.has_mlp()) {
    const MlpSpec& p = m.mlp();
    v.Require(p.in_features() > 0, "model.mlp.in_features", "must be > 0" + Got(p.in_features()));
    for (int i = 0; i < p.hidden_size(); ++i)
      v.Require(p.hidden(i) > 0, "model.mlp.hidden",
                detail::StrCat("entry ", i, " must be > 0", Got(p.hidden(i))));
    v.Require(p.out_features() > 0, "model.mlp.out_features", "must be > 0" + Got(p.out_features()));
    v.Require(p.dropout() >= 0 && p.dropout() < 1, "model.mlp.dropout",
              "must be in [0, 1)" + Got(p.dropout()));
  }
  if (m.has_cnn()) {
    const CnnSpec& p = m.cnn();
    v.Require(p.in_channels() > 0, "model.cnn.in_channels", "must be > 0" + Got(p.in_channels()));
    v.Require(p.height() > 0 && p.width() > 0, "model.cnn.height", "height and width must be > 0");
    v.Require(p.kernel() >= 1 && p.kernel() % 2 == 1, "model.cnn.kernel",
              "must be odd and >= 1 (padding keeps the size)" + Got(p.kernel()));
    int64_t h = p.height(), w = p.width();
    for (int i = 0; i < p.channels_size(); ++i) {
      v.Require(p.channels(i) > 0, "model.cnn.channels",
                detail::StrCat("entry ", i, " must be > 0", Got(p.channels(i))));
      h /= 2;
      w /= 2;
    }
    v.Require(p.channels_size() == 0 || (h >= 1 && w >= 1), "model.cnn.channels",
              detail::StrCat(p.channels_size(), " pooling stages shrink a ", p.height(), "x", p.width(),
                             " input below 1x1"));
    for (int i = 0; i < p.hidden_size(); ++i)
      v.Require(p.hidden(i) > 0, "model.cnn.hidden",
                detail::StrCat("entry ", i, " must be > 0", Got(p.hidden(i))));
    v.Require(p.out_features() > 0, "model.cnn.out_features", "must be > 0" + Got(p.out_features()));
    v.Require(p.dropout() >= 0 && p.dropout() < 1, "model.cnn.dropout",
              "must be in [0, 1)" + Got(p.dropout()));
  }
  if (v.errors().size() == errors_before && m.family_case() != ModelSpec::FAMILY_NOT_SET) {
    // The sizes are positive: bound what they multiply to.
    const int64_t n = models::ParameterCount(m);
    const std::string field = std::string("model.") + models::FamilyName(m);
    v.Require(n >= 0, field, "the layer sizes multiply past 2^63 parameters");
    v.Require(
        n < 0 || n <= kMaxParameters, field,
        detail::StrCat("the layer sizes give ", n, " parameters (", n * 4.0 / 1e9,
                       " GB of fp32 weights alone); the most one process can hold is ", kMaxParameters));
  }
}

// Token ids take no normalisation or augmentation, and feed a GPT no longer than its context.
void ValidateTokenData(const JobSpec& s, Validator& v) {
  const DataSpec& d = s.data();
  v.Require(s.model().has_gpt(), "data.kind", "TOKENS feeds a language model: set model { gpt { ... } }");
  v.Require(d.sequence_length() >= 0, "data.sequence_length",
            "must be >= 0 (0: the model's context)" + Got(d.sequence_length()));
  if (s.model().has_gpt())
    v.Require(d.sequence_length() <= s.model().gpt().context(), "data.sequence_length",
              detail::StrCat("must be at most model.gpt.context (", s.model().gpt().context(), ")",
                             Got(d.sequence_length())));
  const Normalize& n = d.normalize();
  v.Require(n.scale() == 1 && n.mean_size() == 0 && n.std_size() == 0, "data.normalize",
            "does not apply to token ids; remove it");
  v.Require(d.augment().random_crop_padding() == 0 && !d.augment().horizontal_flip(), "data.augment",
            "does not apply to token ids; remove it");
}

void ValidateData(const JobSpec& s, Validator& v, bool check_files) {
  const DataSpec& d = s.data();
  auto file = [&](const std::string& field, const std::string& value) {
    v.Require(!value.empty(), "data." + field, "is required for kind " + DataSpec::Kind_Name(d.kind()));
    if (!value.empty() && check_files) {
      const std::string problem = NotARegularFile(value);
      v.Require(problem.empty(), "data." + field, problem);
    }
  };
  if (d.kind() == DataSpec::IDX) {
    file("train_images", d.train_images());
    file("train_labels", d.train_labels());
    file("test_images", d.test_images());
    file("test_labels", d.test_labels());
  } else {
    file("train_path", d.train_path());
    file("test_path", d.test_path());
    if (d.kind() == DataSpec::CSV)
      v.Require(!d.label_column().empty(), "data.label_column", "must name a column");
  }
  if (d.kind() == DataSpec::TOKENS) ValidateTokenData(s, v);
  v.Require(d.batch_size() >= 1 && d.batch_size() <= kMaxBatch, "data.batch_size",
            detail::StrCat("must be in [1, ", kMaxBatch, "]", Got(d.batch_size())));
  int dp = s.parallel().data();
  v.Require(dp < 1 || d.batch_size() < 1 || d.batch_size() % dp == 0, "data.batch_size",
            detail::StrCat("the global batch ", d.batch_size(),
                           " must divide evenly over parallel.data = ", dp, " ranks"));
  v.Require(d.prefetch() >= 1, "data.prefetch", "must be >= 1" + Got(d.prefetch()));
  v.Require(d.eval_batch_size() >= 1 && d.eval_batch_size() <= kMaxBatch, "data.eval_batch_size",
            detail::StrCat("must be in [1, ", kMaxBatch, "]", Got(d.eval_batch_size())));
  const Normalize& n = d.normalize();
  v.Require(n.scale() != 0, "data.normalize.scale", "must not be 0");
  v.Require(n.mean_size() == n.std_size(), "data.normalize.mean",
            detail::StrCat("mean has ", n.mean_size(), " values but std has ", n.std_size()));
  for (int i = 0; i < n.std_size(); ++i)
    v.Require(n.std(i) > 0, "data.normalize.std", detail::StrCat("entry ", i, " must be > 0", Got(n.std(i))));
  v.Require(d.augment().random_crop_padding() >= 0, "data.augment.random_crop_padding", "must be >= 0");
}

void ValidateOptimizer(const JobSpec& s, Validator& v) {
  const OptimizerSpec& o = s.optimizer();
  v.Require(o.lr() > 0, "optimizer.lr", "must be > 0" + Got(o.lr()));
  v.Require(o.weight_decay() >= 0, "optimizer.weight_decay", "must be >= 0" + Got(o.weight_decay()));
  v.Require(o.momentum() >= 0, "optimizer.momentum", "must be >= 0" + Got(o.momentum()));
  // Adam and RMSprop divide by sqrt(v) + eps, and v is 0 for a weight whose gradient has been 0.
  const bool divides = o.kind() == OptimizerSpec::ADAM || o.kind() == OptimizerSpec::ADAMW ||
                       o.kind() == OptimizerSpec::RMSPROP;
  v.Require(divides ? o.eps() > 0 : o.eps() >= 0, "optimizer.eps",
            std::string(divides ? "must be > 0 (it keeps " + OptimizerSpec::Kind_Name(o.kind()) +
                                      "'s division finite)"
                                : "must be >= 0") +
                Got(o.eps()));
  v.Require(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1", "must be in [0, 1)" + Got(o.beta1()));
  v.Require(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2", "must be in [0, 1)" + Got(o.beta2()));
  v.Require(o.alpha() >= 0 && o.alpha() < 1, "optimizer.alpha", "must be in [0, 1)" + Got(o.alpha()));
  v.Require(o.clip_grad_norm() >= 0, "optimizer.clip_grad_norm",
            "must be >= 0 (0 turns clipping off)" + Got(o.clip_grad_norm()));
  v.Require(!o.nesterov() || (o.kind() == OptimizerSpec::SGD && o.momentum() > 0 && o.dampening() == 0),
            "optimizer.nesterov", "needs kind: SGD with momentum > 0 and dampening 0");
  v.Require(o.momentum() == 0 || o.kind() == OptimizerSpec::SGD || o.kind() == OptimizerSpec::RMSPROP,
            "optimizer.momentum", "applies to SGD and RMSPROP only (Adam's is beta1)");
  const ScheduleSpec& sc = o.schedule();
  v.Require(sc.step_size() >= 1, "optimizer.schedule.step_size", "must be >= 1" + Got(sc.step_size()));
  v.Require(sc.gamma() > 0, "optimizer.schedule.gamma", "must be > 0" + Got(sc.gamma()));
  v.Require(sc.warmup_steps() >= 0, "optimizer.schedule.warmup_steps",
            "must be >= 0" + Got(sc.warmup_steps()));
  v.Require(sc.min_lr() >= 0 && (o.lr() <= 0 || sc.min_lr() <= o.lr()), "optimizer.schedule.min_lr",
            "must be in [0, optimizer.lr]" + Got(sc.min_lr()));
}

// publish { ... } and train.init_from: names the store accepts, a reference that parses (and, when
// files are checked, resolves).
void ValidatePublish(const JobSpec& s, Validator& v) {
  auto check = [&](const char* field, const std::function<void()>& fn) {
    try {
      fn();
    } catch (const Error& e) {
      v.Require(false, field, e.what());
    }
  };
  const PublishSpec& p = s.publish();
  if (!p.store().empty()) {
    check(p.model().empty() ? "name" : "publish.model",
          [&] { store::ValidateModelName(p.model().empty() ? s.name() : p.model()); });
    if (!p.alias().empty()) check("publish.alias", [&] { store::ValidateAliasName(p.alias()); });
  }
  if (s.model().has_gpt())
    v.Require(p.metric() == "test_accuracy" || p.metric() == "test_perplexity" || p.metric() == "test_loss",
              "publish.metric",
              "must be test_accuracy (next token), test_perplexity or test_loss for model.gpt, got '" +
                  p.metric() + "'");
  else
    v.Require(p.metric() == "test_accuracy" || p.metric() == "test_f1" || p.metric() == "test_loss",
              "publish.metric", "must be test_accuracy, test_f1 or test_loss, got '" + p.metric() + "'");
  // Only the form is checked here: a requeued fine-tune resumes from its own checkpoint and needs
  // its parent no more (which may have been deleted since). A fresh start resolves it.
  const std::string& init = s.train().init_from();
  if (init.rfind("store://", 0) == 0) check("train.init_from", [&] { store::ParseVersionRef(init); });
}

// The name becomes a directory, runs/NAME-YYYYmmdd-HHMMSS: it must stay one component inside runs/.
bool SafeInPath(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-' ||
      name.find("..") != std::string::npos)
    return false;
  for (char c : name)
    if (c == '/' || c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  return true;
}

void ValidateRest(const JobSpec& s, Validator& v) {
  v.Require(SafeInPath(s.name()), "name",
            "'" + s.name() +
                "' cannot name a run directory: use up to 128 characters, no '/', '\\', '..' or control "
                "characters, not starting with '.' or '-'");
  const TrainSpec& t = s.train();
  v.Require(t.steps() > 0 || t.epochs() >= 1, "train.epochs",
            "must be >= 1 (or set train.steps)" + Got(t.epochs()));
  v.Require(t.steps() >= 0, "train.steps", "must be >= 0 (0: use train.epochs)" + Got(t.steps()));
  v.Require(t.log_every_steps() >= 1, "train.log_every_steps", "must be >= 1" + Got(t.log_every_steps()));
  v.Require(t.eval_every_steps() >= 0, "train.eval_every_steps",
            "must be >= 0 (0: every epoch)" + Got(t.eval_every_steps()));
  v.Require(t.threads() >= 1 && t.threads() <= 1024, "train.threads",
            "must be in [1, 1024]" + Got(t.threads()));
  v.Require(t.accumulate_steps() >= 1, "train.accumulate_steps", "must be >= 1" + Got(t.accumulate_steps()));
  const ParallelSpec& p = s.parallel();
  v.Require(p.data() >= 0, "parallel.data", "must be >= 0 (0: every launched rank)" + Got(p.data()));
  v.Require(p.zero_stage() >= 0 && p.zero_stage() <= 3, "parallel.zero_stage",
            "must be 0, 1, 2 or 3" + Got(p.zero_stage()));
  v.Require(p.tensor() >= 1, "parallel.tensor", "must be >= 1" + Got(p.tensor()));
  v.Require(p.pipeline() >= 1, "parallel.pipeline", "must be >= 1" + Got(p.pipeline()));
  v.Require(p.collective_timeout_s() > 0, "parallel.collective_timeout_s",
            "must be > 0" + Got(p.collective_timeout_s()));
  v.Require(p.bucket_size_mb() > 0, "parallel.bucket_size_mb", "must be > 0" + Got(p.bucket_size_mb()));
  // Accepted by the schema but not implemented by this version: refuse rather than ignore.
  v.Require(p.tensor() == 1, "parallel.tensor",
            "tensor parallelism is not available in this version yet (use 1)");
  v.Require(p.pipeline() == 1, "parallel.pipeline",
            "pipeline parallelism is not available in this version yet (use 1)");
  const CheckpointSpec& c = s.checkpoint();
  v.Require(c.every_steps() >= 0, "checkpoint.every_steps", "must be >= 0" + Got(c.every_steps()));
  v.Require(c.every_minutes() >= 0, "checkpoint.every_minutes", "must be >= 0" + Got(c.every_minutes()));
  v.Require(c.keep_last() >= 1, "checkpoint.keep_last", "must be >= 1" + Got(c.keep_last()));
  v.Require(std::isfinite(c.min_io_mb_per_s()) && c.min_io_mb_per_s() > 0, "checkpoint.min_io_mb_per_s",
            "must be a rate > 0 MB/s" + Got(c.min_io_mb_per_s()));
  ValidatePublish(s, v);
}

}  // namespace

std::vector<std::string> Validate(const JobSpec& spec, const Locator& locator, bool check_files) {
  Validator v(spec, locator);
  ValidateModel(spec, v);
  ValidateData(spec, v, check_files);
  ValidateOptimizer(spec, v);
  ValidateRest(spec, v);
  return v.errors();
}

}  // namespace tessera::jobs::internal
