#!/usr/bin/env bash
# Checkpoint I/O (W5 of shared BENCHMARKS.md, at the sizes issue 5 names): write and read
# throughput of a W2 checkpoint (~5 MB with Adam state) and of a synthetic ~500 MB model, against
# `dd conv=fsync` of the same number of bytes on the same disk, in one run (bench/ckpt_bench.cc);
# and the training stall of an asynchronous save, as a fraction of the step time, from W2 trained
# by `tessera train` (1 process, and 2 ranks under mpirun) with a checkpoint every SAVE_EVERY
# steps (the `stall_seconds` of its checkpoint_started events) against the same run without.
# Targets: write and read >= 0.8x dd; stall <= 5% of a step.
#
#   bench/run_ckpt_bench.sh [BUILD_DIR]     (default build; expects BUILD_DIR/bench/ckpt_bench)
#
# Builds nothing. Files go to a scratch directory under BUILD_DIR (the repository's disk).
# Environment: REPEATS (5), STEPS (600 W2 training steps), SAVE_EVERY (25), THREADS (2),
# RESULTS_DIR (bench/results). Writes RESULTS_DIR/checkpoint_io.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/bench/ckpt_bench
TESSERA=$BUILD/tessera
for b in "$BIN" "$TESSERA"; do
  [ -x "$b" ] || { echo "missing $b: build it first (ninja -C $BUILD ckpt_bench tessera)" >&2; exit 1; }
done
REPEATS=${REPEATS:-5}
STEPS=${STEPS:-600}
SAVE_EVERY=${SAVE_EVERY:-25}
THREADS=${THREADS:-2}
OUT=${RESULTS_DIR:-bench/results}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d "$(realpath "$BUILD")/ckpt_bench.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
disk=$(df -h --output=source,fstype,size "$SCRATCH" | tail -1 | tr -s ' ')

# Earlier work's dirty pages (a test suite writes gigabytes of checkpoints) would be written back
# during the measurements: flush them first.
sync
sleep 2
echo "== checkpoint write/read against dd (load $load_start; $disk)" >&2
: > "$SCRATCH/io.jsonl"
for model in w2 synthetic; do
  "$BIN" --model "$model" --dir "$SCRATCH/io" --repeats "$REPEATS" 2>> "$SCRATCH/repeats.txt" |
    tee -a "$SCRATCH/io.jsonl" >&2
done

echo "== W2 training stall: $STEPS steps, a checkpoint every $SAVE_EVERY steps, against none" >&2
JOB=jobs/examples/fmnist_cnn.pbtxt
common=(--set train.steps="$STEPS" --set train.threads="$THREADS" --set train.log_every_steps="$SAVE_EVERY"
        --set train.eval_every_steps=100000)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for trial in 1 2; do
  "$TESSERA" train "$JOB" --run-dir "$SCRATCH/none-$trial" --no-resume "${common[@]}" \
    --set checkpoint.every_steps=0 --set checkpoint.save_final=false > /dev/null
  "$TESSERA" train "$JOB" --run-dir "$SCRATCH/ckpt-$trial" --no-resume "${common[@]}" \
    --set checkpoint.every_steps="$SAVE_EVERY" --set checkpoint.save_final=false > /dev/null
  # Data parallel: 2 ranks x 1 thread, each rank writing half of every checkpoint.
  mpirun -np 2 --oversubscribe --bind-to none "$TESSERA" train "$JOB" --run-dir "$SCRATCH/none-dp$trial" --no-resume \
    "${common[@]}" --set train.threads=1 --set checkpoint.every_steps=0 --set checkpoint.save_final=false > /dev/null
  mpirun -np 2 --oversubscribe --bind-to none "$TESSERA" train "$JOB" --run-dir "$SCRATCH/ckpt-dp$trial" --no-resume \
    "${common[@]}" --set train.threads=1 --set checkpoint.every_steps="$SAVE_EVERY" --set checkpoint.save_final=false \
    > /dev/null
done

/usr/bin/python3 - "$SCRATCH" "$OUT" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$disk" "$SAVE_EVERY" \
  "$THREADS" "$REPEATS" <<'EOF'
import json, statistics, sys
scratch, out, load_start, load_end, disk, save_every, threads, repeats = sys.argv[1:]
io = [json.loads(l) for l in open(f"{scratch}/io.jsonl") if l.startswith("{")]

def events(run):
    return [json.loads(l) for l in open(f"{scratch}/{run}/metrics.jsonl")]

def sps(run):  # median training throughput over the log windows, the first skipped (warm-up)
    return statistics.median([e["samples_per_sec"] for e in events(run) if e["event"] == "train"][1:])

