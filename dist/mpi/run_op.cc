// The MPI calls of each collective (dist/mpi/op.h).
#include <algorithm>
#include <cstring>

#include "dist/mpi/arrivals.h"
#include "dist/mpi/mpi_check.h"
#include "dist/mpi/op.h"

namespace tessera::dist::mpi_internal {
namespace {

using collective::Kind;

// Elements per MPI call for allreduce, reduce and broadcast (MPI counts are int).
constexpr int64_t kChunk = int64_t{1} << 28;

// The largest ops that use a nonblocking call, in bytes: an all-gather's output, an all-reduce's
// (a reduce's) tensor, a reduce-scatter's input. Above these the
// worker's blocking calls are as fast, and they progress while the caller computes.
constexpr int64_t kNonblockingAllGatherBytes = int64_t{256} << 10;
constexpr int64_t kNonblockingAllReduceBytes = int64_t{16} << 10;
constexpr int64_t kNonblockingReduceBytes = int64_t{4} << 10;  // MPI_Reduce itself is cheaper above
constexpr int64_t kNonblockingReduceScatterBytes = int64_t{256} << 10;

int64_t Bytes(const Tensor& t) { return t.numel() * static_cast<int64_t>(SizeOf(t.dtype())); }

// dst = blocks[0] op blocks[1] op ... op blocks[size - 1], `n` elements each, in rank order.
void ReduceBlocks(void* dst, const unsigned char* blocks, int64_t n, DType t, ReduceOp op, int size) {
  const size_t block = static_cast<size_t>(n) * SizeOf(t);
  std::memcpy(dst, blocks, block);
  for (int k = 1; k < size; ++k) collective::ReduceInto(dst, blocks + k * block, n, t, op);
}

MPI_Datatype MpiType(DType t) {
  switch (t) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    default:
      break;
  }
  TESSERA_THROW(ShapeError, "MPI process group: dtype ", DTypeName(t), " is not supported");
}

MPI_Op MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      break;
  }
  return MPI_SUM;  // kAvg: the sum, divided afterwards
}

}  // namespace

std::string Op::What() const {
  using ::tessera::detail::StrCat;
  std::string detail;
  switch (kind) {
    case Kind::kAllReduce:
      detail = collective::Elements(a) + ", ";
      break;
    case Kind::kReduce:
      detail = StrCat(collective::Elements(a), " to rank ", root, ", ");
      break;
    case Kind::kReduceScatter:
    case Kind::kAllGather:
      detail = StrCat(collective::Elements(a), " -> ", b.numel(), ", ");
      break;
    case Kind::kBroadcast:
      detail = StrCat(collective::Elements(a), " from rank ", root, ", ");
      break;
    case Kind::kBarrier:
      break;
    case Kind::kSplit:
      detail = StrCat("color ", color, ", key ", key, ", ");
      break;
  }
  return collective::Describe(kind, seq, detail, group_size);
}

bool UsesNonblocking(const Op& op, int size) {
  switch (op.kind) {
    case Kind::kAllGather:
      return op.a.numel() > 0 && Bytes(op.b) <= kNonblockingAllGatherBytes;
    case Kind::kAllReduce:
      return op.a.numel() > 0 && Bytes(op.a) <= kNonblockingAllReduceBytes;
    case Kind::kReduce:
      return op.a.numel() > 0 && Bytes(op.a) <= kNonblockingReduceBytes;
    case Kind::kReduceScatter:
      return op.b.numel() > 0 && Bytes(op.a) <= kNonblockingReduceScatterBytes;
    default:
      return false;
  }
}

namespace {

// A small all-reduce (or reduce: only the root keeps the result) in two nonblocking phases, so that each
// message is 1/size of the tensor (below the shared-memory transport's eager limit where one whole tensor is
// not): an all-to-all of the blocks, padded to `blk` elements, each rank reducing its own block; then an
// all-gather of the reduced blocks. scratch: the padded blocks to send, then those received.
int64_t AllReduceBlock(const Op& op, int size) { return (op.a.numel() + size - 1) / size; }

void StartAllReduce(Op& op, MPI_Comm data, int size, MPI_Datatype type) {
  const int64_t blk = AllReduceBlock(op, size);
  const size_t padded = static_cast<size_t>(blk * size) * SizeOf(op.a.dtype());
  op.scratch.assign(2 * padded, 0);
  std::memcpy(op.scratch.data(), op.a.raw_data(), static_cast<size_t>(Bytes(op.a)));
  TESSERA_MPI_CHECK(MPI_Ialltoall(op.scratch.data(), static_cast<int>(blk), type, op.scratch.data() + padded,
                                  static_cast<int>(blk), type, data, &op.request));
}

// Returns whether the all-reduce is done (else its all-gather has started).
bool ContinueAllReduce(Op& op, MPI_Comm data, int rank, int size, MPI_Datatype type) {
  const int64_t blk = AllReduceBlock(op, size);
  const size_t es = SizeOf(op.a.dtype()), padded = static_cast<size_t>(blk * size) * es;
  unsigned char* blocks = op.scratch.data();
  if (op.phase == 0) {
    op.phase = 1;
    ReduceBlocks(blocks + rank * blk * es, blocks + padded, blk, op.a.dtype(), op.reduce, size);
    TESSERA_MPI_CHECK(MPI_Iallgather(MPI_IN_PLACE, static_cast<int>(blk), type, blocks, static_cast<int>(blk),
                                     type, data, &op.request));
    return false;
  }
  if (op.kind == Kind::kReduce && rank != op.root) return true;  // the others' tensors stay as they were
  std::memcpy(op.a.raw_data(), blocks, static_cast<size_t>(Bytes(op.a)));
  if (op.reduce == ReduceOp::kAvg) collective::DivideBy(op.a, size);
  return true;
}

}  // namespace

