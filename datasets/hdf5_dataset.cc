// OpenHdf5: features read on demand by hyperslab, labels held in memory.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/io/hdf5.h"
#include "datasets/dataset.h"

namespace tessera::datasets {
namespace {

constexpr int64_t kMaxExampleValues = int64_t{1} << 28;
constexpr uint64_t kMaxChunkBytes = uint64_t{1} << 30;
using io::Hdf5Handle;
using io::Hdf5Lock;
using io::Hdf5ErrorMessage;

std::string TypeDescription(hid_t type) {
  H5T_class_t cls = H5Tget_class(type);
  size_t bytes = H5Tget_size(type);
  const char* name = "unknown";
  switch (cls) {
    case H5T_INTEGER:
      name = H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned integer" : "signed integer";
      break;
    case H5T_FLOAT:
      name = "float";
      break;
    case H5T_STRING:
      name = "string";
      break;
    case H5T_COMPOUND:
      name = "compound";
      break;
    case H5T_ENUM:
      name = "enum";
      break;
    case H5T_ARRAY:
      name = "array";
      break;
    default:
      break;
  }
  return detail::StrCat(name, " of ", bytes, " bytes");
}

// "rows [3, 6)", "rows 0, [3, 6), 9 and 5 more runs": the runs of consecutive rows in `rows`
// (ascending, distinct), the first few of them.
std::string RunsString(const std::vector<int64_t>& rows) {
  std::string out = "rows ";
  size_t shown = 0, runs = 0;
  for (size_t begin = 0; begin < rows.size(); ++runs) {
    size_t end = begin + 1;
    while (end < rows.size() && rows[end] == rows[end - 1] + 1) ++end;
    if (shown < 4) {
      out += (shown ? ", " : "") + (end - begin == 1 ? std::to_string(rows[begin])
                                                     : detail::StrCat("[", rows[begin], ", ", rows[end - 1] + 1, ")"));
      ++shown;
    }
    begin = end;
  }
  if (runs > shown) out += detail::StrCat(" and ", runs - shown, " more runs");
  return out;
}

// The names of the objects in the root group, for "no such dataset" messages.
herr_t CollectName(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

class Hdf5Dataset : public Dataset {
 public:
  Hdf5Dataset(const std::string& path, const std::string& features_name, const std::string& labels_name);
  ~Hdf5Dataset() override;
  int64_t size() const override { return size_; }
  Shape example_shape() const override { return example_shape_; }
  int num_classes() const override { return num_classes_; }
  void Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) override;
  std::string Describe() const override {
    return detail::StrCat("hdf5 ", path_, ":", features_name_, " (", size_, " x ", ShapeString(example_shape_), ", ",
                          num_classes_, " classes)");
  }

 private:
  // "<file>, dataset '<name>'" for messages.
  std::string Where(const std::string& name) const { return path_ + ", dataset '" + name + "'"; }
  // Opens dataset `name`, or throws DataError listing what the file holds. Holds the lock.
  Hdf5Handle OpenDataset(const std::string& name);
  // Shape of a dataset's simple dataspace. Holds the lock.
  Shape DatasetShape(hid_t dataset, const std::string& name);
  // Refuses storage outside the file, or more of it than the file holds. Holds the lock.
  void CheckStorage(hid_t dataset, const std::string& name);
  void ReadLabels(hid_t dataset);  // holds the lock
  void CheckFinite(const std::vector<int64_t>& rows, int64_t row) const;  // of staging_

  std::string path_, features_name_, labels_name_;
  Hdf5Handle file_, features_, file_space_;
  Shape example_shape_;
  int64_t size_ = 0;
  int num_classes_ = 0;
  std::vector<int32_t> labels_;
  std::vector<float> staging_;  // the unique rows of one Get, in file order
  bool float_features_ = false;  // float data may hold NaN or Inf (checked per read); uint8 cannot
};

Hdf5Dataset::Hdf5Dataset(const std::string& path, const std::string& features_name, const std::string& labels_name)
    : path_(path), features_name_(features_name), labels_name_(labels_name) {
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fclose(f);
  } else {
    TESSERA_THROW(IoError, path, ": cannot open: ", std::strerror(errno));
  }
  Hdf5Lock lock;
  try {
    htri_t is_hdf5 = TESSERA_H5_CHECK(IoError, H5Fis_hdf5(path.c_str()), path);
    if (is_hdf5 == 0) TESSERA_THROW(DataError, path, ": not an HDF5 file (no HDF5 signature found)");
    // The checkpoints' access policy (core/io/hdf5.h): no file locking, which NFS and Lustre lack.
    Hdf5Handle fapl = io::FileAccess(path);
    file_ = Hdf5Handle(TESSERA_H5_CHECK(IoError, H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), path), H5Fclose);

