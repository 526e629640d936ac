// Checkpoint layouts under mpirun: three ways for N ranks to write ONE checkpoint of ~100 float32
// tensors (512 MiB by default), each stored at its full logical shape [rows, 1280]. Rank r owns the
// contiguous slice [r*E/N, (r+1)*E/N) of the concatenation of all E elements (slices cut through
// tensors, even through rows) and writes only the bytes it owns:
//
//   hdf5_mpio_indep, hdf5_mpio_coll  one file through parallel HDF5 (H5Pset_fapl_mpio on
//       MPI_COMM_WORLD); every dataset created collectively; each rank writes its pieces as
//       hyperslabs with independent or collective transfer (H5Pset_dxpl_mpio); H5Fflush, H5Fclose,
//       then open + fsync.
//   vds   one serial HDF5 file per rank holding its pieces (1-D datasets), plus main.h5 (rank 0)
//       with one virtual dataset per tensor mapping it onto the pieces; every file fsynced.
//   posix rank 0 lays the file out with serial HDF5 (contiguous datasets, H5D_ALLOC_TIME_EARLY,
//       H5D_FILL_TIME_NEVER), reads each dataset's file offset (H5Dget_offset), closes the file and
//       broadcasts the offsets; every rank then pwrite()s its bytes there and fdatasyncs; barrier.
//   dd    the baseline: rank 0 runs `dd if=/dev/zero bs=4M conv=fsync` of the same bytes into the same
//       directory (posix_spawn) while the other ranks wait without spinning. It is measured in the
//       same process and rotation as the methods, so that it sees the same disk conditions.
//
// Time (after one untimed warm-up write of the same size per process): from a barrier to "all data durable"
// (including an fsync of the directory), the slowest rank's; throughput = checkpoint bytes / time,
// MB = 1e6 bytes. After each trial rank 0 reads every tensor back with plain serial HDF5 (through
// the virtual datasets for vds), checks every element, then deletes the files and syncs the file
// system. Rank 0 prints one JSON line per (method, trial). Driver, with the VDS checks:
// bench/run_ckpt_layout_bench.sh.
//
//   mpirun -np N build/bench/ckpt_layout_bench --dir DIR [--trials 3] [--first-trial 0]
//       [--tensors 100] [--rows 104858] [--methods dd,hdf5_mpio_indep,hdf5_mpio_coll,vds,posix] [--keep]
//   build/bench/ckpt_layout_bench --print-bytes [--tensors 100] [--rows 104858]
#include <fcntl.h>
#include <hdf5.h>
#include <mpi.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

#ifndef H5_HAVE_PARALLEL
#error "ckpt_layout_bench needs the parallel (MPI) flavour of HDF5"
#endif

