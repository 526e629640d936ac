#include "core/io/weights.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <thread>

#include "core/error.h"
#include "core/io/check_queue.h"
#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "core/io/hdf5.h"
#include "tessera/config.h"

namespace tessera::io {

#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

json WeightsMetaJson(const WeightsMeta& m) {
  return CommonRootAttributes(kModelFormat, m.format_version, m.tessera_version, m.created, m.step, m.job_spec, m.dtype);
}

namespace {

// The record of one tensor to write, its name and size checked.
TensorRecord RecordFor(const WeightsView& v, const std::string& where) {
  if (v.name.empty() || v.name[0] == '/' || v.name.find("//") != std::string::npos || v.name.back() == '/' ||
      v.name.find('\0') != std::string::npos)
    TESSERA_THROW(ValueError, where, ": '", v.name, "' is not a tensor name like 0.weight");
  if (v.dtype != DType::kF32 && v.dtype != DType::kF64 && v.dtype != DType::kI8)
    TESSERA_THROW(ValueError, where, ": ", v.name, ": weights files hold f32, f64 and i8 tensors, not ", DTypeName(v.dtype));
  int64_t numel = 1;
  for (int64_t d : v.shape) {
    if (d < 0 || (d > 0 && numel > std::numeric_limits<int64_t>::max() / 16 / d))
      TESSERA_THROW(ValueError, where, ": ", v.name, ": invalid shape");
    numel *= d;
  }
  TensorRecord r;
  r.path = "/model/" + v.name;
  r.shape = v.shape;
  r.dtype = v.dtype;
  r.bytes = numel * static_cast<int64_t>(SizeOf(v.dtype));
  r.has_crc = true;
  if (r.bytes > 0 && v.data == nullptr) TESSERA_THROW(ValueError, where, ": ", v.name, ": no data");
  return r;
}

// Every tensor's CRC-32, on two threads (the tensors split between them).
void ComputeCrcs(const std::vector<WeightsView>& views, std::vector<TensorRecord>& records) {
  auto part = [&](size_t first) {
    for (size_t i = first; i < views.size(); i += 2)
      records[i].crc32 = Crc32(views[i].data, static_cast<size_t>(records[i].bytes));
  };
  std::thread other(part, 1);
  part(0);
  other.join();
}

// Lays out the HDF5 file `tmp` (the lock held): the attributes, the manifest, the CRC attributes,
// and every dataset allocated contiguous and unfilled. Returns each tensor's data offset (-1 for
// an empty one); the data itself is written afterwards, straight to those offsets.
std::vector<int64_t> LayOutFile(const std::string& tmp, const WeightsMeta& m, const std::vector<TensorRecord>& records) {
  Hdf5Handle fapl = FileCreateAccess(tmp);
  Hdf5Handle file(H5C(H5Fcreate(tmp.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()), tmp), H5Fclose);
  hid_t f = file.get();
  WriteRootAttributes(f, WeightsMetaJson(m), tmp);
  if (!m.source.empty()) WriteStringAttr(f, "source_checkpoint", m.source, tmp);
  Hdf5Handle lcpl(H5C(H5Pcreate(H5P_LINK_CREATE), tmp), H5Pclose);
  H5C(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp);
  Hdf5Handle dcpl = PreallocatedContiguous(tmp);
  std::vector<int64_t> offsets;
  for (const TensorRecord& r : records) {
    const std::string where = tmp + ": " + r.path;
    Hdf5Handle space = Dataspace(r.shape, where);
    Hdf5Handle ds(H5C(H5Dcreate2(f, r.path.c_str(), FileTensorType(r.dtype, where), space.get(), lcpl.get(), dcpl.get(),
                                 H5P_DEFAULT),
                      where),
                  H5Dclose);
    WriteU32Attr(ds.get(), "crc32", r.crc32, where);
    haddr_t at = H5Dget_offset(ds.get());
    if (r.bytes > 0 && at == HADDR_UNDEF) TESSERA_THROW(IoError, where, ": HDF5 did not allocate the dataset's storage");
    offsets.push_back(r.bytes > 0 ? static_cast<int64_t>(at) : -1);
  }
  WriteManifest(f, records, WeightsMetaJson(m), tmp);
  H5C(file.Close(), tmp);
  return offsets;
}

// Writes the tensors' bytes at their offsets and makes the file durable; meanwhile, on a second
// thread, the SHA-256 of the whole file in file order: the data from memory, HDF5's metadata
// between the data regions from the file (disjoint from what is being written).
std::string WriteDataAndHash(const std::string& tmp, const std::vector<WeightsView>& views,
                             const std::vector<TensorRecord>& records, const std::vector<int64_t>& offsets,
                             int64_t* file_bytes) {
  int fd = open(tmp.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) TESSERA_THROW(IoError, tmp, ": cannot open for writing: ", std::strerror(errno));
  ScopedFd closer(fd);
  struct stat st {};
  if (fstat(fd, &st) != 0) TESSERA_THROW(IoError, tmp, ": fstat failed: ", std::strerror(errno));
  *file_bytes = st.st_size;
  std::vector<size_t> order;  // the data regions in file order
  for (size_t i = 0; i < records.size(); ++i)
    if (offsets[i] >= 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return offsets[a] < offsets[b]; });
  std::string sha;
  std::exception_ptr sha_error;
  std::thread hasher([&] {
    try {
      Sha256 h;
      std::vector<char> gap;
      int64_t at = 0;
      auto hash_file = [&](int64_t from, int64_t to) {
        gap.resize(static_cast<size_t>(to - from));
        for (size_t got = 0; got < gap.size();) {
          ssize_t r = pread(fd, gap.data() + got, gap.size() - got, static_cast<off_t>(from + static_cast<int64_t>(got)));
          if (r < 0 && errno == EINTR) continue;
          if (r <= 0) TESSERA_THROW(IoError, tmp, ": reading the layout back failed: ", std::strerror(errno));
          got += static_cast<size_t>(r);
        }
        h.Update(gap.data(), gap.size());
      };
      for (size_t i : order) {
        if (offsets[i] < at || offsets[i] + records[i].bytes > *file_bytes)
          TESSERA_THROW(IoError, tmp, ": ", records[i].path, ": HDF5 laid out overlapping or out-of-file data");
        hash_file(at, offsets[i]);
        h.Update(views[i].data, static_cast<size_t>(records[i].bytes));
        at = offsets[i] + records[i].bytes;
      }
      hash_file(at, *file_bytes);
      sha = h.FinalHex();
    } catch (...) {
      sha_error = std::current_exception();
    }
  });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{hasher};
  for (size_t i : order) PwriteAll(fd, static_cast<const char*>(views[i].data), static_cast<size_t>(records[i].bytes), offsets[i], tmp);
  if (fdatasync(fd) != 0) TESSERA_THROW(IoError, tmp, ": fdatasync failed: ", std::strerror(errno));
  hasher.join();
  if (sha_error) std::rethrow_exception(sha_error);
  return sha;
}

// The metadata of an open weights file (or the /model part of a checkpoint), checked.
WeightsInfo ReadInfoLocked(hid_t file, const std::string& path, const WeightsReadOptions& o,
                           Manifest* manifest_out = nullptr) {
  WeightsInfo info;
  info.path = path;
  WeightsMeta& m = info.meta;
  m.format_version = ReadFormatVersion(file, path);
  if (m.format_version < kFormatVersion && !o.allow_legacy)
    TESSERA_THROW(FormatError, path, ": is of format version ", m.format_version, " (an earlier tessera's, with "
                  "variable-length strings), which is not read here; re-export it with `tessera ckpt export`");
  const bool vlen = AllowsVlenStrings(m.format_version);
  std::string format = ReadFormat(file, m.format_version, path);
  if (format == kCheckpointFormat && !o.allow_checkpoint)
    TESSERA_THROW(FormatError, path, ": is a checkpoint, not a model file; export its model with `tessera ckpt export`");
  if (format != kModelFormat && format != kCheckpointFormat)
    TESSERA_THROW(FormatError, path, ": not a tessera weights file (format is '", format.substr(0, 100), "')");
  m.tessera_version = HasAttr(file, "tessera_version", path) ? ReadStringAttr(file, "tessera_version", path, vlen) : "?";
  m.created = ReadStringAttr(file, "created", path, vlen);
  m.step = ReadIntAttr(file, "step", path, 0);
  m.job_spec = ReadStringAttr(file, "job_spec", path, vlen);
  m.dtype = ReadStringAttr(file, "dtype", path, vlen);
  if (HasAttr(file, "source_checkpoint", path)) m.source = ReadStringAttr(file, "source_checkpoint", path, vlen);
  Manifest man = ReadManifest(file, m.format_version, path);
  for (const TensorRecord& t : man.tensors) {
    if (t.path.rfind("/model/", 0) == 0) info.tensors.push_back(t);
    else if (format == kModelFormat)
      TESSERA_THROW(IoError, path, ": /manifest lists ", t.path, "; a model file holds /model tensors only");
  }
  if (info.tensors.empty()) TESSERA_THROW(IoError, path, ": holds no /model tensors");
  if (manifest_out) *manifest_out = std::move(man);
  return info;
}

}  // namespace

