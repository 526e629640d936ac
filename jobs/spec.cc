#include "jobs/spec.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/io/durable.h"
#include "core/model_spec.h"
#include "core/models.h"
#include "store/store.h"

namespace tessera::jobs {
namespace pb = google::protobuf;

namespace {

// The dotted path of the field whose value sits at (line, column) of a text-format message, found
// by following `name {` / `}` nesting up to that point: protobuf's own messages for a bad value
// ("Expected integer, got: \"five\"") do not say which field it was.
std::string FieldPathAt(const std::string& text, int line, int column) {
  std::vector<std::string> stack;
  std::string last_ident, pending;
  int l = 0, c = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (l > line || (l == line && c >= column)) break;
    char ch = text[i];
    if (ch == '\n') {
      ++l;
      c = 0;
      continue;
    }
    c = ch == '\t' ? c + 8 - c % 8 : c + 1;  // protobuf's tokenizer counts tabs to multiples of 8
    if (ch == '#') {                         // comment to end of line
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
      continue;
    }
    if (ch == '"' || ch == '\'') {  // skip a string literal
      char q = ch;
      while (i + 1 < text.size() && text[i + 1] != q && text[i + 1] != '\n') {
        if (text[i + 1] == '\\') ++i, ++c;
        ++i, ++c;
      }
      ++i, ++c;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
      std::string id(1, ch);
      while (i + 1 < text.size() &&
             (std::isalnum(static_cast<unsigned char>(text[i + 1])) || text[i + 1] == '_')) {
        id += text[++i];
        ++c;
      }
      last_ident = id;
      continue;
    }
    if (ch == ':') pending = last_ident;
    if (ch == '{' || ch == '<') {
      stack.push_back(last_ident);
      pending.clear();
    }
    if (ch == '}' || ch == '>') {
      if (!stack.empty()) stack.pop_back();
      pending.clear();
    }
  }
  std::string path;
  for (const auto& s : stack) path += s + ".";
  return pending.empty() ? "" : path + pending;
}

class Collector : public pb::io::ErrorCollector {
 public:
  explicit Collector(std::string source, const std::string* text = nullptr)
      : source_(std::move(source)), text_(text) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    // Messages about a field name already name it; the scan would point at the field before.
    const bool names_field = message.find("has no field named") != std::string::npos ||
                             message.find("specified multiple times") != std::string::npos;
    std::string field = text_ && !names_field ? FieldPathAt(*text_, line, column) : "";
    errors_.push_back(detail::StrCat(source_, ":", line + 1, ":", column + 1, ": ",
                                     field.empty() ? "" : field + ": ", message));
  }
  void AddWarning(int line, pb::io::ColumnNumber column, const std::string& message) override {
    AddError(line, column, message);
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string source_;
  const std::string* text_;
  std::vector<std::string> errors_;
};

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += (out.empty() ? "" : "\n") + l;
  return out;
}

// A job spec is a small regular file: not a directory (once parsed as an empty spec), and not
// /dev/zero or a FIFO (once read without end).
constexpr int64_t kMaxSpecBytes = 16 << 20;

std::string ReadFile(const std::string& path) {
  try {
    return io::ReadSmallFile(path, kMaxSpecBytes, "a job spec");
  } catch (const IoError& e) {
    TESSERA_THROW(ConfigError, e.what());
  }
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// "" when `path` is a regular file; else what it is instead, for the message.
std::string NotARegularFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "file not found: " + path;
  if (S_ISREG(st.st_mode)) return "";
  if (S_ISDIR(st.st_mode)) return "is a directory, not a data file: " + path;
  return "is not a regular file (a device, FIFO or socket): " + path;
}

// Where each field came from: a location in the file, or the override that set it.
class Locator {
 public:
  Locator(std::string source, const pb::TextFormat::ParseInfoTree* tree)
      : source_(std::move(source)), tree_(tree) {}

  void NoteOverride(const std::string& path, const std::string& assignment) { overrides_[path] = assignment; }

  // "file:line:col" of the deepest part of `path` present in the file, or the override.
  std::string Where(const pb::Message& root, const std::string& path) const {
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

 private:
  std::string source_;
  const pb::TextFormat::ParseInfoTree* tree_;
  std::map<std::string, std::string> overrides_;
};

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

void ResolvePath(std::string* p, const std::string& base) {
  if (!p->empty() && (*p)[0] != '/') *p = base + "/" + *p;
}

void ResolvePaths(JobSpec& s, const std::string& base) {
  DataSpec* d = s.mutable_data();
  for (std::string* p : {d->mutable_train_images(), d->mutable_train_labels(), d->mutable_test_images(),
                         d->mutable_test_labels(), d->mutable_train_path(), d->mutable_test_path()})
    ResolvePath(p, base);
}

}  // namespace