namespace {

constexpr hsize_t kCols = 1280;
constexpr size_t kPwriteChunk = size_t{64} << 20;  // bytes per pwrite() call in the posix method

[[noreturn]] void Die(const std::string& what) {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "[rank %d] ckpt_layout_bench: %s\n", rank, what.c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

// HDF5 ids and status codes are negative on failure (HDF5 prints its error stack). (H5CHECK is
// taken: H5public.h defines it.)
template <typename T>
T H5Check(T rc, const char* what) {
  if (rc < 0) Die(std::string("HDF5 call failed: ") + what);
  return rc;
}
#define H5OK(expr) H5Check((expr), #expr)

void PosixCheck(bool ok, const std::string& what) {
  if (!ok) Die(what + ": " + std::strerror(errno));
}

// ---- the checkpoint's layout -------------------------------------------------------------------

struct Tensor {
  hsize_t rows;
  uint64_t begin;  // first element in the concatenation
};

// The part of one tensor that one rank owns.
struct Piece {
  int tensor;
  int rank;
  uint64_t offset;  // first element within the tensor (row-major)
  uint64_t count;
  uint64_t local;  // first element within the owner's slice
};

struct Layout {
  int ranks = 1;
  uint64_t elements = 0;
  std::vector<Tensor> tensors;
  std::vector<Piece> pieces;  // by tensor, then rank

  uint64_t SliceBegin(int r) const { return elements * static_cast<uint64_t>(r) / ranks; }
  uint64_t SliceSize(int r) const { return SliceBegin(r + 1) - SliceBegin(r); }
  uint64_t Bytes() const { return elements * sizeof(float); }
};

// `tensors` tensors of [rows_i, kCols], rows_i within +-25% of the mean but for the last, which takes
// the rest of total_rows.
Layout MakeLayout(int tensors, int64_t total_rows, int ranks) {
  Layout l;
  l.ranks = ranks;
  const int64_t mean = total_rows / tensors;
  int64_t left = total_rows;
  for (int t = 0; t < tensors; ++t) {
    int64_t rows = t + 1 < tensors ? mean + mean * ((t * 37) % 51 - 25) / 100 : left;
    if (rows < 1) {
      std::fprintf(stderr, "ckpt_layout_bench: --rows %lld is too small for --tensors %d\n",
                   static_cast<long long>(total_rows), tensors);
      std::exit(2);
    }
    left -= rows;
    l.tensors.push_back({static_cast<hsize_t>(rows), l.elements});
    l.elements += static_cast<uint64_t>(rows) * kCols;
  }
  for (int t = 0; t < tensors; ++t) {
    const uint64_t b = l.tensors[t].begin, e = b + l.tensors[t].rows * kCols;
    for (int r = 0; r < ranks; ++r) {
      const uint64_t lo = std::max(b, l.SliceBegin(r)), hi = std::min(e, l.SliceBegin(r + 1));
      if (lo < hi) l.pieces.push_back({t, r, lo - b, hi - lo, lo - l.SliceBegin(r)});
    }
  }
  return l;
}

// The deterministic content: exact integers below 2^24 (so float holds them exactly), distinct
// within a tensor and shifted differently in every tensor.
inline float Value(int tensor, uint64_t element) {
  return static_cast<float>((static_cast<uint32_t>(tensor) * 2654435761u + static_cast<uint32_t>(element)) &
                            0xFFFFFFu);
}

// A row-major element range of a [rows, kCols] tensor as at most three rectangles: the rest of a
// partial first row, whole rows, the start of a partial last row.
struct Block {
  hsize_t start[2];
  hsize_t size[2];
};

std::vector<Block> Blocks(uint64_t offset, uint64_t count) {
  std::vector<Block> blocks;
  if (offset % kCols != 0 && count > 0) {
    const uint64_t w = std::min<uint64_t>(kCols - offset % kCols, count);
    blocks.push_back({{offset / kCols, offset % kCols}, {1, w}});
    offset += w;
    count -= w;
  }
  if (count >= kCols) {
    blocks.push_back({{offset / kCols, 0}, {count / kCols, kCols}});
    offset += count / kCols * kCols;
    count %= kCols;
  }
  if (count > 0) blocks.push_back({{offset / kCols, 0}, {1, count}});
  return blocks;
}

// Selects a piece's elements in a tensor's 2-D dataspace (their row-major order is the piece's).
void SelectPiece(hid_t space, const Piece& p) {
  H5S_seloper_t op = H5S_SELECT_SET;
  for (const Block& b : Blocks(p.offset, p.count)) {
    const hsize_t one[2] = {1, 1};
    H5OK(H5Sselect_hyperslab(space, op, b.start, nullptr, one, b.size));
    op = H5S_SELECT_OR;
  }
}

std::string TensorName(int t) {
  char name[32];
  std::snprintf(name, sizeof name, "tensor_%03d", t);
  return name;
}

std::string RankFileName(int r) { return "rank" + std::to_string(r) + ".h5"; }

hid_t TensorSpace(const Layout& l, int t) {
  const hsize_t dims[2] = {l.tensors[t].rows, kCols};
  return H5OK(H5Screate_simple(2, dims, nullptr));
}

// Contiguous, allocated at creation, never filled: the data's file offsets are known at once and
// nothing but the owners' bytes is ever written there.
hid_t ContiguousDcpl() {
  hid_t dcpl = H5OK(H5Pcreate(H5P_DATASET_CREATE));
  H5OK(H5Pset_layout(dcpl, H5D_CONTIGUOUS));
  H5OK(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY));
  H5OK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
  return dcpl;
}

void Fsync(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  PosixCheck(fd >= 0, "open " + path);
  PosixCheck(fsync(fd) == 0, "fsync " + path);
  PosixCheck(close(fd) == 0, "close " + path);
}

// ---- the methods -------------------------------------------------------------------------------

struct Context {
  const Layout& layout;
  int rank;
  const std::vector<const Piece*>& mine;  // this rank's piece of each tensor, or null
  const float* slice;                     // this rank's elements
  std::string dir;
};

// (a) One file through parallel HDF5 over MPI-IO.
void WriteMpio(const Context& c, bool collective) {
  const Layout& l = c.layout;
  const std::string path = c.dir + "/ckpt.h5";
  hid_t fapl = H5OK(H5Pcreate(H5P_FILE_ACCESS));
  H5OK(H5Pset_fapl_mpio(fapl, MPI_COMM_WORLD, MPI_INFO_NULL));
  hid_t file = H5OK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
  hid_t dcpl = ContiguousDcpl();
  hid_t dxpl = H5OK(H5Pcreate(H5P_DATASET_XFER));
  H5OK(H5Pset_dxpl_mpio(dxpl, collective ? H5FD_MPIO_COLLECTIVE : H5FD_MPIO_INDEPENDENT));
  std::vector<hid_t> dsets;
  for (size_t t = 0; t < l.tensors.size(); ++t) {  // creation is collective: every rank, same order
    hid_t space = TensorSpace(l, t);
    dsets.push_back(H5OK(
        H5Dcreate2(file, TensorName(t).c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)));
    H5OK(H5Sclose(space));
  }
  for (size_t t = 0; t < l.tensors.size(); ++t) {
    const Piece* p = c.mine[t];
    if (p == nullptr && !collective) continue;  // a collective write needs every rank, even with nothing
    hid_t fspace = H5OK(H5Dget_space(dsets[t]));
    const hsize_t n = p != nullptr ? p->count : 1;
    hid_t mspace = H5OK(H5Screate_simple(1, &n, nullptr));
    if (p != nullptr) {
      SelectPiece(fspace, *p);
    } else {
      H5OK(H5Sselect_none(fspace));
      H5OK(H5Sselect_none(mspace));
    }
    H5OK(H5Dwrite(dsets[t], H5T_NATIVE_FLOAT, mspace, fspace, dxpl, c.slice + (p != nullptr ? p->local : 0)));
    H5OK(H5Sclose(mspace));
    H5OK(H5Sclose(fspace));
  }
  for (hid_t d : dsets) H5OK(H5Dclose(d));
  H5OK(H5Fflush(file, H5F_SCOPE_GLOBAL));
  H5OK(H5Fclose(file));
  H5OK(H5Pclose(dxpl));
  H5OK(H5Pclose(dcpl));
  H5OK(H5Pclose(fapl));
  Fsync(path);  // H5Fclose is collective: every rank's bytes are in the file by now
  if (c.rank == 0) Fsync(c.dir);
}

// main.h5: one virtual dataset per tensor, each piece mapped from /tensor_NNN of rankR.h5, named
// relative to main.h5.
void WriteVdsMain(const Layout& l, const std::string& path) {
  hid_t file = H5OK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  auto p = l.pieces.begin();
  for (size_t t = 0; t < l.tensors.size(); ++t) {
    hid_t dcpl = H5OK(H5Pcreate(H5P_DATASET_CREATE));
    hid_t vspace = TensorSpace(l, t);
    for (; p != l.pieces.end() && p->tensor == static_cast<int>(t); ++p) {
      const hsize_t n = p->count;
      hid_t src = H5OK(H5Screate_simple(1, &n, nullptr));
      SelectPiece(vspace, *p);
      H5OK(H5Pset_virtual(dcpl, vspace, RankFileName(p->rank).c_str(), TensorName(t).c_str(), src));
      H5OK(H5Sclose(src));
    }
    H5OK(H5Sselect_all(vspace));
    hid_t dset =
        H5OK(H5Dcreate2(file, TensorName(t).c_str(), H5T_IEEE_F32LE, vspace, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5OK(H5Dclose(dset));
    H5OK(H5Sclose(vspace));
    H5OK(H5Pclose(dcpl));
  }
  H5OK(H5Fclose(file));
}

// (b) Per-rank files + a main file of virtual datasets.
void WriteVds(const Context& c) {
  const Layout& l = c.layout;
  const std::string path = c.dir + "/" + RankFileName(c.rank);
  hid_t file = H5OK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  hid_t dcpl = ContiguousDcpl();
  for (size_t t = 0; t < l.tensors.size(); ++t) {
    const Piece* p = c.mine[t];
    if (p == nullptr) continue;
    const hsize_t n = p->count;
    hid_t space = H5OK(H5Screate_simple(1, &n, nullptr));
    hid_t dset =
        H5OK(H5Dcreate2(file, TensorName(t).c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5OK(H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.slice + p->local));
    H5OK(H5Dclose(dset));
    H5OK(H5Sclose(space));
  }
  H5OK(H5Pclose(dcpl));
  H5OK(H5Fclose(file));
  Fsync(path);
  if (c.rank == 0) {
    WriteVdsMain(l, c.dir + "/main.h5");
    Fsync(c.dir + "/main.h5");
  }
  Fsync(c.dir);  // every rank created a file
}

// (c) Rank 0 lays the file out with serial HDF5; every rank pwrite()s its bytes.
void WritePosix(const Context& c) {
  const Layout& l = c.layout;
  const std::string path = c.dir + "/ckpt.h5";
  std::vector<uint64_t> offsets(l.tensors.size());
  if (c.rank == 0) {
    hid_t file = H5OK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    hid_t dcpl = ContiguousDcpl();
    for (size_t t = 0; t < l.tensors.size(); ++t) {
      hid_t space = TensorSpace(l, t);
      hid_t dset =
          H5OK(H5Dcreate2(file, TensorName(t).c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
      const haddr_t addr = H5Dget_offset(dset);
      if (addr == HADDR_UNDEF) Die("H5Dget_offset: no address for " + TensorName(t));
      offsets[t] = addr;
      H5OK(H5Dclose(dset));
      H5OK(H5Sclose(space));
    }
    H5OK(H5Pclose(dcpl));
    H5OK(H5Fclose(file));
  }
  MPI_Bcast(offsets.data(), static_cast<int>(offsets.size()), MPI_UINT64_T, 0, MPI_COMM_WORLD);
  const int fd = open(path.c_str(), O_WRONLY);
  PosixCheck(fd >= 0, "open " + path);
  for (size_t t = 0; t < l.tensors.size(); ++t) {
    const Piece* p = c.mine[t];
    if (p == nullptr) continue;
    const char* src = reinterpret_cast<const char*>(c.slice + p->local);
    off_t at = static_cast<off_t>(offsets[t] + p->offset * sizeof(float));
    size_t left = p->count * sizeof(float);
    while (left > 0) {
      const ssize_t n = pwrite(fd, src, std::min(left, kPwriteChunk), at);
      if (n < 0 && errno == EINTR) continue;
      PosixCheck(n > 0, "pwrite " + path);
      src += n;
      at += n;
      left -= static_cast<size_t>(n);
    }
  }
  PosixCheck(fdatasync(fd) == 0, "fdatasync " + path);  // rank 0's covers its HDF5 metadata too
  PosixCheck(close(fd) == 0, "close " + path);
  if (c.rank == 0) Fsync(c.dir);
  MPI_Barrier(MPI_COMM_WORLD);
}

// A barrier that sleeps instead of spinning, so that waiting ranks leave the cores to the dd child.
void SleepyBarrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  for (int done = 0;;) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (done) return;
    usleep(1000);
  }
}

// The baseline: dd of the checkpoint's bytes from /dev/zero, fsynced, in the same directory.
void RunDd(const Context& c) {
  if (c.rank == 0) {
    std::vector<std::string> args = {"dd", "if=/dev/zero", "of=" + c.dir + "/dd.bin", "bs=4M",
                                      "count=" + std::to_string(c.layout.Bytes()), "iflag=count_bytes",
                                      "conv=fsync", "status=none"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    errno = posix_spawnp(&pid, "dd", nullptr, nullptr, argv.data(), environ);
    PosixCheck(errno == 0, "posix_spawnp dd");
    int status = 0;
    PosixCheck(waitpid(pid, &status, 0) == pid, "waitpid dd");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("dd failed");
  }
  SleepyBarrier();
}

// Commits the deletions (and, with -o discard, their discards) before the next timed write.
void SyncFs(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY);
  PosixCheck(fd >= 0, "open " + dir);
  PosixCheck(syncfs(fd) == 0, "syncfs " + dir);
  PosixCheck(close(fd) == 0, "close " + dir);
}

// Untimed, before the first trial: as many bytes as the checkpoint written, fsynced and deleted.
// On this project's VMs (virtio-balloon free page reporting) the first ~512 MiB of page cache a
// process fills after a pause can cost several times the rest; this keeps that out of the timings.
void WarmUp(const std::string& dir, uint64_t bytes) {
  const std::string path = dir + "/warmup.bin";
  const std::vector<char> block(size_t{4} << 20, 1);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  PosixCheck(fd >= 0, "open " + path);
  for (uint64_t done = 0; done < bytes; done += block.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), bytes - done));
    PosixCheck(write(fd, block.data(), n) == static_cast<ssize_t>(n), "write " + path);
  }
  PosixCheck(fsync(fd) == 0 && close(fd) == 0, "fsync " + path);
  PosixCheck(unlink(path.c_str()) == 0, "unlink " + path);
  SyncFs(dir);
}

// ---- checking and cleaning up ------------------------------------------------------------------

// Reads every tensor of `path` with serial HDF5 and compares each element; "" when all match.
std::string Verify(const Layout& l, const std::string& path) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) return "cannot open " + path;
  std::string error;
  std::vector<float> data;
  for (size_t t = 0; t < l.tensors.size() && error.empty(); ++t) {
    hid_t dset = H5OK(H5Dopen2(file, TensorName(t).c_str(), H5P_DEFAULT));
    hid_t space = H5OK(H5Dget_space(dset));
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(space) != 2 || H5Sget_simple_extent_dims(space, dims, nullptr) != 2 ||
        dims[0] != l.tensors[t].rows || dims[1] != kCols) {
      error = TensorName(t) + ": wrong shape";
    } else {
      data.resize(dims[0] * dims[1]);
      H5OK(H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
      for (uint64_t e = 0; e < data.size(); ++e) {
        if (data[e] != Value(t, e)) {
          error = TensorName(t) + "[" + std::to_string(e) + "] = " + std::to_string(data[e]) + ", expected " +
                  std::to_string(Value(t, e));
          break;
        }
      }
    }
    H5OK(H5Sclose(space));
    H5OK(H5Dclose(dset));
  }
  H5OK(H5Fclose(file));
  return error;
}

