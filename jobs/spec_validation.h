// Validation of a job spec (jobs/spec.h): every section checked at once, each problem named by its
// field path and where that field came from (file:line:col of the spec, or the --set that set it).
// Internal to jobs/: LoadJobSpec and ValidateJobSpec call it after filling the defaults.
#pragma once

#include <google/protobuf/text_format.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "jobs/spec.h"

namespace tessera::jobs::internal {

// Where each field came from: a location in the file, or the override that set it.
class Locator {
 public:
  Locator(std::string source, const google::protobuf::TextFormat::ParseInfoTree* tree)
      : source_(std::move(source)), tree_(tree) {}

  void NoteOverride(const std::string& path, const std::string& assignment) { overrides_[path] = assignment; }

  // "file:line:col" of the deepest part of `path` present in the file, or the override.
  std::string Where(const google::protobuf::Message& root, const std::string& path) const;

 private:
  std::string source_;
  const google::protobuf::TextFormat::ParseInfoTree* tree_;
  std::map<std::string, std::string> overrides_;
};

// One line per problem, "where: field.path: what is wrong"; empty when the spec is valid.
// `check_files`: the data files must exist and be regular files.
std::vector<std::string> Validate(const JobSpec& spec, const Locator& locator, bool check_files);

}  // namespace tessera::jobs::internal
