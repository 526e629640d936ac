// The checkpoint writer: a snapshot to host memory in Save(), then on a background thread the
// four phases of jobs/checkpoint.h (lay out, write the pieces, manifest and verification, commit),
// coordinated over the writer's own process group with deadlines.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/io/checksum.h"
#include "core/io/durable.h"
#include "core/io/hdf5.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "jobs/checkpoint/format.h"
#include "tessera/config.h"

namespace tessera::jobs {

namespace fs = std::filesystem;
using checkpoint_internal::kFileName;
using checkpoint_internal::MetaJson;
using checkpoint_internal::OwnedRange;
using checkpoint_internal::ParseStepName;
using checkpoint_internal::StepName;
using io::Hdf5Handle;
using io::Hdf5Lock;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint data is written as raw little-endian bytes at the datasets' offsets");

#define H5C(call, where) TESSERA_H5_CHECK(IoError, call, where)

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Checkpoints hold f32 and f64 tensors. (No HDF5 call: usable without the lock.)
void RequireStorableDType(DType t, const std::string& what) {
  if (t != DType::kF32 && t != DType::kF64)
    TESSERA_THROW(ValueError, what, ": checkpoints hold f32 and f64 tensors, not ", DTypeName(t));
}

// TESSERA_CHECKPOINT_TRACE=1 prints how long each phase took, per rank, to stderr.
class PhaseTrace {
 public:
  PhaseTrace(int rank, int64_t step) : rank_(rank), step_(step) {}
  void operator()(const char* what) {
    static const bool trace = std::getenv("TESSERA_CHECKPOINT_TRACE") != nullptr;
    if (!trace) return;
    auto now = Clock::now();
    std::fprintf(stderr, "checkpoint trace: rank %d step %lld %-28s %8.2f ms\n", rank_, static_cast<long long>(step_),
                 what, Seconds(last_, now) * 1e3);
    last_ = now;
  }

 private:
  int rank_;
  int64_t step_;
  Clock::time_point last_ = Clock::now();
};

}  // namespace

// ---- layout ---------------------------------------------------------------------------------

CheckpointLayout MakeCheckpointLayout(nn::FlatParameters& params, const optim::Optimizer* optimizer,
                                      int64_t optimizer_base) {
  CheckpointLayout l;
  l.flat_size = params.numel();
  l.buffers.push_back({params.values(), 0});
  for (const auto& e : params.entries()) l.entries.push_back({"/model/" + e.name, e.param->shape, 0, e.offset});
  if (optimizer) {
    for (const auto& [name, state] : optimizer->State()) {
      int b = static_cast<int>(l.buffers.size());
      l.buffers.push_back({state, optimizer_base});
      for (const auto& e : params.entries())
        l.entries.push_back({"/optim/" + e.name + "/" + name, e.param->shape, b, e.offset});
    }
  }
  return l;
}

// ---- the snapshot -----------------------------------------------------------------------------

struct CheckpointWriter::Job {
  CheckpointMeta meta;
  std::vector<CheckpointLayout::Entry> entries;
  std::vector<DType> buffer_dtypes;
  std::vector<Tensor> host;  // this rank's slice [lo, hi) of each buffer
  int64_t flat_size = 0, lo = 0, hi = 0;
  int rank = 0, world = 1;

  size_t count() const { return entries.size(); }
  int64_t esize(size_t d) const { return static_cast<int64_t>(SizeOf(buffer_dtypes[entries[d].buffer])); }
  int64_t numel(size_t d) const { return NumElements(entries[d].shape); }
};

CheckpointWriter::CheckpointWriter(CheckpointWriterOptions options) : o_(std::move(options)) {}

CheckpointWriter::~CheckpointWriter() {
  try {
    Wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tessera: checkpoint failed: %s\n", e.what());
  }
}

bool CheckpointWriter::busy() const {
  std::lock_guard<std::mutex> g(mu_);
  return running_;
}

void CheckpointWriter::Wait() {
  if (thread_.joinable()) thread_.join();
  ThrowIfFailed();
}

void CheckpointWriter::ThrowIfFailed() {
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> g(mu_);
    std::swap(e, error_);
  }
  if (e) std::rethrow_exception(e);
}

std::vector<CheckpointSaveReport> CheckpointWriter::TakeReports() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<CheckpointSaveReport> out;
  out.swap(reports_);
  return out;
}