    features_ = OpenDataset(features_name);
    CheckStorage(features_.get(), features_name);
    Hdf5Handle type(TESSERA_H5_CHECK(DataError, H5Dget_type(features_.get()), Where(features_name)), H5Tclose);
    H5T_class_t cls = TESSERA_H5_CHECK(DataError, H5Tget_class(type.get()), Where(features_name));
    bool is_uint8 = false;
    if (cls == H5T_INTEGER) {
      size_t bytes = H5Tget_size(type.get());
      if (bytes == 0) TESSERA_THROW(DataError, Where(features_name), ": H5Tget_size failed: ", Hdf5ErrorMessage());
      H5T_sign_t sign = TESSERA_H5_CHECK(DataError, H5Tget_sign(type.get()), Where(features_name));
      is_uint8 = bytes == 1 && sign == H5T_SGN_NONE;
    }
    float_features_ = cls == H5T_FLOAT;
    if (cls != H5T_FLOAT && !is_uint8)
      TESSERA_THROW(DataError, Where(features_name), ": unsupported type ", TypeDescription(type.get()),
                    "; expected float (any width) or unsigned 8-bit integers");
    Shape fshape = DatasetShape(features_.get(), features_name);
    if (fshape.size() < 2)
      TESSERA_THROW(DataError, Where(features_name), ": rank ", fshape.size(), " (shape ", ShapeString(fshape),
                    "); expected [N, ...] with at least 2 dimensions");
    size_ = fshape[0];
    example_shape_.assign(fshape.begin() + 1, fshape.end());
    if (size_ < 1)
      TESSERA_THROW(DataError, Where(features_name), ": shape ", ShapeString(fshape), " holds no examples");
    // Rows are read on demand, so HDF5 opens any shape: bound one example before a batch of them
    // is allocated (a fuzzed file asked for 0x600000000000000 bytes).
    int64_t values = 1;
    for (int64_t d : example_shape_)
      if (d < 1 || __builtin_mul_overflow(values, d, &values) || values > kMaxExampleValues)
        TESSERA_THROW(DataError, Where(features_name), ": shape ", ShapeString(fshape), ": examples of ",
                      ShapeString(example_shape_), " are more than ", kMaxExampleValues,
                      " values (1 GiB of float32) each; tessera reads examples of at most that");
    file_space_ =
        Hdf5Handle(TESSERA_H5_CHECK(DataError, H5Dget_space(features_.get()), Where(features_name)), H5Sclose);

    Hdf5Handle labels = OpenDataset(labels_name);
    CheckStorage(labels.get(), labels_name);
    Hdf5Handle ltype(TESSERA_H5_CHECK(DataError, H5Dget_type(labels.get()), Where(labels_name)), H5Tclose);
    if (TESSERA_H5_CHECK(DataError, H5Tget_class(ltype.get()), Where(labels_name)) != H5T_INTEGER)
      TESSERA_THROW(DataError, Where(labels_name), ": unsupported type ", TypeDescription(ltype.get()),
                    "; expected integer class labels");
    Shape lshape = DatasetShape(labels.get(), labels_name);
    if (lshape.size() != 1)
      TESSERA_THROW(DataError, Where(labels_name), ": rank ", lshape.size(), " (shape ", ShapeString(lshape),
                    "); expected 1 dimension [N]");
    if (lshape[0] != size_)
      TESSERA_THROW(DataError, path, ": dataset '", labels_name, "' holds ", lshape[0], " labels but dataset '",
                    features_name, "' holds ", size_, " examples; they must match");
    ReadLabels(labels.get());
  } catch (...) {
    file_space_.Reset();
    features_.Reset();
    file_.Reset();
    throw;
  }
}

