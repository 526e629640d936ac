#!/usr/bin/env bash
# Checkpoint layouts (bench/ckpt_layout_bench.cc) on 1, 2 and 4 ranks, 3 trials each, against
# `dd if=/dev/zero bs=4M conv=fsync` of the same bytes into the same directory, which the bench
# runs (posix_spawn) in the same rotation as the methods. Then the two VDS facts the design depends
# on, checked with Debian's h5py (/usr/bin/python3): what a read returns when a source file is
# missing, and where relative source file names are looked up when main.h5 is opened through a
# symlink in another directory. Writes bench/results/ckpt_layout.md, keeping its hand-written
# "## Conclusions" section. Expects build/bench/ckpt_layout_bench
# (cmake --build build --target ckpt_layout_bench). Scratch files go to build/ckpt_layout_tmp (the
# repo's disk) and are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/build/bench/ckpt_layout_bench
[ -x "$BIN" ] || { echo "build it first: cmake --build build --target ckpt_layout_bench" >&2; exit 1; }
RANKS=${RANKS:-"1 2 4"}
TRIALS=${TRIALS:-3}
TMP=$PWD/build/ckpt_layout_tmp
OUT=bench/results/ckpt_layout.md
rm -rf "$TMP"
mkdir -p "$TMP/ckpt"
trap 'rm -rf "$TMP"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
JSON=$TMP/results.jsonl
: > "$JSON"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

for trial in $(seq 0 $((TRIALS - 1))); do
  for np in $RANKS; do
    "${MPIRUN[@]}" -np "$np" "$BIN" --dir "$TMP/ckpt" --trials 1 --first-trial "$trial" | tee -a "$JSON"
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the VDS facts: a small checkpoint written by the vds method on 2 ranks, kept -------------------
VDS=$TMP/vds
mkdir -p "$VDS/d" "$VDS/other"
"${MPIRUN[@]}" -np 2 "$BIN" --dir "$VDS/d" --tensors 3 --rows 31 --trials 1 --methods vds --keep > /dev/null
ln -s d/main.h5 "$VDS/latest"
FACTS=$TMP/facts.md
/usr/bin/python3 - "$VDS" > "$FACTS" <<'PY'
import json, os, shutil, subprocess, sys
vds = sys.argv[1]
# Reads every tensor in a fresh /usr/bin/python3 (import h5py) from `cwd`; compares with the bench's content.
READ = r"""
import json, sys, numpy as np, h5py
out = {}
with h5py.File(sys.argv[1], "r") as f:
    for t, name in enumerate(sorted(f)):
        try:
            a = f[name][...].ravel()
        except Exception as e:
            out[name] = "error: " + str(e).split("\n")[0]
            continue
        want = ((t * 2654435761 + np.arange(a.size, dtype=np.uint64)) & 0xFFFFFF).astype(np.float32)
        bad = a != want
        out[name] = "ok" if not bad.any() else "%d of %d wrong (%d zeros, %d negative)" % (
            bad.sum(), a.size, (a[bad] == 0).sum(), (a[bad] < 0).sum())
print(json.dumps(out))
"""
def read(path, cwd):
    p = subprocess.run(["/usr/bin/python3", "-c", READ, path], cwd=cwd, capture_output=True, text=True)
    res = json.loads(p.stdout) if p.returncode == 0 else {"exit": p.returncode}
    summary = "; ".join(f"{k}: {v}" for k, v in res.items())
    err = p.stderr.strip()
    return summary + (f" (stderr: {err.splitlines()[-1]})" if err else " (nothing on stderr)") + f", exit {p.returncode}"
def stale(where):  # rank0.h5 of the same shapes with every value negated
    subprocess.run(["/usr/bin/python3", "-c", "import h5py, shutil, sys\nshutil.copy(sys.argv[1], sys.argv[2])\n"
                    "with h5py.File(sys.argv[2], 'r+') as f:\n    for k in f: f[k][...] = -f[k][...] - 1",
                    f"{vds}/d/rank0.h5", f"{where}/rank0.h5"], check=True)
