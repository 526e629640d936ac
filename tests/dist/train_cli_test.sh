#!/usr/bin/env bash
# `tessera train` under mpirun, as users start it: the same job on 1 and 2 ranks gives the same
# result, with gradient accumulation and clipping too; rank logs are written; a failed publish and
# a mismatched parallel.data are errors on every rank.
set -u
TESSERA="$1"
MPIRUN="$2"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() { echo "FAIL: $*"; exit 1; }

# Three Gaussian blobs in 4-D.
/usr/bin/python3 "$(dirname "$0")/../blobs_csv.py" "$DIR"
cat > "$DIR/job.pbtxt" <<'SPEC'
name: "blobs"
model { mlp { in_features: 4 hidden: 32 hidden: 16 out_features: 3 dropout: 0.2 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 }
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 3 log_every_steps: 5 seed: 7 }
SPEC

"$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/one" > "$DIR/one.out" 2>&1 || { cat "$DIR/one.out"; fail "1 rank"; }
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/two" > "$DIR/two.out" 2>&1 \
  || { cat "$DIR/two.out"; fail "2 ranks"; }
grep -q "2 ranks (mpirun)" "$DIR/two.out" || { cat "$DIR/two.out"; fail "rank 0 does not report 2 ranks"; }
[ "$(grep -c '^done:' "$DIR/two.out")" = 1 ] || fail "only rank 0 should print the result"
[ -s "$DIR/two/rank-0.log" ] && [ -s "$DIR/two/rank-1.log" ] || fail "missing rank logs"
/usr/bin/python3 - "$DIR" <<'PY' || fail "1-rank and 2-rank runs differ"
import json, sys
one = json.load(open(f"{sys.argv[1]}/one/summary.json"))
two = json.load(open(f"{sys.argv[1]}/two/summary.json"))
assert two["world_size"] == 2, two
assert one["steps"] == two["steps"], (one["steps"], two["steps"])
assert abs(one["test_loss"] - two["test_loss"]) < 1e-4 * max(1, abs(one["test_loss"])), (one["test_loss"], two["test_loss"])
assert abs(one["final_train_loss"] - two["final_train_loss"]) < 1e-4, (one["final_train_loss"], two["final_train_loss"])
assert sum(map(sum, two["confusion_matrix"])) == 240, two["confusion_matrix"]
print("1 rank and 2 ranks agree: test loss", one["test_loss"], two["test_loss"])
PY

# Gradient accumulation and clipping on the global norm (docs/distributed.md): with
# clip_grad_norm small enough to clip every step, one process stepping on whole batches, one
# accumulating two micro-batches and two ranks accumulating two micro-batches each must agree. A
# rank that clipped its own gradients by their local norm, or a micro-batch that was dropped,
# would not.
CLIP="--set optimizer.clip_grad_norm=0.05"
"$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/clip1" $CLIP > "$DIR/clip1.out" 2>&1 \
  || { cat "$DIR/clip1.out"; fail "1 rank, clipped"; }
"$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/clip1acc" $CLIP --set train.accumulate_steps=2 > "$DIR/clip1acc.out" 2>&1 \
  || { cat "$DIR/clip1acc.out"; fail "1 rank, clipped, accumulating"; }
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/clip2acc" $CLIP \
  --set train.accumulate_steps=2 > "$DIR/clip2acc.out" 2>&1 || { cat "$DIR/clip2acc.out"; fail "2 ranks, clipped, accumulating"; }
/usr/bin/python3 - "$DIR" <<'PY' || fail "accumulation or global-norm clipping differs between layouts"
import json, sys
d = sys.argv[1]
s = {k: json.load(open(f"{d}/{k}/summary.json")) for k in ("one", "clip1", "clip1acc", "clip2acc")}
close = lambda a, b: abs(a - b) < 1e-4 * max(1, abs(a))
ref = s["clip1"]["test_loss"]
assert not close(ref, s["one"]["test_loss"]), ("clipping changed nothing: the test would show nothing", ref)
for k in ("clip1acc", "clip2acc"):
    assert close(ref, s[k]["test_loss"]), (k, ref, s[k]["test_loss"])
    assert close(s["clip1"]["final_train_loss"], s[k]["final_train_loss"]), (k, s["clip1"]["final_train_loss"], s[k]["final_train_loss"])
print("clipped: 1 rank", ref, "accumulating", s["clip1acc"]["test_loss"], "2 ranks accumulating", s["clip2acc"]["test_loss"])
PY

# Publishing under mpirun: rank 0 publishes, every rank learns the version; the 2-rank version's
# weights match the 1-rank one's within tolerance, and its lineage records the layout.
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/pub" --set publish.store="$DIR/store" \
  --set publish.alias=production > "$DIR/pub.out" 2>&1 || { cat "$DIR/pub.out"; fail "2 ranks with publish"; }
grep -q "published: blobs version 1" "$DIR/pub.out" || { cat "$DIR/pub.out"; fail "no version published"; }
"$TESSERA" store verify blobs@production --store "$DIR/store" > /dev/null || fail "the published version does not verify"
grep -q "world_size: 2" "$DIR/store/blobs/1/manifest.pbtxt" || fail "the lineage does not record 2 ranks"
# A publish that fails on rank 0 fails the job on every rank (the store root is a file).
: > "$DIR/not-a-dir"
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/pubfail" --set publish.store="$DIR/not-a-dir" \
  > "$DIR/pubfail.out" 2>&1 && fail "a failed publish must fail the job"
grep -q "publish to $DIR/not-a-dir" "$DIR/pubfail.out" || { cat "$DIR/pubfail.out"; fail "the publish error is not reported"; }
[ -f "$DIR/pubfail/checkpoints/latest" ] || fail "the final checkpoint must be committed before publishing"

# A spec that asks for 3 data-parallel ranks while 2 were launched fails at once, on every rank.
start=$(date +%s)
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/bad" --set parallel.data=4 \
  > "$DIR/bad.out" 2>&1 && fail "parallel.data=4 on 2 ranks must fail"
grep -q "parallel.data is 4 but 2 ranks were launched" "$DIR/bad.out" || { cat "$DIR/bad.out"; fail "message"; }
[ $(( $(date +%s) - start )) -lt 60 ] || fail "the failure took too long"
echo "ok"