Hdf5Dataset::~Hdf5Dataset() {
  Hdf5Lock lock;
  file_space_.Reset();
  features_.Reset();
  file_.Reset();
}

Hdf5Handle Hdf5Dataset::OpenDataset(const std::string& name) {
  // Walk the path one link at a time: H5Lexists fails (rather than saying no) when a parent is missing.
  std::string prefix;
  bool exists = !name.empty();
  for (size_t pos = 0; exists && pos <= name.size();) {
    size_t slash = name.find('/', pos);
    if (slash == std::string::npos) slash = name.size();
    prefix = name.substr(0, slash);
    if (slash > pos)
      exists = TESSERA_H5_CHECK(DataError, H5Lexists(file_.get(), prefix.c_str(), H5P_DEFAULT), Where(name)) > 0;
    pos = slash + 1;
  }
  if (!exists) {
    std::vector<std::string> names;
    TESSERA_H5_CHECK(DataError, H5Literate(file_.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, &CollectName, &names),
                     path_);
    std::string have;
    for (size_t i = 0; i < names.size(); ++i) have += (i ? ", " : "") + ("'" + names[i] + "'");
    TESSERA_THROW(DataError, path_, ": no dataset '", name, "'; the root group holds ",
                  names.empty() ? std::string("nothing") : have);
  }
  return Hdf5Handle(TESSERA_H5_CHECK(DataError, H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), Where(name)),
                    H5Dclose);
}

Shape Hdf5Dataset::DatasetShape(hid_t dataset, const std::string& name) {
  Hdf5Handle space(TESSERA_H5_CHECK(DataError, H5Dget_space(dataset), Where(name)), H5Sclose);
  if (TESSERA_H5_CHECK(DataError, H5Sget_simple_extent_type(space.get()), Where(name)) != H5S_SIMPLE)
    TESSERA_THROW(DataError, Where(name), ": a scalar or empty dataspace; expected an array [N, ...]");
  int rank = TESSERA_H5_CHECK(DataError, H5Sget_simple_extent_ndims(space.get()), Where(name));
  std::vector<hsize_t> dims(rank), maxdims(rank);
  TESSERA_H5_CHECK(DataError, H5Sget_simple_extent_dims(space.get(), dims.data(), maxdims.data()), Where(name));
  // HDF5 does not check that a file's extent lies within its own maximum (a fuzzed file's [2, 262144]
  // of at most [2, 4] had HDF5 look up 2^17 chunks for one batch).
  for (int i = 0; i < rank; ++i)
    if (maxdims[i] != H5S_UNLIMITED && dims[i] > maxdims[i])
      TESSERA_THROW(DataError, Where(name), ": dimension ", i, " is ", dims[i], " but its declared maximum is ",
                    maxdims[i], "; the file is damaged");
  return Shape(dims.begin(), dims.end());
}

