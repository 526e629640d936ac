// OpenCsv: a numeric CSV table with a header row, held in memory.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "datasets/dataset.h"

namespace tessera::datasets {
namespace {

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::vector<std::string> SplitFields(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  for (;;) {
    size_t comma = line.find(',', start);
    fields.push_back(Trim(line.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return fields;
}

// A field shown in a message: quoted, and cut short when long.
std::string Quote(const std::string& field) {
  return "'" + (field.size() > 40 ? field.substr(0, 40) + "..." : field) + "'";
}

// True when `field` is a whole decimal number (strtod syntax); stores it in `value`.
bool ParseNumber(const std::string& field, double* value) {
  if (field.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(field.c_str(), &end);
  return end == field.c_str() + field.size();
}

// Where each column's value goes in an example: -1 for the label, else its feature position. With
// `order` (the training file's feature columns), features are placed by name, and a column missing
// from either side is an error; without, in file order. Duplicate names are refused: they cannot
// be matched.
std::vector<int64_t> FeatureSlots(const std::string& path, int64_t header_line, const std::vector<std::string>& names,
                                  int64_t label_index, const std::vector<std::string>& order) {
  std::vector<int64_t> slot(names.size(), -1);
  std::map<std::string, int64_t> column_of;
  for (int64_t c = 0; c < static_cast<int64_t>(names.size()); ++c) {
    if (c == label_index) continue;
    auto [it, fresh] = column_of.emplace(names[c], c);
    if (!fresh)
      TESSERA_THROW(DataError, path, ":", header_line, ": the column name ", Quote(names[c]), " appears twice (columns ",
                    it->second + 1, " and ", c + 1, "); columns are matched by name, so each must be unique");
    slot[c] = static_cast<int64_t>(column_of.size()) - 1;
  }
  if (order.empty()) return slot;
  for (size_t k = 0; k < order.size(); ++k) {
    auto it = column_of.find(order[k]);
    if (it == column_of.end())
      TESSERA_THROW(DataError, path, ":", header_line, ": no column ", Quote(order[k]),
                    ", which the training file has; the test file's columns must be the training file's (any order)");
    slot[it->second] = static_cast<int64_t>(k);
    column_of.erase(it);
  }
  if (!column_of.empty())
    TESSERA_THROW(DataError, path, ":", header_line, ": column ", Quote(column_of.begin()->first),
                  " is not in the training file; the test file's columns must be the training file's (any order)");
  return slot;
}

}  // namespace

std::unique_ptr<Dataset> OpenCsv(const std::string& path, const std::string& label_column,
                                 const std::vector<std::string>& feature_order) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TESSERA_THROW(IoError, path, ": cannot open: ", std::strerror(errno));

  // Header: line 1 (after any blank lines, which are counted).
  std::string line;
  int64_t line_no = 0;
  bool have_header = false;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!Trim(line).empty()) {
      have_header = true;
      break;
    }
  }
  if (!have_header)
    TESSERA_THROW(DataError, path, ": empty file: expected a header row naming the columns (one of them '",
                  label_column, "')");
  const int64_t header_line = line_no;
  std::vector<std::string> names = SplitFields(line);
  for (std::string& n : names)
    if (n.size() >= 2 && n.front() == '"' && n.back() == '"') n = n.substr(1, n.size() - 2);
  const int64_t columns = static_cast<int64_t>(names.size());
  int64_t label_index = -1;
  for (int64_t c = 0; c < columns; ++c) {
    if (names[c] != label_column) continue;
    if (label_index >= 0)
      TESSERA_THROW(DataError, path, ":", header_line, ": the label column '", label_column,
                    "' appears twice (columns ", label_index + 1, " and ", c + 1, "); expected it once");
    label_index = c;
  }
  if (label_index < 0) {
    std::string have;
    for (int64_t c = 0; c < columns; ++c) have += (c ? ", " : "") + Quote(names[c]);
    TESSERA_THROW(DataError, path, ":", header_line, ": no column named '", label_column,
                  "' for the labels; the header has ", columns, " columns: ", have);
  }
  if (columns < 2)
    TESSERA_THROW(DataError, path, ":", header_line, ": the header has only the label column '", label_column,
                  "'; expected at least one feature column besides it");

  const int64_t num_features = columns - 1;
  const std::vector<int64_t> slot = FeatureSlots(path, header_line, names, label_index, feature_order);
  std::vector<std::string> feature_names(static_cast<size_t>(num_features));
  for (int64_t c = 0; c < columns; ++c)
    if (slot[c] >= 0) feature_names[slot[c]] = names[c];
  std::vector<float> features, row(static_cast<size_t>(num_features));
  std::vector<int32_t> labels;
  int32_t max_label = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (Trim(line).empty()) continue;
    std::vector<std::string> fields = SplitFields(line);
    if (static_cast<int64_t>(fields.size()) != columns)
      TESSERA_THROW(DataError, path, ":", line_no, ": ", fields.size(), " fields, expected ", columns,
                    " (one per header column)");
    for (int64_t c = 0; c < columns; ++c) {
      double v = 0;
      const std::string& f = fields[c];
      if (c == label_index) {
        if (!ParseNumber(f, &v) || !(v >= 0) || v != std::floor(v) || v >= static_cast<double>(kMaxClasses))
          TESSERA_THROW(DataError, path, ":", line_no, ": column ", c + 1, " ('", names[c], "'): got ", Quote(f),
                        ", expected a class label: an integer in [0, ", kMaxClasses, ")");
        labels.push_back(static_cast<int32_t>(v));
        if (labels.back() > max_label) max_label = labels.back();
        continue;
      }
      if (!ParseNumber(f, &v))
        TESSERA_THROW(DataError, path, ":", line_no, ": column ", c + 1, " ('", names[c], "'): got ", Quote(f),
                      ", expected a number");
      float x = static_cast<float>(v);
      if (!std::isfinite(x))
        TESSERA_THROW(DataError, path, ":", line_no, ": column ", c + 1, " ('", names[c], "'): got ", Quote(f),
                      ", expected a finite number within f32 range");
      row[slot[c]] = x;
    }
    features.insert(features.end(), row.begin(), row.end());
  }
  if (in.bad()) TESSERA_THROW(IoError, path, ": read error after line ", line_no, ": ", std::strerror(errno));
  const int64_t n = static_cast<int64_t>(labels.size());
  if (n == 0)
    TESSERA_THROW(DataError, path, ": no data rows after the header (line ", header_line,
                  "); expected at least one example");

  Tensor f = Tensor::Empty({n, num_features});
  std::memcpy(f.data<float>(), features.data(), features.size() * sizeof(float));
  Tensor l = Tensor::Empty({n}, DType::kI32);
  std::memcpy(l.data<int32_t>(), labels.data(), labels.size() * sizeof(int32_t));
  auto d = std::make_unique<InMemoryDataset>(f, l, max_label + 1, "csv " + path);
  d->set_feature_names(std::move(feature_names));
  return d;
}

}  // namespace tessera::datasets