void StartNonblocking(Op& op, MPI_Comm data, int rank, int size) {
  const MPI_Datatype type = MpiType(op.a.dtype());
  op.phase = 0;
  switch (op.kind) {
    case Kind::kAllGather: {
      const int n = static_cast<int>(op.a.numel());
      const bool in_place = collective::AllGatherInPlace(op.a, op.b, rank);
      TESSERA_MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : op.a.raw_data(), n, type, op.b.raw_data(), n,
                                       type, data, &op.request));
      return;
    }
    case Kind::kAllReduce:
    case Kind::kReduce:
      StartAllReduce(op, data, size, type);
      return;
    case Kind::kReduceScatter: {
      const int m = static_cast<int>(op.b.numel());
      op.scratch.resize(static_cast<size_t>(Bytes(op.a)));
      TESSERA_MPI_CHECK(
          MPI_Ialltoall(op.a.raw_data(), m, type, op.scratch.data(), m, type, data, &op.request));
      return;
    }
    default:
      TESSERA_THROW(CommError, op.What(), ": has no nonblocking form");
  }
}

bool ContinueNonblocking(Op& op, MPI_Comm data, int rank, int size) {
  switch (op.kind) {
    case Kind::kAllReduce:
    case Kind::kReduce:
      if (!ContinueAllReduce(op, data, rank, size, MpiType(op.a.dtype()))) return false;
      break;
    case Kind::kReduceScatter:
      ReduceBlocks(op.b.raw_data(), op.scratch.data(), op.b.numel(), op.b.dtype(), op.reduce, size);
      if (op.reduce == ReduceOp::kAvg) collective::DivideBy(op.b, size);
      break;
    default:
      break;
  }
  op.scratch = {};
  return true;
}

void RunOp(Op& op, MPI_Comm data, int rank, int size) {
  if (UsesNonblocking(op, size)) {
    StartNonblocking(op, data, rank, size);
    do {
      TESSERA_MPI_CHECK(MPI_Wait(&op.request, MPI_STATUS_IGNORE));
    } while (!ContinueNonblocking(op, data, rank, size));
    return;
  }
  switch (op.kind) {
    case Kind::kAllReduce: {
      const int64_t n = op.a.numel();
      if (n == 0) return;
      char* p = static_cast<char*>(op.a.raw_data());
      const size_t bytes = SizeOf(op.a.dtype());
      for (int64_t off = 0; off < n; off += kChunk) {
        const int count = static_cast<int>(std::min(kChunk, n - off));
        TESSERA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * bytes, count, MpiType(op.a.dtype()),
                                        MpiOp(op.reduce), data));
      }
      if (op.reduce == ReduceOp::kAvg) collective::DivideBy(op.a, size);
      return;
    }
    case Kind::kReduce: {
      const int64_t n = op.a.numel();
      if (n == 0) return;
      char* p = static_cast<char*>(op.a.raw_data());
      const size_t bytes = SizeOf(op.a.dtype());
      const bool root = rank == op.root;
      for (int64_t off = 0; off < n; off += kChunk) {
        const int count = static_cast<int>(std::min(kChunk, n - off));
        void* buf = p + off * bytes;
        TESSERA_MPI_CHECK(MPI_Reduce(root ? MPI_IN_PLACE : buf, root ? buf : nullptr, count,
                                     MpiType(op.a.dtype()), MpiOp(op.reduce), op.root, data));
      }
      if (root && op.reduce == ReduceOp::kAvg) collective::DivideBy(op.a, size);
      return;
    }
    case Kind::kReduceScatter: {
      const int64_t n = op.b.numel();
      if (n == 0) return;
      TESSERA_MPI_CHECK(MPI_Reduce_scatter_block(op.a.raw_data(), op.b.raw_data(), static_cast<int>(n),
                                                 MpiType(op.a.dtype()), MpiOp(op.reduce), data));
      if (op.reduce == ReduceOp::kAvg) collective::DivideBy(op.b, size);
      return;
    }
    case Kind::kAllGather: {
      const int64_t n = op.a.numel();
      if (n == 0) return;
      const MPI_Datatype type = MpiType(op.a.dtype());
      const bool in_place = collective::AllGatherInPlace(op.a, op.b, rank);
      TESSERA_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : op.a.raw_data(), static_cast<int>(n), type,
                                      op.b.raw_data(), static_cast<int>(n), type, data));
      return;
    }
    case Kind::kBroadcast: {
      const int64_t n = op.a.numel();
      if (n == 0) return;
      char* p = static_cast<char*>(op.a.raw_data());
      const size_t bytes = SizeOf(op.a.dtype());
      for (int64_t off = 0; off < n; off += kChunk) {
        const int count = static_cast<int>(std::min(kChunk, n - off));
        TESSERA_MPI_CHECK(MPI_Bcast(p + off * bytes, count, MpiType(op.a.dtype()), op.root, data));
      }
      return;
    }
    case Kind::kBarrier:
      TESSERA_MPI_CHECK(MPI_Barrier(data));
      return;
    case Kind::kSplit: {
      // The id is agreed over the whole parent, within this op and its deadline: each process
      // joins only one of the new groups, so one id serves them all.
      op.split_id = internal::AgreeGroupId(data);
      MPI_Comm split = MPI_COMM_NULL;
      TESSERA_MPI_CHECK(MPI_Comm_split(data, op.color, op.key, &split));
      TESSERA_MPI_CHECK(MPI_Comm_dup(split, &op.split_data));
      TESSERA_MPI_CHECK(MPI_Comm_free(&split));
      return;
    }
  }
}

}  // namespace tessera::dist::mpi_internal