JobSpec ParseJobSpec(const std::string& text, const std::string& source) {
  JobSpec spec;
  Collector errors(source, &text);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &spec) || !errors.errors().empty())
    TESSERA_THROW(ConfigError, Join(errors.errors()));
  return spec;
}

void ApplyOverride(JobSpec& spec, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    TESSERA_THROW(ConfigError, "--set ", assignment, ": expected FIELD.PATH=VALUE, e.g. train.epochs=1");
  std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  pb::Message* msg = &spec;
  std::stringstream ss(path);
  std::string part, walked;
  std::vector<std::string> parts;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* desc = msg->GetDescriptor();
    const pb::FieldDescriptor* f = desc->FindFieldByName(parts[i]);
    std::string where = walked.empty() ? "the job spec" : walked;
    if (!f) {
      std::string names;
      for (int k = 0; k < desc->field_count(); ++k) names += (k ? ", " : "") + desc->field(k)->name();
      TESSERA_THROW(ConfigError, "--set ", assignment, ": no field '", parts[i], "' in ", where, " (",
                    desc->name(), "); its fields are: ", names);
    }
    walked += (walked.empty() ? "" : ".") + parts[i];
    const pb::Reflection* r = msg->GetReflection();
    // A field of a oneof other than the one the spec chose (model.mlp.hidden on a cnn model) would
    // silently replace the whole choice. Switching takes an explicit FIELD={} first.
    const bool select =
        i + 1 == parts.size() && f->type() == pb::FieldDescriptor::TYPE_MESSAGE && value == "{}";
    if (const pb::OneofDescriptor* o = f->containing_oneof(); o && !select) {
      const pb::FieldDescriptor* chosen = r->GetOneofFieldDescriptor(*msg, o);
      if (chosen && chosen != f) {
        const std::string parent = walked.substr(0, walked.size() - parts[i].size());
        TESSERA_THROW(ConfigError, "--set ", assignment, ": the spec's ", o->name(), " is ", parent,
                      chosen->name(), "; setting ", walked, " would replace it with ", parts[i],
                      " and drop every ", chosen->name(), " setting. To switch on purpose, give --set ",
                      walked, "={} first");
      }
    }
    if (select) {  // FIELD={}: choose this message (the oneof member) with its defaults
      r->MutableMessage(msg, f)->Clear();
      return;
    }
    if (i + 1 < parts.size()) {
      if (f->type() != pb::FieldDescriptor::TYPE_MESSAGE || f->is_repeated())
        TESSERA_THROW(ConfigError, "--set ", assignment, ": ", walked,
                      " is not a message, so it has no field '", parts[i + 1], "'");
      msg = r->MutableMessage(msg, f);
      continue;
    }
    if (f->type() == pb::FieldDescriptor::TYPE_MESSAGE)
      TESSERA_THROW(ConfigError, "--set ", assignment, ": ", walked,
                    " is a message; set one of its fields, e.g. ", walked, ".",
                    f->message_type()->field(0)->name(), "=... (or ", walked, "={} for its defaults)");
    std::vector<std::string> values;
    if (f->is_repeated()) {
      r->ClearField(msg, f);
      std::stringstream vs(value);
      std::string item;
      while (std::getline(vs, item, ',')) values.push_back(item);
    } else {
      values.push_back(value);
    }
    for (const std::string& item : values) {
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
        if (f->is_repeated())
          r->AddString(msg, f, item);
        else
          r->SetString(msg, f, item);
        continue;
      }
      Collector quiet("--set");
      pb::TextFormat::Parser value_parser;
      value_parser.RecordErrorsTo(&quiet);
      if (!value_parser.ParseFieldValueFromString(item, f, msg)) {
        std::string type = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM
                               ? "one of the names of " + f->enum_type()->name()
                               : std::string("a valid ") + f->type_name();
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
          type += " (";
          for (int k = 0; k < f->enum_type()->value_count(); ++k)
            type += (k ? ", " : "") + f->enum_type()->value(k)->name();
          type += ")";
        }
        TESSERA_THROW(ConfigError, "--set ", assignment, ": '", item, "' is not ", type, " for ", walked);
      }
    }
  }
}

