#!/usr/bin/env bash
# Model store publish and load of a 537 MB model (an MLP of eight 4096 x 4096 layers) against
# cp + sync and a cold dd read of the same bytes on the same disk, in one run (bench/store_bench.cc).
# Target (issue 10): publish and load >= 0.8x cp + sync.
#
#   bench/run_store_bench.sh [BUILD_DIR]     (expects BUILD_DIR/bench/store_bench)
#
# Builds nothing. Files go to a scratch directory under BUILD_DIR (the repository's disk).
# Environment: REPEATS (7), RESULTS_DIR (bench/results). Writes RESULTS_DIR/store_io.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/bench/store_bench
[ -x "$BIN" ] || { echo "missing $BIN: build it first (ninja -C $BUILD store_bench)" >&2; exit 1; }
REPEATS=${REPEATS:-7}
OUT=${RESULTS_DIR:-bench/results}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d "$(realpath "$BUILD")/store_bench.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
sync
sleep 2
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
disk=$(df -h --output=source,fstype,size "$SCRATCH" | tail -1 | tr -s ' ')
"$BIN" --dir "$SCRATCH" --repeats "$REPEATS" --warmup 2 2> "$SCRATCH/repeats.txt" > "$SCRATCH/result.json"
cat "$SCRATCH/repeats.txt" >&2
/usr/bin/python3 - "$SCRATCH/result.json" "$SCRATCH/repeats.txt" "$OUT" "$load_start" "$disk" <<'PY'
import json, sys, platform, datetime, subprocess
res = json.load(open(sys.argv[1]))
repeats = open(sys.argv[2]).read().strip().splitlines()
out, load, disk = sys.argv[3], sys.argv[4], sys.argv[5]
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
res.update({"date": datetime.date.today().isoformat(), "machine": "%s, %d cores" % (cpu, __import__("os").cpu_count()),
            "kernel": platform.release(), "disk": disk, "load_at_start": load})
json.dump(res, open(out + "/store_io.json", "w"), indent=1)
m, r = res["median"], res["ratio"]
mb = res["bytes"] / 1e6
with open(out + "/store_io.md", "w") as f:
    f.write("# Model store: publish and load against cp + sync (bench/run_store_bench.sh)\n\n")
    f.write("%s; %s; disk %s; load at start %s; %d counted repeats after 2 warm-ups, interleaved.\n\n"
            % (res["date"], res["machine"], disk, load, res["repeats"]))
    f.write("A %.0f MB model (an MLP of eight 4096 x 4096 Linear layers, %d tensors, random float32 weights).\n\n" % (mb, res["tensors"]))
    f.write("| operation | tessera (median) | peer (median) | peer / tessera |\n| --- | --- | --- | --- |\n")
    f.write("| publish (from memory: write, fsync, sha256, verify, rename) | %.3f s | cp + sync %.3f s | %.2fx |\n"
            % (m["publish_s"], m["cp_sync_s"], r["publish_vs_cp_sync"]))
    f.write("| load, cold cache (read, sha256 checked) | %.3f s | cold cp + sync %.3f s | %.2fx |\n"
            % (m["load_s"], m["cold_cp_sync_s"], r["load_vs_cold_cp_sync"]))
    f.write("| load, cold cache | %.3f s | cold dd read %.3f s | %.2fx |\n\n" % (m["load_s"], m["cold_dd_read_s"], r["load_vs_cold_dd_read"]))
    f.write("Every repeat (seconds):\n\n```\n%s\n```\n" % "\n".join(repeats))
print(open(out + "/store_io.md").read())
PY
