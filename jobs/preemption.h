// Preemption: a signal asks a training run to stop at the next step boundary with a committed
// checkpoint, so that the job can be requeued and resume where it stopped.
//
// Slurm sends the signal a set time before a job's time limit (sbatch --signal=USR1@120) and
// SIGTERM when it preempts or cancels a job; `kill -USR1` does the same by hand. One thread only
// records the signal: the compute threads never take it (oneDNN's JIT GEMM kernels corrupt the
// heap when a signal handler interrupts them; jobs/preemption.cc). At each step boundary every rank contributes what it received to one
// all-reduce, so all ranks stop after the same step even when the signal reached only some; the
// run then writes and commits a checkpoint, logs a "preempted" event and returns. `tessera train`
// exits with kExitPreempted, which the batch scripts in slurm/ answer with `scontrol requeue`.
// More signals while the checkpoint is written change nothing: the same save completes.
#pragma once

#include <string>
#include <vector>

namespace tessera::jobs {

// EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry".
constexpr int kExitPreempted = 75;

// The signals `tessera train` stops on by default.
std::vector<int> DefaultPreemptSignals();  // SIGUSR1, SIGTERM

// Records `signals` (replacing their default action) until StopWatchingPreemptSignals: blocks them
// in the calling thread, so that every thread it starts from now on inherits the block, and starts
// the one thread that takes them. Call it early, from the thread that will run the training, before
// that thread starts others. An empty list installs nothing.
void WatchPreemptSignals(const std::vector<int>& signals);
// The first watched signal received since the start, or 0.
int PreemptSignalReceived();
// Gives the watched signals their default action again (a run past its last step, in its final
// evaluation and publish, then stops on SIGTERM as any program does).
// Call it from the thread that called WatchPreemptSignals (which it unblocks them in).
void StopWatchingPreemptSignals();
// Whether the watched signals are blocked in the calling thread (they are in every thread started
// after WatchPreemptSignals by the thread that called it).
bool PreemptSignalsBlockedHere();

// "USR1", "SIGUSR1", "TERM", "10" -> the signal number; throws ConfigError for anything else.
int ParseSignalName(const std::string& name);
// SIGUSR1 -> "SIGUSR1".
std::string SignalName(int sig);

}  // namespace tessera::jobs