std::string VerifySize(const std::string& path, uint64_t bytes) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "cannot stat " + path;
  return static_cast<uint64_t>(st.st_size) == bytes ? "" : path + ": wrong size";
}

void Remove(const std::string& path) {
  PosixCheck(unlink(path.c_str()) == 0 || errno == ENOENT, "unlink " + path);
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

struct Options {
  std::string dir;
  int trials = 3, first_trial = 0, tensors = 100;
  int64_t rows = 104858;  // x 1280 x 4 bytes = 512.0 MiB
  std::vector<std::string> methods = {"dd", "hdf5_mpio_indep", "hdf5_mpio_coll", "vds", "posix"};
  bool keep = false, print_bytes = false;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--keep") o.keep = true;
    else if (a == "--print-bytes") o.print_bytes = true;
    else if (a == "--dir" && has_value) o.dir = argv[++i];
    else if (a == "--trials" && has_value) o.trials = std::atoi(argv[++i]);
    else if (a == "--first-trial" && has_value) o.first_trial = std::atoi(argv[++i]);
    else if (a == "--tensors" && has_value) o.tensors = std::atoi(argv[++i]);
    else if (a == "--rows" && has_value) o.rows = std::atoll(argv[++i]);
    else if (a == "--methods" && has_value) o.methods = Split(argv[++i]);
    else {
      std::fprintf(stderr, "ckpt_layout_bench: bad argument %s (see the header of ckpt_layout_bench.cc)\n", a.c_str());
      std::exit(2);
    }
  }
  for (const std::string& m : o.methods) {
    if (m != "dd" && m != "hdf5_mpio_indep" && m != "hdf5_mpio_coll" && m != "vds" && m != "posix") {
      std::fprintf(stderr, "ckpt_layout_bench: unknown method %s\n", m.c_str());
      std::exit(2);
    }
  }
  if (o.tensors < 1 || o.trials < 1 || (!o.print_bytes && o.dir.empty())) {
    std::fprintf(stderr, "ckpt_layout_bench: need --dir, --tensors >= 1 and --trials >= 1\n");
    std::exit(2);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = Parse(argc, argv);
  if (opt.print_bytes) {
    std::printf("%llu\n", static_cast<unsigned long long>(MakeLayout(opt.tensors, opt.rows, 1).Bytes()));
    return 0;
  }
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  const Layout layout = MakeLayout(opt.tensors, opt.rows, ranks);
  std::vector<const Piece*> mine(layout.tensors.size(), nullptr);
  for (const Piece& p : layout.pieces)
    if (p.rank == rank) mine[p.tensor] = &p;
  std::vector<float> slice(layout.SliceSize(rank));  // the rank's data, in memory before any timing
  for (const Piece* p : mine)
    if (p != nullptr)
      for (uint64_t e = 0; e < p->count; ++e) slice[p->local + e] = Value(p->tensor, p->offset + e);
  if (rank == 0) PosixCheck(mkdir(opt.dir.c_str(), 0755) == 0 || errno == EEXIST, "mkdir " + opt.dir);
  const Context ctx{layout, rank, mine, slice.data(), opt.dir};
  const auto [min_it, max_it] = std::minmax_element(
      layout.tensors.begin(), layout.tensors.end(), [](const Tensor& a, const Tensor& b) { return a.rows < b.rows; });
  const hsize_t rows_min = min_it->rows, rows_max = max_it->rows;

  if (rank == 0) WarmUp(opt.dir, layout.Bytes());
  int failures = 0;
  for (int trial = opt.first_trial; trial < opt.first_trial + opt.trials; ++trial) {
    std::vector<std::string> order = opt.methods;  // a different method goes first in each trial
    std::rotate(order.begin(), order.begin() + trial % order.size(), order.end());
    for (const std::string& method : order) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      if (method == "dd") RunDd(ctx);
      else if (method == "hdf5_mpio_indep") WriteMpio(ctx, false);
      else if (method == "hdf5_mpio_coll") WriteMpio(ctx, true);
      else if (method == "vds") WriteVds(ctx);
      else WritePosix(ctx);
      const double mine_s = MPI_Wtime() - t0;
      double slowest = 0, fastest = 0;
      MPI_Reduce(&mine_s, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
      MPI_Reduce(&mine_s, &fastest, 1, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
      MPI_Barrier(MPI_COMM_WORLD);  // every rank has closed its files
      if (rank == 0) {
        const std::string main_file = opt.dir + (method == "vds" ? "/main.h5" : "/ckpt.h5");
        const std::string error = method == "dd" ? VerifySize(opt.dir + "/dd.bin", layout.Bytes())
                                                 : Verify(layout, main_file);
        if (!error.empty()) ++failures;
        if (!opt.keep) {
          Remove(opt.dir + "/ckpt.h5");
          Remove(opt.dir + "/main.h5");
          Remove(opt.dir + "/dd.bin");
          for (int r = 0; r < ranks; ++r) Remove(opt.dir + "/" + RankFileName(r));
          SyncFs(opt.dir);
        }
        std::printf("{\"kind\": \"ckpt\", \"method\": \"%s\", \"ranks\": %d, \"trial\": %d, \"tensors\": %d, "
                    "\"rows_min\": %llu, \"rows_max\": %llu, \"bytes\": %llu, \"seconds\": %.4f, "
                    "\"fastest_rank_seconds\": %.4f, \"mbps\": %.1f, \"verified\": %s, \"error\": \"%s\"}\n",
                    method.c_str(), ranks, trial, opt.tensors, static_cast<unsigned long long>(rows_min),
                    static_cast<unsigned long long>(rows_max), static_cast<unsigned long long>(layout.Bytes()),
                    slowest, fastest, layout.Bytes() / slowest / 1e6, error.empty() ? "true" : "false",
                    error.c_str());
        std::fflush(stdout);
      }
      MPI_Barrier(MPI_COMM_WORLD);
    }
  }
  MPI_Bcast(&failures, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return failures == 0 ? 0 : 1;
}
