#!/usr/bin/env bash
# Soak: `tessera train` with a checkpoint after every step for SOAK_SECONDS (default 600), its
# resident memory and open files sampled every 5 s. A leak per step (a buffer, an HDF5 handle, a
# file descriptor per save) shows as growth over thousands of saves.
#   bench/soak_train.sh build/tessera [OUT_CSV]     (default bench/results/soak_train.csv)
# Passes when, after the first minute, RSS stays within 10% of its value at one minute and the
# number of open files does not grow.
set -euo pipefail
TESSERA=$(readlink -f "$1")
OUT=${2:-$(dirname "$0")/results/soak_train.csv}
SECONDS_TOTAL=${SOAK_SECONDS:-600}
DIR=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$DIR"' EXIT
"$TESSERA" train "$(dirname "$0")/../jobs/examples/fmnist_mlp.pbtxt" --run-dir "$DIR/run" --set train.epochs=1000 \
  --set train.threads=1 --set checkpoint.every_steps=1 --set checkpoint.keep_last=2 --set train.log_every_steps=500 \
  > "$DIR/train.log" 2>&1 &
pid=$!
echo "seconds,step,rss_mb,open_files" > "$OUT"
t0=$SECONDS
while [ $((SECONDS - t0)) -lt "$SECONDS_TOTAL" ]; do
  sleep 5
  kill -0 $pid 2>/dev/null || { tail -20 "$DIR/train.log"; echo "soak_train: the run ended early"; exit 1; }
  rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' /proc/$pid/status)
  fds=$(ls /proc/$pid/fd | wc -l)
  step=$(readlink "$DIR/run/checkpoints/latest" 2>/dev/null | sed -n 's/.*step-0*\([0-9][0-9]*\).*/\1/p')
  echo "$((SECONDS - t0)),${step:-0},$rss,$fds" >> "$OUT"
done
kill $pid
/usr/bin/python3 - "$OUT" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
after = [r for r in rows if int(r["seconds"]) >= 60]
base = float(after[0]["rss_mb"]); peak = max(float(r["rss_mb"]) for r in after)
fd0 = int(after[0]["open_files"]); fd_max = max(int(r["open_files"]) for r in after)
steps = int(rows[-1]["step"] or 0)
ok = peak <= base * 1.10 and fd_max <= fd0
print(f"soak_train: {steps} steps, each checkpointed, in {rows[-1]['seconds']} s; RSS at 1 min {base:.1f} MB, "
      f"peak after {peak:.1f} MB ({(peak / base - 1) * 100:+.1f}%); open files {fd0} -> max {fd_max}: "
      f"{'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
