// The MPI calls of each collective (dist/mpi/op.h).
#include <algorithm>

#include "dist/mpi/arrivals.h"
#include "dist/mpi/mpi_check.h"
#include "dist/mpi/op.h"

namespace tessera::dist::mpi_internal {
namespace {

using collective::Kind;

// Elements per MPI call for allreduce, reduce and broadcast (MPI counts are int).
constexpr int64_t kChunk = int64_t{1} << 28;

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
    case Kind::kAllReduce: detail = collective::Elements(a) + ", "; break;
    case Kind::kReduce: detail = StrCat(collective::Elements(a), " to rank ", root, ", "); break;
    case Kind::kReduceScatter:
    case Kind::kAllGather: detail = StrCat(collective::Elements(a), " -> ", b.numel(), ", "); break;
    case Kind::kBroadcast: detail = StrCat(collective::Elements(a), " from rank ", root, ", "); break;
    case Kind::kBarrier: break;
    case Kind::kSplit: detail = StrCat("color ", color, ", key ", key, ", "); break;
  }
  return collective::Describe(kind, seq, detail, group_size);
}

void RunOp(Op& op, MPI_Comm data, int rank, int size) {
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
        TESSERA_MPI_CHECK(MPI_Reduce(root ? MPI_IN_PLACE : buf, root ? buf : nullptr, count, MpiType(op.a.dtype()),
                                     MpiOp(op.reduce), op.root, data));
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
