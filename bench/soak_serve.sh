#!/usr/bin/env bash
# Soak: `tessera serve` under SOAK_REQUESTS (default 100000) HTTP requests from 8 clients
# (bench/serve_load, Triton's binary extension) in 11 parts, a new version published and swapped in
# between parts (10 swaps). The server's resident memory is sampled after each part.
#   bench/soak_serve.sh build/tessera build/bench/serve_load [OUT_CSV]  (default bench/results/soak_serve.csv)
# Passes when every request succeeds, every swap happens, and the RSS after the last part is
# within 10% of its value after the first (the baseline: one version loaded, warm).
set -euo pipefail
TESSERA=$(readlink -f "$1")
LOAD=$(readlink -f "$2")
OUT=${3:-$(dirname "$0")/results/soak_serve.csv}
TOTAL=${SOAK_REQUESTS:-100000}
PARTS=11  # 10 swaps between them
SRC=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d)
trap 'kill $spid 2>/dev/null; rm -rf "$DIR"' EXIT
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir "$DIR/run" --set train.epochs=1 --set train.threads=2 \
  --set publish.store="$DIR/store" --set publish.model=w1 > "$DIR/train.log" 2>&1
"$TESSERA" serve --store "$DIR/store" --model w1 --http-port 0 --grpc-port -1 --poll-interval 0.5 \
  --port-file "$DIR/port.json" > "$DIR/serve.log" 2>&1 &
spid=$!
for i in $(seq 300); do [ -s "$DIR/port.json" ] && break; sleep 0.1; done
port=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["http"])' "$DIR/port.json")
rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' /proc/$spid/status; }
echo "part,requests,version,rss_mb,requests_per_sec,p99_ms" > "$OUT"
version=1
for part in $(seq $PARTS); do
  line=$("$LOAD" --mode http-binary --port "$port" --model w1 --concurrency 8 --requests $((TOTAL / PARTS)) --warmup 0)
  rps=$(/usr/bin/python3 -c 'import json, sys; j = json.loads(sys.argv[1]); print(round(j["rps"]), round(j["p99_ms"], 3))' "$line")
  echo "$part,$((part * TOTAL / PARTS)),$version,$(rss),${rps// /,}" >> "$OUT"
  [ "$part" = $PARTS ] && break
  # The next version: the same run published again; the server swaps it in on its next poll.
  "$TESSERA" store publish "$DIR/run" --store "$DIR/store" --model w1 > /dev/null
  version=$((version + 1))
  for i in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/v2/models/w1/versions/$version/ready" > /dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/v2/models/w1/versions/$version/ready" > /dev/null \
    || { tail -20 "$DIR/serve.log"; echo "soak_serve: version $version was not swapped in"; exit 1; }
done
/usr/bin/python3 - "$OUT" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
base, last = float(rows[0]["rss_mb"]), float(rows[-1]["rss_mb"])
peak = max(float(r["rss_mb"]) for r in rows)
ok = last <= base * 1.10
print(f"soak_serve: {rows[-1]['requests']} requests, {len(rows) - 1} swaps (to version {rows[-1]['version']}); "
      f"RSS after the first part {base:.1f} MB, peak {peak:.1f} MB, after the last {last:.1f} MB "
      f"({(last / base - 1) * 100:+.1f}%); {min(int(r['requests_per_sec']) for r in rows)}-"
      f"{max(int(r['requests_per_sec']) for r in rows)} req/s: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
