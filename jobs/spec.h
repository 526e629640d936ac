// Loading, overriding and validating job specs (jobs/job.proto, protobuf text format).
//
// LoadJobSpec() parses the file, applies `--set` overrides, fills in defaults, resolves relative
// paths against the spec file's folder, and validates everything before any work starts. All
// problems found are reported together in one ConfigError, one per line, each naming the field
// path and where it came from: "job.pbtxt:7:3: optimizer.lr: must be > 0, got -1" or
// "--set train.epochs=0: train.epochs: must be >= 1".
#pragma once

#include <string>
#include <vector>

#include "jobs/job.pb.h"

namespace tessera::jobs {

// The model architecture and input normalisation live in core/model_spec.proto.
using models::CnnSpec;
using models::GptSpec;
using models::MlpSpec;
using models::ModelSpec;
using models::Normalize;

// Parses, overrides, resolves and validates. `check_files`: whether data files must exist
// (validate on a login node without the data mounted can turn it off).
JobSpec LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides = {},
                    bool check_files = true);

// Parses text-format `text` (named `source` in messages) without validating.
JobSpec ParseJobSpec(const std::string& text, const std::string& source);

// What LoadJobSpec does after parsing, for a spec built or changed in code (the C++ API): fills
// in the defaults and validates, throwing one ConfigError that lists every problem, each named
// `source: field.path`. Relative data paths are taken as they are (against the working directory).
void ValidateJobSpec(JobSpec& spec, const std::string& source, bool check_files = true);

// Applies one "field.path=value" assignment. Repeated fields take a comma-separated list that
// replaces their contents; strings are taken verbatim (no quotes needed). Throws ConfigError
// naming the assignment and the problem (unknown field, not a scalar, bad value). "MESSAGE={}"
// resets a message to its defaults; a field of another member of a oneof than the one chosen (an
// mlp field on a cnn model) is refused unless that member was chosen with "MEMBER={}" first.
void ApplyOverride(JobSpec& spec, const std::string& assignment);

// Sets every field that has a default (and the default lists of the model families) explicitly,
// so the resolved spec written to the run directory shows every value used.
void FillDefaults(JobSpec& spec);

// The spec as protobuf text.
std::string ToText(const JobSpec& spec);

}  // namespace tessera::jobs