ver = subprocess.run(["/usr/bin/python3", "-c", "import h5py; print(h5py.version.version, h5py.version.hdf5_version)"],
                     capture_output=True, text=True).stdout.split()
print(f"Checked with /usr/bin/python3, h5py {ver[0]} on HDF5 {ver[1]}, on a 3-tensor checkpoint written by the vds method on "
      "2 ranks (`d/main.h5`, `d/rank0.h5`, `d/rank1.h5`, source names stored as bare `rankR.h5`), with `latest -> d/main.h5` "
      "in the parent directory. Each line is one fresh process reading every tensor and comparing with the expected values.")
print()
print(f"- `d/main.h5` from the parent directory: {read('d/main.h5', vds)}")
print(f"- `latest` from the parent directory: {read('latest', vds)}")
print(f"- `latest` by absolute path from `/`: {read(vds + '/latest', '/')}")
stale(vds)
print(f"- a stale `rank0.h5` (same shapes, values negated) next to `latest`, `latest` from `/`: {read(vds + '/latest', '/')}")
print(f"- the same stale file, `d/main.h5` opened from the parent directory (the stale file is in the cwd): "
      f"{read('d/main.h5', vds)}")
os.remove(f"{vds}/rank0.h5")
stale(f"{vds}/other")
print(f"- the stale file in the cwd (`other/`) instead, `../latest` opened from there: {read('../latest', vds + '/other')}")
os.remove(f"{vds}/other/rank0.h5")
if shutil.which("strace"):
    p = subprocess.run(["strace", "-f", "-e", "trace=openat", "/usr/bin/python3", "-c", READ, vds + "/latest"], cwd="/",
                       capture_output=True, text=True)
    tried = []
    for line in p.stderr.splitlines():
        if "rank0.h5" in line and "openat(" in line:
            path = line.split('"')[1]
            if path not in tried: tried.append(path)
    # Paths relative to the scratch directory (VDS/...), so the results do not name this machine.
    rel = lambda t: t.replace(vds, "VDS")
    print(f"- where HDF5 looked for `rank0.h5` when `VDS/latest` was read (by absolute path) from `/` (strace, in "
          f"order; VDS is the scratch directory): " + ", ".join(f"`{rel(t)}`" for t in tried))
os.rename(f"{vds}/d/rank1.h5", f"{vds}/rank1.missing")
print(f"- `d/rank1.h5` deleted, `latest` from the parent directory: {read('latest', vds)}")
os.rename(f"{vds}/rank1.missing", f"{vds}/d/rank1.h5")
PY

# ---- the report ------------------------------------------------------------------------------------
/usr/bin/python3 - "$JSON" "$OUT" "$FACTS" "$load_start" "$load_end" "$TMP" <<'PY'
import collections, datetime, json, os, re, statistics, subprocess, sys
jsonl, out, facts, load_start, load_end, tmp = sys.argv[1:]
rows = [json.loads(l) for l in open(jsonl) if l.startswith("{")]
bad = [r for r in rows if not r["verified"]]
sh = lambda c: subprocess.run(["sh", "-c", c], capture_output=True, text=True).stdout.strip()
cpu = sh("lscpu | sed -n 's/^Model name: *//p'")
hdf5 = sh("h5pcc -showconfig | sed -n 's/^ *HDF5 Version: *//p'")
disk = " ".join(sh(f"df --output=source,fstype {tmp} | tail -1").split())
ranks = sorted({r["ranks"] for r in rows})
methods = ["dd", "hdf5_mpio_indep", "hdf5_mpio_coll", "vds", "posix"]
label = {"dd": "dd bs=4M conv=fsync (baseline)", "hdf5_mpio_indep": "(a) parallel HDF5, independent H5Dwrite",
         "hdf5_mpio_coll": "(a) parallel HDF5, collective H5Dwrite", "vds": "(b) per-rank files + VDS main file",
         "posix": "(c) rank-0 HDF5 layout + pwrite"}