// libhdf5 allocates a chunk's buffer from the size its index records, before it reads a byte: a
// fuzzed chunk index claiming 4 GiB for one chunk of 4 bytes made H5Dread ask malloc for 4 GiB.
// Every stored byte of a dataset lies in the file, so no dataset's storage may exceed the file's
// size. External storage (raw data in other files the dataset names) is refused: a data file must
// not make tessera read paths it chose.
void Hdf5Dataset::CheckStorage(hid_t dataset, const std::string& name) {
  Hdf5Handle dcpl(TESSERA_H5_CHECK(DataError, H5Dget_create_plist(dataset), Where(name)), H5Pclose);
  if (TESSERA_H5_CHECK(DataError, H5Pget_external_count(dcpl.get()), Where(name)) > 0)
    TESSERA_THROW(DataError, Where(name), ": its data is stored in external files; tessera reads only data held "
                  "in the HDF5 file itself (repack it with h5repack)");
  if (TESSERA_H5_CHECK(DataError, H5Pget_layout(dcpl.get()), Where(name)) == H5D_VIRTUAL)
    TESSERA_THROW(DataError, Where(name), ": a virtual dataset (its data maps to other files); tessera reads "
                  "only data held in the HDF5 file itself (repack it with h5repack)");
  // libhdf5 sizes its conversion buffers by the element type: a fuzzed label type of 4 GB per
  // integer had it allocate 4 GB. No number tessera reads is wider than 16 bytes.
  Hdf5Handle type(TESSERA_H5_CHECK(DataError, H5Dget_type(dataset), Where(name)), H5Tclose);
  const size_t element = H5Tget_size(type.get());
  if (element == 0 || element > 16)
    TESSERA_THROW(DataError, Where(name), ": elements of ", element, " bytes; tessera reads numbers of 1 to 16 bytes");
  const H5D_layout_t layout = TESSERA_H5_CHECK(DataError, H5Pget_layout(dcpl.get()), Where(name));
  if (layout == H5D_CHUNKED) {
    // A chunk is read (and inflated) whole into a buffer of its declared size.
    hsize_t chunk[H5S_MAX_RANK];
    int rank = TESSERA_H5_CHECK(DataError, H5Pget_chunk(dcpl.get(), H5S_MAX_RANK, chunk), Where(name));
    uint64_t bytes = element;
    std::vector<uint64_t> dims(chunk, chunk + rank);
    for (uint64_t d : dims)
      if (__builtin_mul_overflow(bytes, d, &bytes) || bytes > kMaxChunkBytes)
        TESSERA_THROW(DataError, Where(name), ": chunks of ", ShapeString(Shape(dims.begin(), dims.end())),
                      " are more than ", kMaxChunkBytes, " bytes each; tessera reads chunks of at most 1 GiB");
  }
  hsize_t file_bytes = 0;
  TESSERA_H5_CHECK(DataError, H5Fget_filesize(file_.get(), &file_bytes), path_);
  // H5Dget_storage_size has no error value: 0 is also what unallocated storage reports.
  hsize_t stored = H5Dget_storage_size(dataset);
  if (stored > file_bytes)
    TESSERA_THROW(DataError, Where(name), ": its storage index records ", stored, " bytes of data, but the file "
                  "holds only ", file_bytes, " bytes; the file is damaged");
  if (layout == H5D_CONTIGUOUS && stored != 0) {
    Hdf5Handle space(TESSERA_H5_CHECK(DataError, H5Dget_space(dataset), Where(name)), H5Sclose);
    const auto points = static_cast<uint64_t>(TESSERA_H5_CHECK(DataError, H5Sget_simple_extent_npoints(space.get()), Where(name)));
    uint64_t want = 0;
    if (__builtin_mul_overflow(points, element, &want) || want != stored)
      TESSERA_THROW(DataError, Where(name), ": stores ", stored, " bytes for ", points, " elements of ", element,
                    " bytes; the file is damaged");
  }
}

void Hdf5Dataset::ReadLabels(hid_t dataset) {
  std::vector<int64_t> raw(size_);
  TESSERA_H5_CHECK(DataError, H5Dread(dataset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()),
                   Where(labels_name_));
  labels_.resize(size_);
  int64_t max_label = 0;
  for (int64_t i = 0; i < size_; ++i) {
    if (raw[i] < 0 || raw[i] >= kMaxClasses)
      TESSERA_THROW(DataError, Where(labels_name_), ": label ", raw[i], " at row ", i,
                    "; expected a class label: an integer in [0, ", kMaxClasses, ")");
    labels_[i] = static_cast<int32_t>(raw[i]);
    max_label = std::max(max_label, raw[i]);
  }
  num_classes_ = static_cast<int>(max_label + 1);
  // A declared class count (classes absent from this file still count).
  if (TESSERA_H5_CHECK(DataError, H5Aexists(dataset, "num_classes"), Where(labels_name_)) > 0) {
    std::string where = Where(labels_name_) + ", attribute 'num_classes'";
    Hdf5Handle attr(TESSERA_H5_CHECK(DataError, H5Aopen(dataset, "num_classes", H5P_DEFAULT), where), H5Aclose);
    Hdf5Handle space(TESSERA_H5_CHECK(DataError, H5Aget_space(attr.get()), where), H5Sclose);
    if (TESSERA_H5_CHECK(DataError, H5Sget_simple_extent_npoints(space.get()), where) != 1)
      TESSERA_THROW(DataError, where, ": expected a single integer");
    int64_t declared = 0;
    TESSERA_H5_CHECK(DataError, H5Aread(attr.get(), H5T_NATIVE_INT64, &declared), where);
    if (declared <= max_label || declared > kMaxClasses)
      TESSERA_THROW(DataError, where, ": ", declared, " classes, but the labels go up to ", max_label,
                    "; expected more than the largest label");
    num_classes_ = static_cast<int>(declared);
  }
}

