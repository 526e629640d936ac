#include "jobs/spec.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/io/durable.h"
#include "core/model_spec.h"
#include "jobs/spec_validation.h"

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
void FillDefaultsAndValidate(JobSpec& spec, const internal::Locator& loc, bool check_files) {
  FillDefaults(spec);
  const std::vector<std::string> errors = internal::Validate(spec, loc, check_files);
  if (!errors.empty()) TESSERA_THROW(ConfigError, Join(errors));
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
  internal::Locator loc(path, &tree);
  for (const std::string& o : overrides) {
    ApplyOverride(spec, o);
    loc.NoteOverride(o.substr(0, o.find('=')), o);
  }
  FillDefaultsAndValidate(spec, loc, check_files);
  return spec;
}

void ValidateJobSpec(JobSpec& spec, const std::string& source, bool check_files) {
  FillDefaultsAndValidate(spec, internal::Locator(source, nullptr), check_files);
}

}  // namespace tessera::jobs