secs = collections.defaultdict(list)
for r in rows:
    secs[(r["method"], r["ranks"])].append(r["seconds"])
nbytes = rows[0]["bytes"]
ck = rows[0]
med = {k: statistics.median(v) for k, v in secs.items()}
mbps = lambda m, n: nbytes / med[(m, n)] / 1e6
md = ["# Checkpoint layouts: N ranks writing one ~512 MiB checkpoint", "",
      f"- machine: {cpu}, {sh('nproc --all')} cores; {sh('mpirun --version | head -1')}; "
      f"HDF5 {hdf5} (Debian openmpi flavour), "
      "MPI-IO through Open MPI's default io component (ompio; romio321 is also installed)",
      f"- disk: `{disk}` (the repo's disk), scratch dir `build/ckpt_layout_tmp`",
      f"- date: {datetime.datetime.utcnow().isoformat(timespec='seconds')}Z; load average before {load_start}, after {load_end}",
      f"- checkpoint: {ck['tensors']} float32 tensors [rows_i, 1280] (rows_i {ck['rows_min']}..{ck['rows_max']}), {nbytes} bytes; rank r owns "
      "elements [r*E/N, (r+1)*E/N) of the concatenation (cuts fall mid-tensor and mid-row) and writes only those.",
      "- method: `bench/run_ckpt_layout_bench.sh`; for each of 3 trials and each N, one `mpirun --oversubscribe -np N` "
      "running dd and every method once, in an order rotated per trial (dd = rank 0 spawning `dd if=/dev/zero bs=4M "
      "iflag=count_bytes conv=fsync` of the same bytes into the same directory, timed around the child, the other ranks "
      "sleeping in a barrier). After each deletion the file system is synced (syncfs) outside the timings. "
      "Time = barrier to all data durable (fsync/fdatasync of every file written and of the directory), slowest rank. MB/s = bytes / median time, MB = 1e6 bytes. Every trial of every method "
      "was read back by rank 0 with serial HDF5 (through the virtual datasets for (b)) and checked element by element; "
      f"files deleted after each trial. Failed checks: {len(bad)}.",
      "", "## Median MB/s (ratio to dd at the same N)", "",
      "| method | " + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in ranks) + " |",
      "| --- |" + " --- |" * len(ranks)]
for m in methods:
    cells = []
    for n in ranks:
        if (m, n) not in med: cells.append("-"); continue
        cells.append(f"{mbps(m, n):.0f}" if m == "dd" else f"{mbps(m, n):.0f} ({mbps(m, n) / mbps('dd', n):.2f})")
    md.append(f"| {label[m]} | " + " | ".join(cells) + " |")
    if m == "dd":
        md.append("| dd, best trial (for reference) | " + " | ".join(
            f"{nbytes / min(secs[('dd', n)]) / 1e6:.0f}" if ('dd', n) in secs else "-" for n in ranks) + " |")
md += ["", "## Every trial: seconds (slowest rank)", "", "| method | ranks | trials (s) | min-max MB/s |", "| --- | --- | --- | --- |"]
for m in methods:
    for n in ranks:
        v = secs.get((m, n))
        if v:
            md.append(f"| {m} | {n} | {', '.join(f'{x:.3f}' for x in v)} | {nbytes / max(v) / 1e6:.0f}-{nbytes / min(v) / 1e6:.0f} |")
if bad:
    md += ["", "## FAILED CHECKS", ""] + [f"- {r['method']} N={r['ranks']} trial {r['trial']}: {r['error']}" for r in bad]
md += ["", "## HDF5 1.10 virtual-dataset facts (checked by the driver)", ""] + open(facts).read().rstrip().splitlines()
conclusions = "(to be written by hand: this section is kept when the driver rewrites the file)"
if os.path.exists(out):
    m = re.search(r"^## Conclusions\n(.*)", open(out).read(), re.S | re.M)
    if m: conclusions = m.group(1).strip()
md += ["", "## Conclusions", "", conclusions]
open(out, "w").write("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(1 if bad else 0)
PY