namespace {
// Sets unset singular fields that have defaults, recursively through message fields.
void FillMessageDefaults(pb::Message* msg) {
  const pb::Descriptor* d = msg->GetDescriptor();
  const pb::Reflection* r = msg->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->containing_oneof()) {
      if (r->HasField(*msg, f)) FillMessageDefaults(r->MutableMessage(msg, f));
      continue;
    }
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        FillMessageDefaults(r->MutableMessage(msg, f));
        break;
      case pb::FieldDescriptor::CPPTYPE_INT32:
        if (!r->HasField(*msg, f)) r->SetInt32(msg, f, f->default_value_int32());
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        if (!r->HasField(*msg, f)) r->SetInt64(msg, f, f->default_value_int64());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        if (!r->HasField(*msg, f)) r->SetUInt32(msg, f, f->default_value_uint32());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        if (!r->HasField(*msg, f)) r->SetUInt64(msg, f, f->default_value_uint64());
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        if (!r->HasField(*msg, f)) r->SetDouble(msg, f, f->default_value_double());
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        if (!r->HasField(*msg, f)) r->SetFloat(msg, f, f->default_value_float());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        if (!r->HasField(*msg, f)) r->SetBool(msg, f, f->default_value_bool());
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        if (!r->HasField(*msg, f)) r->SetEnum(msg, f, f->default_value_enum());
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        if (!r->HasField(*msg, f)) r->SetString(msg, f, f->default_value_string());
        break;
    }
  }
}
}  // namespace

void FillDefaults(JobSpec& spec) {
  // Defaults that depend on other fields or are lists.
  if (!spec.optimizer().has_weight_decay())
    spec.mutable_optimizer()->set_weight_decay(spec.optimizer().kind() == OptimizerSpec::ADAMW ? 0.01 : 0.0);
  if (spec.model().has_mlp() && spec.model().mlp().hidden_size() == 0) {
    spec.mutable_model()->mutable_mlp()->add_hidden(512);
    spec.mutable_model()->mutable_mlp()->add_hidden(256);
  }
  if (spec.model().has_cnn()) {
    CnnSpec* c = spec.mutable_model()->mutable_cnn();
    if (c->channels_size() == 0) {
      c->add_channels(32);
      c->add_channels(64);
    }
    if (c->hidden_size() == 0) c->add_hidden(128);
  }
  if (spec.model().has_gpt()) {
    if (spec.data().sequence_length() == 0)
      spec.mutable_data()->set_sequence_length(spec.model().gpt().context());
    // 1000 sequences of logits over the vocabulary would not fit: evaluate in training-sized batches.
    if (!spec.data().has_eval_batch_size())
      spec.mutable_data()->set_eval_batch_size(spec.data().batch_size());
  }
  FillMessageDefaults(&spec);
}

std::string ToText(const JobSpec& spec) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(spec, &out);
  return out;
}

namespace {
void FillDefaultsAndValidate(JobSpec& spec, const Locator& loc, bool check_files) {
  FillDefaults(spec);
  Validator v(spec, loc);
  ValidateModel(spec, v);
  ValidateData(spec, v, check_files);
  ValidateOptimizer(spec, v);
  ValidateRest(spec, v);
  if (!v.errors().empty()) TESSERA_THROW(ConfigError, Join(v.errors()));
}
}  // namespace

JobSpec LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides, bool check_files) {
  std::string text = ReadFile(path);
  JobSpec spec;
  Collector errors(path, &text);
  pb::TextFormat::Parser parser;
  pb::TextFormat::ParseInfoTree tree;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &spec) || !errors.errors().empty())
    TESSERA_THROW(ConfigError, Join(errors.errors()));
  // Paths in the file are relative to the file; paths given with --set, to the working directory.
  ResolvePaths(spec, Dirname(path));
  Locator loc(path, &tree);
  for (const std::string& o : overrides) {
    ApplyOverride(spec, o);
    loc.NoteOverride(o.substr(0, o.find('=')), o);
  }
  FillDefaultsAndValidate(spec, loc, check_files);
  return spec;
}

void ValidateJobSpec(JobSpec& spec, const std::string& source, bool check_files) {
  FillDefaultsAndValidate(spec, Locator(source, nullptr), check_files);
}

}  // namespace tessera::jobs