namespace {
// The `dtype` root attribute: the dtype of the buffer that holds the model's parameters. A meta
// may leave it empty; one that names another dtype is refused.
std::string ModelDTypeName(const CheckpointLayout& layout, const std::string& given) {
  for (const CheckpointLayout::Entry& e : layout.entries) {
    if (e.path.rfind("/model/", 0) != 0) continue;
    const std::string actual = io::DTypeFileName(layout.buffers.at(e.buffer).data.dtype());
    if (!given.empty() && given != actual)
      TESSERA_THROW(ValueError, "the checkpoint's dtype is given as ", given, " but the model's parameters are ", actual);
    return actual;
  }
  return given;
}
}  // namespace

double CheckpointWriter::Save(const CheckpointLayout& layout, const CheckpointMeta& meta) {
  auto t0 = Clock::now();
  Wait();
  auto job = std::make_shared<Job>();
  job->meta = meta;
  job->meta.dtype = ModelDTypeName(layout, meta.dtype);
  job->entries = layout.entries;
  job->flat_size = layout.flat_size;
  job->rank = o_.group ? o_.group->rank() : 0;
  job->world = o_.group ? o_.group->size() : 1;
  OwnedRange(layout.flat_size, job->rank, job->world, &job->lo, &job->hi);
  const int64_t n = job->hi - job->lo;
  host_.resize(layout.buffers.size());
  for (size_t b = 0; b < layout.buffers.size(); ++b) {
    const CheckpointLayout::Buffer& buf = layout.buffers[b];
    if (job->lo < buf.base || job->hi > buf.base + buf.data.numel())
      TESSERA_THROW(ValueError, "checkpoint buffer ", b, " holds flat positions [", buf.base, ", ",
                    buf.base + buf.data.numel(), ") but rank ", job->rank, " must write [", job->lo, ", ", job->hi, ")");
    RequireStorableDType(buf.data.dtype(), "checkpoint buffer");
    Tensor& h = host_[b];
    if (!h.defined() || h.numel() != n || h.dtype() != buf.data.dtype()) h = Tensor::Empty({n}, buf.data.dtype());
    if (n > 0) h.CopyFrom(buf.data.Slice0(job->lo - buf.base, job->hi - buf.base));
    job->host.push_back(h);
    job->buffer_dtypes.push_back(buf.data.dtype());
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    running_ = true;
  }
  thread_ = std::thread([this, job] { Run(job); });
  return Seconds(t0, Clock::now());
}

void CheckpointWriter::Run(std::shared_ptr<Job> job) {
  std::exception_ptr error;
  const std::string context = detail::StrCat("checkpoint at step ", job->meta.step, ": ");
  try {
    WriteJob(*job);
  } catch (const dist::CommTimeoutError& e) {  // name the save the collective belonged to
    error = std::make_exception_ptr(dist::CommTimeoutError(context + e.what()));
  } catch (const dist::CommError& e) {
    error = std::make_exception_ptr(dist::CommError(context + e.what()));
  } catch (const io::FormatError&) {
    error = std::current_exception();
  } catch (const IoError& e) {  // a full disk, a file size limit, a directory gone
    error = std::make_exception_ptr(IoError(context + e.what()));
  } catch (...) {
    error = std::current_exception();
  }
  std::lock_guard<std::mutex> g(mu_);
  running_ = false;
  if (error) error_ = error;
}

// ---- the four phases --------------------------------------------------------------------------