// A NaN or Inf feature would train silently into NaN weights (ReLU hides them from the loss), as
// the CSV reader already refuses: name the example and the position.
void Hdf5Dataset::CheckFinite(const std::vector<int64_t>& rows, int64_t row) const {
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t j = 0; j < row; ++j)
      if (!std::isfinite(staging_[r * row + j]))
        TESSERA_THROW(DataError, Where(features_name_), ": example ", rows[r], " holds ", staging_[r * row + j],
                      " at position ", j, " of ", row, "; features must be finite numbers");
}

void Hdf5Dataset::Get(const std::vector<int64_t>& indices, Tensor& features, Tensor& labels) {
  internal::CheckGetArgs(Describe(), size_, example_shape_, indices, features, labels);
  const size_t n = indices.size();
  if (n == 0) return;
  const int64_t row = NumElements(example_shape_);
  // Positions of the request sorted by row; each distinct row is read once.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return indices[a] < indices[b]; });
  std::vector<int64_t> rows;    // distinct, ascending
  std::vector<size_t> slot(n);  // position -> index into rows
  for (size_t k = 0; k < n; ++k) {
    int64_t r = indices[order[k]];
    if (rows.empty() || rows.back() != r) rows.push_back(r);
    slot[order[k]] = rows.size() - 1;
  }
  staging_.resize(rows.size() * row);

  const int rank = static_cast<int>(example_shape_.size()) + 1;
  std::vector<hsize_t> start(rank, 0), count(rank);
  for (int d = 1; d < rank; ++d) count[d] = static_cast<hsize_t>(example_shape_[d - 1]);
  {
    Hdf5Lock lock;
    // One read of the union of the runs (3x faster than a read per run for scattered rows): a
    // selection is visited in file order, the order of `rows`, so staging_ receives them so.
    const std::string where = Where(features_name_) + ", " + RunsString(rows);
    for (size_t begin = 0; begin < rows.size();) {
      size_t end = begin + 1;
      while (end < rows.size() && rows[end] == rows[end - 1] + 1) ++end;
      start[0] = static_cast<hsize_t>(rows[begin]);
      count[0] = static_cast<hsize_t>(end - begin);
      TESSERA_H5_CHECK(DataError,
                       H5Sselect_hyperslab(file_space_.get(), begin == 0 ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(),
                                           nullptr, count.data(), nullptr),
                       where);
      begin = end;
    }
    count[0] = static_cast<hsize_t>(rows.size());
    Hdf5Handle mem(TESSERA_H5_CHECK(DataError, H5Screate_simple(rank, count.data(), nullptr), where), H5Sclose);
    TESSERA_H5_CHECK(
        DataError,
        H5Dread(features_.get(), H5T_NATIVE_FLOAT, mem.get(), file_space_.get(), H5P_DEFAULT, staging_.data()), where);
  }
  if (float_features_) CheckFinite(rows, row);
  float* dst = features.data<float>();
  int32_t* ldst = labels.data<int32_t>();
  for (size_t i = 0; i < n; ++i) {
    std::memcpy(dst + i * row, staging_.data() + slot[i] * row, row * sizeof(float));
    ldst[i] = labels_[indices[i]];
  }
}

}  // namespace

std::unique_ptr<Dataset> OpenHdf5(const std::string& path, const std::string& features_dataset,
                                  const std::string& labels_dataset) {
  return std::make_unique<Hdf5Dataset>(path, features_dataset, labels_dataset);
}

}  // namespace tessera::datasets