WeightsWriteResult WriteWeightsFile(const std::string& path, const WeightsMeta& meta,
                                    const std::vector<WeightsView>& tensors, bool sync_directory) {
  WeightsMeta m = meta;
  m.format_version = kFormatVersion;
  m.tessera_version = TESSERA_VERSION;
  m.created = UtcNow();
  if (tensors.empty()) TESSERA_THROW(ValueError, path, ": a weights file needs at least one tensor");
  WeightsWriteResult out;
  std::map<std::string, bool> seen;
  for (const WeightsView& v : tensors) {
    out.tensors.push_back(RecordFor(v, path));
    if (seen[v.name]) TESSERA_THROW(ValueError, path, ": tensor ", v.name, " is given twice");
    seen[v.name] = true;
  }
  const std::string tmp = TempNameBeside(path);
  try {
    ComputeCrcs(tensors, out.tensors);
    std::vector<int64_t> offsets;
    {
      Hdf5Lock lock;
      offsets = LayOutFile(tmp, m, out.tensors);
    }
    out.sha256 = WriteDataAndHash(tmp, tensors, out.tensors, offsets, &out.file_bytes);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      TESSERA_THROW(IoError, path, ": cannot rename ", tmp, " into place: ", std::strerror(errno));
    if (sync_directory) FsyncParent(path);
  } catch (...) {
    unlink(tmp.c_str());
    throw;
  }
  return out;
}