stall = {"runs": []}
for layout, suffix in ((f"1 rank x {threads} threads", ""), ("2 ranks x 1 thread", "dp")):
  for trial in (1, 2):
    base, ck = sps(f"none-{suffix}{trial}"), sps(f"ckpt-{suffix}{trial}")
    stalls = [e["stall_seconds"] for e in events(f"ckpt-{suffix}{trial}") if e["event"] == "checkpoint_started"]
    writes = [e["write_seconds"] for e in events(f"ckpt-{suffix}{trial}") if e["event"] == "checkpoint"]
    step_s = 128 / base
    stall["runs"].append({"layout": layout, "trial": trial,
                          "samples_per_sec_without": base, "samples_per_sec_with": ck, "step_seconds": step_s,
                          "saves": len(stalls), "stall_seconds_median": statistics.median(stalls),
                          "stall_seconds_max": max(stalls), "background_write_seconds_median": statistics.median(writes),
                          "stall_fraction_of_step": statistics.median(stalls) / step_s,
                          "throughput_ratio": ck / base})
best = min(stall["runs"], key=lambda r: r["stall_fraction_of_step"])
result = {"load_start": load_start, "load_end": load_end, "disk": disk, "repeats": int(repeats), "io": io,
          "stall": stall, "save_every_steps": int(save_every), "threads": int(threads)}
json.dump(result, open(f"{out}/checkpoint_io.json", "w"), indent=2)

lines = ["# Checkpoint I/O", "",
         "Produced by `bench/run_ckpt_bench.sh` (bench/ckpt_bench.cc and `tessera train`); numbers from one run.",
         f"Disk: {disk}. Load average at start {load_start}, at end {load_end}. Medians of {repeats} repeats,",
         "tessera and dd interleaved.", "",
         "**Write**: a whole committed checkpoint -- `CheckpointWriter::Save` (the copy to host memory) and the",
         "background work to the commit: pwrite of every byte, fdatasync, CRCs, attributes, manifest, fsync, the",
         "verification, rename and directory fsyncs. dd: `dd if=/dev/zero of=F bs=4M count=BYTES iflag=count_bytes",
         "conv=fsync`. **Read**: `LoadCheckpoint` into a fresh model (every tensor read through HDF5, its CRC",
         "checked) against `dd if=F of=/dev/null bs=4M`, both from a cold page cache (posix_fadvise DONTNEED).", "",
         "| checkpoint | bytes | tensors | write | dd write | write / dd | read | dd read | read / dd | best write / best dd | best read / best dd |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in io:
    name = {"w2": "W2 + Adam", "synthetic": "synthetic MLP + Adam"}[r["model"]]
    lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} MB | {r['tensors']} | {r['write_mb_per_s']:.0f} MB/s | "
                 f"{r['dd_write_mb_per_s']:.0f} MB/s | **{r['write_ratio']:.2f}x** | {r['read_mb_per_s']:.0f} MB/s | "
                 f"{r['dd_read_mb_per_s']:.0f} MB/s | **{r['read_ratio']:.2f}x** | {r['best_write_ratio']:.2f}x | "
                 f"{r['best_read_ratio']:.2f}x |")
lines += ["", "Every repeat, in seconds:", ""] + ["    " + l.strip() for l in open(f"{scratch}/repeats.txt") if "every repeat" in l]
lines += ["", "Target: >= 0.8x dd for both. Medians of each side; the last two columns compare the fastest repeat",
          "of each side instead (dd's write time on this VM is bimodal, 0.3 s or 0.5-0.9 s for 500 MB, a page-cache",
          "effect measured in bench/results/ckpt_layout.md, so its median alone can flatter tessera).", "",
          f"**Training stall** (W2, global batch 128, a checkpoint every {save_every} steps; the stall is the time",
          "`Save` blocks the training loop: waiting for the previous save, then copying the state to host memory;",
          "the background write shares the machine's 2 cores with training, which the last column shows):", "",
          "| layout | trial | step time | saves | stall (median / max) | stall / step | background write | throughput with / without saves |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in stall["runs"]:
    lines.append(f"| {r['layout']} | {r['trial']} | {r['step_seconds'] * 1e3:.1f} ms | {r['saves']} | {r['stall_seconds_median'] * 1e3:.2f} / "
                 f"{r['stall_seconds_max'] * 1e3:.2f} ms | **{r['stall_fraction_of_step'] * 100:.1f}%** | "
                 f"{r['background_write_seconds_median'] * 1e3:.1f} ms | {r['throughput_ratio']:.3f} |")
lines += ["", "Target: stall <= 5% of a step.", ""]
open(f"{out}/checkpoint_io.md", "w").write("\n".join(lines))
print("\n".join(lines))
EOF
