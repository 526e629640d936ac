// ProcessGroup over an MPI communicator: the CPU backend (see dist/process_group.h).
//
// Contract, beyond ProcessGroup's:
//  * MPI must be initialised with MPI_THREAD_MULTIPLE (InitMpi in dist/mpi/runtime.h); the
//    constructor throws CommError otherwise.
//  * Tensors: CPU, f32 / f64 / i32 / i64 (DeviceError, ShapeError otherwise). kAvg is the sum
//    divided by size(), in the tensor's own arithmetic (integers truncate). Sizes are checked when
//    the collective is issued (ShapeError naming the collective and the sizes); a rejected call
//    takes no sequence number.
//  * Execution: the group dups the given communicator (which stays the caller's). One worker
//    thread per group runs the collectives in issue order with blocking MPI calls on it, except
//    small all-gathers, all-reduces, reduces and reduce-scatters: these use nonblocking calls, which the
//    issuing thread starts itself when the group is idle and Wait() polls (dist/mpi/op.h,
//    dist/mpi/group_state.h). Either way one collective of a group is inside MPI at a time.
//  * Timeouts: before entering collective k the thread that starts it notes k on this process's arrival board
//    (dist/mpi/arrivals.h), which the heartbeat thread sends to every peer every 0.5 s
//    (dist/mpi/heartbeat.h, started by InitMpi); a collective itself sends no message for this.
//    When Wait() passes the deadline (issue time + timeout_s) it waits for a heartbeat from every
//    peer sent after that (up to 1.5 s) and throws CommTimeoutError naming the collective, its
//    sequence number and the group ranks that did not arrive (with their world ranks when they
//    differ), then the ranks not responding: those that went more than 2 s without a heartbeat
//    while the collective was pending. This names a rank killed or stopped inside the
//    collective, which has arrived; and, when this rank was itself stopped or starved, says so.
//    Wait() thus throws up to about 1.5 s after the deadline.
//    The group is then broken: every later call, and Wait() on every collective not yet
//    completed, throws CommError. Its worker stays inside MPI until the missing ranks arrive, if
//    ever (it takes over a timed-out collective that the issuing thread started); see FinalizeMpi.
//  * An MPI error becomes a CommError naming the collective, its sequence number and the MPI
//    error text, and also breaks the group.
//  * Split() runs as a collective of this group: it waits for the collectives issued before it,
//    takes a sequence number and the default timeout (CollectiveOptions{}.timeout_s), and throws
//    like Wait(). Colours must be >= 0.
//  * Construction and destruction are collective over the communicator (MPI_Comm_dup /
//    MPI_Comm_free). The destructor waits for the pending collectives (each at most until its
//    deadline), then frees the communicators; it never throws and never hangs. Destroy every
//    group before FinalizeMpi.
//  * Thread safety: as ProcessGroup (issue from one thread, Wait() from any).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "dist/process_group.h"

namespace tessera::dist {

class MpiProcessGroup : public ProcessGroup {
 public:
  explicit MpiProcessGroup(MPI_Comm comm);
  ~MpiProcessGroup() override;
  MpiProcessGroup(const MpiProcessGroup&) = delete;
  MpiProcessGroup& operator=(const MpiProcessGroup&) = delete;

  int rank() const override;
  int size() const override;
  std::string backend() const override { return "mpi"; }

  std::shared_ptr<Work> AllReduce(Tensor& t, const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> Reduce(Tensor& t, int root, const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> ReduceScatter(const Tensor& input, Tensor& output,
                                      const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> AllGather(const Tensor& input, Tensor& output,
                                  const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> Broadcast(Tensor& t, int root, const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> Barrier(const CollectiveOptions& o = {}) override;
  std::unique_ptr<ProcessGroup> Split(int color, int key, double timeout_s) override;

  struct State;  // shared with the worker thread and the Work handles

 private:
  // Adopts a communicator already dup'ed for this group, and its id (from Split).
  struct Adopt {};
  MpiProcessGroup(Adopt, MPI_Comm data, uint64_t id);
  void Start();

  std::shared_ptr<State> state_;
  std::thread worker_;
};

}  // namespace tessera::dist