namespace {

struct SavePaths {
  std::string name;  // step-00000400
  fs::path dir, tmp_dir, final_dir;
  std::string tmp_file;
};

SavePaths PathsFor(const std::string& dir, int64_t step) {
  SavePaths p;
  p.name = StepName(step);
  p.dir = dir;
  p.tmp_dir = p.dir / ("." + p.name + ".partial");
  p.final_dir = p.dir / p.name;
  p.tmp_file = (p.tmp_dir / kFileName).string();
  return p;
}

// Phase 1 (rank 0): the file under its temporary name with every dataset allocated (contiguous,
// no fill) and the root attributes and RNG state written; returns each dataset's byte offset
// (-1 for an empty one) in `offsets`.
template <typename Job>
void CreateLaidOutFile(const Job& job, const SavePaths& p, int64_t* offsets) {
  std::error_code ec;
  io::CreateDurableDirectories(p.dir);
  io::RemoveAllQuietly(p.tmp_dir);
  fs::create_directory(p.tmp_dir, ec);
  if (ec) TESSERA_THROW(IoError, p.tmp_dir.string(), ": cannot create: ", ec.message());
  const std::string& tmp = p.tmp_file;
  Hdf5Lock lock;
  Hdf5Handle fapl = io::FileCreateAccess(tmp);
  Hdf5Handle file(H5C(H5Fcreate(tmp.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()), tmp), H5Fclose);
  const CheckpointMeta& m = job.meta;
  hid_t f = file.get();
  io::WriteRootAttributes(f, MetaJson(m, "checkpoint"), tmp);
  io::WriteStringAttr(f, "layout",
                      detail::StrCat("each of the ", job.world, " ranks wrote a contiguous 1/", job.world,
                                     " of the flat buffers (", job.flat_size, " elements)"),
                      tmp);
  io::WriteStringAttr(f, "rng",
                      "philox4x32-10: the shuffle and augmentation streams are keyed by (seed, epoch), dropout by "
                      "(seed, example position); /rng/rank_state holds each rank's (seed, next example position)",
                      tmp);
  Hdf5Handle lcpl(H5C(H5Pcreate(H5P_LINK_CREATE), tmp), H5Pclose);
  H5C(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp);
  Hdf5Handle dcpl = io::PreallocatedContiguous(tmp);
  for (size_t d = 0; d < job.count(); ++d) {
    const auto& e = job.entries[d];
    std::string where = tmp + ": " + e.path;
    Hdf5Handle space = io::Dataspace(e.shape, where);
    Hdf5Handle ds(H5C(H5Dcreate2(f, e.path.c_str(), io::FileTensorType(job.buffer_dtypes[e.buffer], where), space.get(),
                                 lcpl.get(), dcpl.get(), H5P_DEFAULT),
                      where),
                  H5Dclose);
    io::WriteIntAttr(ds.get(), "flat_offset", e.offset, where);
    haddr_t a = H5Dget_offset(ds.get());
    if (job.numel(d) > 0 && a == HADDR_UNDEF) TESSERA_THROW(IoError, where, ": HDF5 did not allocate the dataset's storage");
    offsets[d] = job.numel(d) > 0 ? static_cast<int64_t>(a) : -1;
  }
  // Every rank's RNG position: (seed, next example position).
  std::vector<uint64_t> rs;
  for (int r = 0; r < job.world; ++r) {
    rs.push_back(m.seed);
    rs.push_back(static_cast<uint64_t>(r < static_cast<int>(m.rank_next_example.size()) ? m.rank_next_example[r] : 0));
  }
  Hdf5Handle rspace = io::Dataspace({job.world, 2}, tmp);
  Hdf5Handle rds(
      H5C(H5Dcreate2(f, "/rng/rank_state", H5T_STD_U64LE, rspace.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
          tmp + ": /rng/rank_state"),
      H5Dclose);
  H5C(H5Dwrite(rds.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, rs.data()), tmp);
  io::WriteU32Attr(rds.get(), "crc32", io::Crc32(rs.data(), rs.size() * sizeof(uint64_t)), tmp + ": /rng/rank_state");
  rds.Reset();
  H5C(file.Close(), tmp);
}

// Phase 2 (every rank): pwrite()s the bytes this rank owns at their offsets and makes them
// durable, checksumming each piece while fdatasync runs. Fills crcs[d] for the datasets it
// touched; returns the bytes written.
template <typename Job>
int64_t WriteOwnedPieces(const Job& job, const std::string& tmp_file, const int64_t* offsets, int64_t* crcs,
                         PhaseTrace& phase) {
  int fd = open(tmp_file.c_str(), O_RDWR);
  if (fd < 0) TESSERA_THROW(IoError, tmp_file, ": cannot open for writing: ", std::strerror(errno));
  int64_t written = 0;
  try {
    struct Piece {
      size_t d;
      const char* src;
      size_t n;
      int64_t at;
    };
    std::vector<Piece> pieces;
    for (size_t d = 0; d < job.count(); ++d) {
      const auto& e = job.entries[d];
      int64_t a = std::max(job.lo, e.offset), b = std::min(job.hi, e.offset + job.numel(d));
      if (a >= b) continue;
      const int64_t es = job.esize(d);
      pieces.push_back({d, static_cast<const char*>(job.host[e.buffer].raw_data()) + (a - job.lo) * es,
                        static_cast<size_t>((b - a) * es), offsets[d] + (a - e.offset) * es});
    }
    for (const Piece& p : pieces) {
      io::PwriteAll(fd, p.src, p.n, p.at, tmp_file);
      written += static_cast<int64_t>(p.n);
    }
    phase("2 pwrite");
    std::exception_ptr sync_error;
    std::thread syncer([&] {
      if (fdatasync(fd) != 0) {
        try {
          TESSERA_THROW(IoError, tmp_file, ": fdatasync failed: ", std::strerror(errno));
        } catch (...) {
          sync_error = std::current_exception();
        }
      }
    });
    for (const Piece& p : pieces) crcs[p.d] = io::Crc32(p.src, p.n);
    phase("2 CRC");
    syncer.join();
    phase("2 fdatasync (rest)");
    if (sync_error) std::rethrow_exception(sync_error);
  } catch (...) {
    close(fd);
    throw;
  }
  if (close(fd) != 0) TESSERA_THROW(IoError, tmp_file, ": close failed: ", std::strerror(errno));
  return written;
}

// Phase 3a (rank 0): each tensor's CRC from its pieces' CRCs (`gathered`: every rank's
// count()+1 values, in rank order).
template <typename Job>
std::vector<io::TensorRecord> CombineCrcs(const Job& job, const int64_t* gathered) {
  const size_t D = job.count();
  std::vector<io::TensorRecord> tensors(D);
  for (size_t d = 0; d < D; ++d) {
    const auto& e = job.entries[d];
    io::TensorRecord& t = tensors[d];
    t.path = e.path;
    t.shape = e.shape;
    t.dtype = job.buffer_dtypes[e.buffer];
    t.bytes = job.numel(d) * job.esize(d);
    t.has_crc = true;
    bool first = true;
    for (int r = 0; r < job.world; ++r) {
      int64_t lo, hi;
      OwnedRange(job.flat_size, r, job.world, &lo, &hi);
      int64_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + job.numel(d));
      if (a >= b) continue;
      auto piece = static_cast<uint32_t>(gathered[r * (D + 1) + d]);
      t.crc32 = first ? piece : io::Crc32Combine(t.crc32, piece, (b - a) * job.esize(d));
      first = false;
    }
  }
  return tensors;
}

// Phase 3b (rank 0): the crc32 attributes and the manifest, then fsync.
void WriteCrcsAndManifest(const std::string& tmp_file, const std::vector<io::TensorRecord>& tensors, const json& attrs) {
  {
    Hdf5Lock lock;
    Hdf5Handle fapl = io::FileCreateAccess(tmp_file);  // the new objects in the 1.10 format too
    Hdf5Handle file(H5C(H5Fopen(tmp_file.c_str(), H5F_ACC_RDWR, fapl.get()), tmp_file), H5Fclose);
    for (const io::TensorRecord& t : tensors) {
      Hdf5Handle ds(H5C(H5Dopen2(file.get(), t.path.c_str(), H5P_DEFAULT), tmp_file + ": " + t.path), H5Dclose);
      io::WriteU32Attr(ds.get(), "crc32", t.crc32, tmp_file + ": " + t.path);
    }
    io::WriteManifest(file.get(), tensors, attrs, tmp_file);
    H5C(file.Close(), tmp_file);
  }
  io::FsyncPath(tmp_file, false);
}

// Phase 3c (rank 0): reopens the file as a reader will: the metadata and manifest parse and agree,
// and every tensor has its shape, dtype and CRC and sits at the offset its bytes were written at.
// (Reading the data back here would only read the page cache; `tessera ckpt verify` and every
// load read and check it.)
void VerifyWrittenFile(const std::string& tmp_file, const std::vector<io::TensorRecord>& tensors,
                       const int64_t* offsets, int64_t step) {
  Hdf5Lock lock;
  Hdf5Handle file = io::OpenForRead(tmp_file);
  io::Manifest manifest;
  CheckpointInfo info = checkpoint_internal::ReadInfoLocked(file.get(), tmp_file, &manifest);
  std::vector<std::string> problems = checkpoint_internal::CheckConsistency(info, manifest);
  if (!problems.empty()) TESSERA_THROW(IoError, "verification: ", problems.front());
  if (info.tensors.size() != tensors.size() || info.meta.step != step)
    TESSERA_THROW(IoError, tmp_file, ": verification: the manifest lists ", info.tensors.size(), " tensors at step ",
                  info.meta.step, ", expected ", tensors.size(), " at step ", step);
  const int64_t size = io::FileSize(file.get(), tmp_file);
  for (size_t d = 0; d < tensors.size(); ++d) {
    const io::TensorRecord& t = info.tensors[d];
    io::TensorReadResult r = io::ReadTensorData(file.get(), t, size, {}, tmp_file);
    if (t.path != tensors[d].path || t.shape != tensors[d].shape || t.dtype != tensors[d].dtype ||
        t.crc32 != tensors[d].crc32 || !r.has_attr || r.attr != tensors[d].crc32 || r.file_offset != offsets[d])
      TESSERA_THROW(IoError, tmp_file, ": ", t.path, ": verification: the dataset does not match what was written");
  }
}

// Phase 4a (rank 0): renames the directory into place (swapping with an older save of the same
// step), points `latest` at it and makes both durable.
void CommitDirectory(const SavePaths& p) {
  std::error_code ec;
  fs::path old_dir;  // the previous checkpoint of this step, out of sight, deleted once the commit is durable
  if (io::Exists(p.final_dir)) {
    // The same step saved again (a run resumed from an older checkpoint). Swap the two
    // directories in one step where the file system can (Linux renameat2), so that step-N is
    // never missing; elsewhere move the old one aside first (a crash in between is repaired by
    // RemovePartialCheckpoints, which puts it back).
    if (renameat2(AT_FDCWD, p.tmp_dir.c_str(), AT_FDCWD, p.final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      old_dir = p.tmp_dir;
    } else {
      old_dir = p.dir / ("." + p.name + ".replaced");
      io::RemoveAllQuietly(old_dir);
      fs::rename(p.final_dir, old_dir, ec);
      if (ec) TESSERA_THROW(IoError, p.final_dir.string(), ": cannot move the older checkpoint aside: ", ec.message());
    }
  }
  if (old_dir != p.tmp_dir) {
    fs::rename(p.tmp_dir, p.final_dir, ec);
    if (ec) TESSERA_THROW(IoError, p.tmp_dir.string(), ": cannot rename to ", p.final_dir.string(), ": ", ec.message());
  }
  // One directory fsync makes both renames durable; until then a crash may undo either, which
  // leaves the previous state: the new checkpoint absent, or present but not yet `latest`.
  fs::path link_tmp = p.dir / ".latest.tmp";
  fs::remove(link_tmp, ec);
  fs::create_symlink(fs::path(p.name) / kFileName, link_tmp, ec);
  if (ec) TESSERA_THROW(IoError, link_tmp.string(), ": cannot create the symlink: ", ec.message());
  fs::rename(link_tmp, p.dir / "latest", ec);
  if (ec) TESSERA_THROW(IoError, (p.dir / "latest").string(), ": cannot replace: ", ec.message());
  io::FsyncPath(p.dir.string(), true);
  if (!old_dir.empty()) io::RemoveAllQuietly(old_dir);  // only once the new one is durable
}

// Phase 4b (rank 0): deletes all but the newest `keep` committed checkpoints (never `step`),
// each renamed out of sight first so that a crash half-way leaves nothing that looks like one.
void ApplyRetention(const fs::path& dir, int keep, int64_t step) {
  std::error_code ec;
  std::vector<std::pair<int64_t, std::string>> committed;
  for (const fs::path& entry : io::ListDir(dir)) {
    int64_t s = ParseStepName(entry.filename().string());
    if (s >= 0 && fs::is_directory(entry, ec)) committed.emplace_back(s, entry.filename().string());
  }
  std::sort(committed.begin(), committed.end());
  keep = std::max(1, keep);
  for (size_t i = 0; i + keep < committed.size(); ++i) {
    if (committed[i].first == step) continue;
    fs::path doomed = dir / ("." + committed[i].second + ".deleting");
    fs::rename(dir / committed[i].second, doomed, ec);
    if (!ec) io::RemoveAllQuietly(doomed);
  }
}

}  // namespace

void CheckpointWriter::WriteJob(Job& job) {
  const auto t0 = Clock::now();
  PhaseTrace phase(job.rank, job.meta.step);
  const bool lead = job.rank == 0;
  const int64_t step = job.meta.step;
  job.meta.format_version = kCheckpointFormatVersion;
  job.meta.tessera_version = TESSERA_VERSION;
  job.meta.created = io::UtcNow();
  job.meta.world_size = job.world;
  const SavePaths p = PathsFor(o_.dir, step);
  const size_t D = job.count();
  int64_t total_bytes = 0;
  for (size_t d = 0; d < D; ++d) total_bytes += job.numel(d) * job.esize(d);
  dist::CollectiveOptions co;
  co.timeout_s = o_.timeout_s + static_cast<double>(total_bytes) / o_.min_io_bytes_per_s;

  // 1. Rank 0 lays out the file and shares the data offsets; the last entry is a failure flag.
  Tensor offsets = Tensor::Zeros({static_cast<int64_t>(D) + 1}, DType::kI64);
  std::exception_ptr create_error;
  if (lead) {
    try {
      CreateLaidOutFile(job, p, offsets.data<int64_t>());
    } catch (...) {
      create_error = std::current_exception();
      offsets.data<int64_t>()[D] = 1;
    }
  }
  if (o_.group) o_.group->Broadcast(offsets, 0, co)->Wait();
  if (offsets.data<int64_t>()[D] != 0) {
    if (create_error) {
      io::RemoveAllQuietly(p.tmp_dir);
      std::rethrow_exception(create_error);
    }
    TESSERA_THROW(IoError, "rank 0 could not create ", p.tmp_file, " (rank 0 reports why)");
  }
  phase("1 layout (rank 0) + offsets");

  // 2. Every rank writes the bytes it owns; their CRCs are gathered (last entry: failure flag).
  Tensor crcs = Tensor::Full({static_cast<int64_t>(D) + 1}, -1, DType::kI64);
  crcs.data<int64_t>()[D] = 0;
  std::exception_ptr write_error;
  int64_t rank_bytes = 0;
  try {
    rank_bytes = WriteOwnedPieces(job, p.tmp_file, offsets.data<int64_t>(), crcs.data<int64_t>(), phase);
  } catch (...) {
    write_error = std::current_exception();
    crcs.data<int64_t>()[D] = 1;
  }
  Tensor all = crcs;
  if (o_.group) {
    all = Tensor::Empty({static_cast<int64_t>((D + 1) * job.world)}, DType::kI64);
    o_.group->AllGather(crcs, all, co)->Wait();
  }
  const int64_t* g = all.data<int64_t>();
  for (int r = 0; r < job.world; ++r) {
    if (g[r * (D + 1) + D] == 0) continue;
    if (lead) io::RemoveAllQuietly(p.tmp_dir);
    if (write_error) std::rethrow_exception(write_error);
    TESSERA_THROW(IoError, "rank ", r, " could not write its part of ", p.tmp_file,
                  " (rank ", r, " reports why)");
  }
  phase("2 gather CRCs");

  // Rank 0 tells every rank how the commit went, so that all of them report the same outcome.
  auto share_outcome = [&](bool ok) {
    if (!o_.group) return true;
    Tensor status = Tensor::FromVector({ok ? 0.0 : 1.0}, {1}, DType::kF64);
    o_.group->Broadcast(status, 0, co)->Wait();
    return status.data<double>()[0] == 0;
  };
  auto report = [&](const std::string& path) {
    std::lock_guard<std::mutex> lk(mu_);
    reports_.push_back({step, path, total_bytes, rank_bytes, Seconds(t0, Clock::now())});
  };
  if (!lead) {
    if (!share_outcome(true))
      TESSERA_THROW(IoError, "rank 0 could not commit it (rank 0 reports why)");
    report("");
    return;
  }

  // 3 and 4. Rank 0: manifest, verification, commit, retention.
  try {
    std::vector<io::TensorRecord> tensors = CombineCrcs(job, g);
    WriteCrcsAndManifest(p.tmp_file, tensors, MetaJson(job.meta, "checkpoint"));
    phase("3 attributes + manifest + fsync");
    VerifyWrittenFile(p.tmp_file, tensors, offsets.data<int64_t>(), step);
    io::FsyncPath(p.tmp_dir.string(), true);
    phase("3 verify + fsync dir");
    CommitDirectory(p);
    ApplyRetention(p.dir, o_.keep_last, step);
    phase("4 commit + retention");
  } catch (...) {
    io::RemoveAllQuietly(p.tmp_dir);
    std::exception_ptr e = std::current_exception();
    try {
      share_outcome(false);
    } catch (...) {  // a broken group: the commit's own failure is still the one to report
    }
    std::rethrow_exception(e);
  }
  share_outcome(true);
  report((p.final_dir / kFileName).string());
}

}  // namespace tessera::jobs