WeightsInfo ReadWeightsInfo(const std::string& path, const WeightsReadOptions& o) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  return ReadInfoLocked(file.get(), path, o);
}

WeightsInfo ReadWeights(const std::string& path, const TensorSink& sink, const WeightsReadOptions& o) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  WeightsInfo info = ReadInfoLocked(file.get(), path, o);
  const int64_t size = FileSize(file.get(), path);
  CheckQueue checks;  // CRCs are checked on a second thread while the next tensors are read
  for (const TensorRecord& t : info.tensors) {
    void* dest = nullptr;
    TensorReadResult r = ReadTensorData(file.get(), t, size, [&] { return dest = sink(t); }, path);
    if (dest != nullptr && o.check_crc) checks.Add([&t, dest, r, &path] { CheckTensorCrc(t, dest, r, path); });
  }
  checks.Finish();
  return info;
}

std::vector<std::string> VerifyWeights(const std::string& path, const WeightsReadOptions& o) {
  Hdf5Lock lock;
  Hdf5Handle file = OpenForRead(path);
  Manifest man;
  WeightsInfo info = ReadInfoLocked(file.get(), path, o, &man);
  const int64_t size = FileSize(file.get(), path);
  std::vector<std::string> problems = CheckManifestIntegrity(man, WeightsMetaJson(info.meta), path);
  std::map<std::string, bool> listed;
  std::vector<char> buf;
  for (const TensorRecord& t : info.tensors) {
    listed[t.path] = true;
    try {
      TensorReadResult r = ReadTensorData(
          file.get(), t, size,
          [&] {
            buf.resize(static_cast<size_t>(t.bytes));
            return static_cast<void*>(buf.data());
          },
          path);
      CheckTensorCrc(t, buf.data(), r, path);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  for (const std::string& p : DatasetPaths(file.get(), path))
    if (p.rfind("/model/", 0) == 0 && !listed.count(p)) problems.push_back(path + ": " + p + ": not listed in the manifest");
  return problems;
}

}  // namespace tessera::io
