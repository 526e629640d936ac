#!/usr/bin/env bash
# ZeRO stages 1 to 3 end to end: `tessera train` under mpirun on real Fashion-MNIST, 80 steps, with
# dropout and gradient clipping.
#   (a) references at stage 0 on 2 and on 4 ranks;
#   (b) stages 2 and 3 on 2 ranks and stage 1 on 4 ranks end bit for bit where stage 0 on as many
#       ranks does, /model and /optim (the same sums in the same order: a reduce of 2 ranks adds as
#       the all-reduce does, stage 1 keeps the all-reduce, stage 3's gathers copy); summary.json
#       records the stage, what each rank holds (stage 2: gradients and optimizer state halved;
#       stage 3: parameters too) and both ranks' peak RSS; the /optim tensors have their full
#       logical shapes (h5py), though each rank held half;
#   (c) kill -9 of a stage-3 run after its first checkpoint, then --resume on 2 ranks at stage 3:
#       the final checkpoint equals (b)'s bit for bit;
#   (d) checkpoints stay logical: stage 3's at step 40 resumes at stage 0 on 2 ranks bit for bit
#       equal to the reference, and at stage 0 on 1 rank within 1e-5 of it; stage 0's resumes at
#       stage 1 and at stage 3 on 4 ranks within 1e-5.
# Gradient accumulation under ZeRO (whose sums go in another order) is tested on threads against
# stage 0 to 1e-5 (tests/dist/zero_test.cc): end to end, dropout and clipping make 120 steps of it
# chaotic at that tolerance (one ReLU input within rounding of zero flips, measured at step 91).
#
# Usage: zero_resume_test.sh TESSERA MPIEXEC SOURCE_DIR
set -u
TESSERA="$1"
MPIRUN="$2"
SRC="$3"
source "$(dirname "$0")/ckpt_test_lib.sh"

STEPS=80
ARGS=(--set train.steps=$STEPS --set train.threads=1 --set train.log_every_steps=10
      --set model.mlp.hidden=64,32 --set model.mlp.dropout=0.1 --set data.batch_size=1024
      --set optimizer.clip_grad_norm=0.5
      --set checkpoint.every_steps=20 --set checkpoint.keep_last=10 --set parallel.collective_timeout_s=60)

train() {  # NP RUN [ARGS...]
  local np="$1" run="$2" t0=$SECONDS
  shift 2
  run_tessera "$np" "$run" "$run.out" "${ARGS[@]}" "$@" || { cat "$run.out"; fail "$(basename "$run"): tessera train on $np rank(s) failed"; }
  echo "  $(basename "$run"): $np rank(s) $*, done in $((SECONDS - t0)) s"
}
compare() { "$PY" "$SRC/tests/jobs/compare_checkpoints.py" "$@"; }
near_ref() {  # RUN: its final /model within 1e-5 of the reference's
  echo -n "  $(basename "$1") vs ref: "
  compare relnorm "$DIR/ref/checkpoints/latest" "$1/checkpoints/latest" 1e-5 || fail "$(basename "$1"): not within 1e-5 of stage 0"
}
ck() { printf '%s/checkpoints/step-%08d' "$DIR/$1" "$2"; }

T0=$SECONDS
echo "== (a) references: stage 0 on 2 and 4 ranks"
train 2 "$DIR/ref"
train 4 "$DIR/ref4"

echo "== (b) stages 2 and 3 on 2 ranks, stage 1 on 4 ranks: bitwise"
bitwise() {  # A B: every /model and /optim tensor equal
  echo -n "  $(basename "$2") vs $(basename "$1"): "
  compare bitwise "$1/checkpoints/latest" "$2/checkpoints/latest" || fail "$(basename "$2") differs from $(basename "$1")"
}
train 2 "$DIR/z2" --set parallel.zero_stage=2
bitwise "$DIR/ref" "$DIR/z2"
train 2 "$DIR/z3" --set parallel.zero_stage=3
bitwise "$DIR/ref" "$DIR/z3"
train 4 "$DIR/z1" --set parallel.zero_stage=1
bitwise "$DIR/ref4" "$DIR/z1"
grep -q "memory per rank: .* (ZeRO stage 2, shard of" "$DIR/z2.out" || { cat "$DIR/z2.out"; fail "z2: no memory line"; }
grep -q "memory per rank: parameters .* (its shard; up to two layers of at most" "$DIR/z3.out" || { cat "$DIR/z3.out"; fail "z3: no memory line"; }
"$PY" - "$DIR/z2" "$DIR/ref" "$DIR/z3" <<'PY' || fail "z2, z3: summary.json or the checkpoint is not as expected"
import json, sys, h5py
z, ref, z3 = (json.load(open(f"{d}/summary.json")) for d in sys.argv[1:4])
m3 = z3["memory_per_rank"]
assert z3["zero_stage"] == 3 and m3["parameter_bytes"] * 2 == z["memory_per_rank"]["parameter_bytes"], m3
assert m3["gradient_bytes"] == m3["parameter_bytes"] and m3["optimizer_state_bytes"] == 2 * m3["parameter_bytes"], m3
assert 0 < m3["gathered_unit_bytes"] <= 2 * m3["parameter_bytes"], m3
m, r = z["memory_per_rank"], ref["memory_per_rank"]
assert z["zero_stage"] == 2 and ref["zero_stage"] == 0, (z["zero_stage"], ref["zero_stage"])
p = m["parameter_bytes"]
assert abs(p - r["parameter_bytes"]) < 1024, (p, r)               # the same model, padded to 2 shards
assert m["gradient_bytes"] * 2 == p and r["gradient_bytes"] == r["parameter_bytes"], (m, r)
assert m["optimizer_state_bytes"] == p and r["optimizer_state_bytes"] == 2 * r["parameter_bytes"], (m, r)
assert len(z["peak_rss_bytes"]) == 2 and all(x > 0 for x in z["peak_rss_bytes"]), z["peak_rss_bytes"]
with h5py.File(f"{sys.argv[1]}/checkpoints/latest", "r") as f:
    assert f.attrs["zero_stage"] == 2
    for name in f["model"]:
        w = f["model"][name]
        for s in ("exp_avg", "exp_avg_sq"):
            assert f["optim"][name][s].shape == w.shape, (name, s, f["optim"][name][s].shape, w.shape)
print(f"  summary: stage 2 holds parameters {p} B, gradients {m['gradient_bytes']} B, optimizer state "
      f"{m['optimizer_state_bytes']} B per rank (stage 0: {r['gradient_bytes']} and {r['optimizer_state_bytes']}); "
      f"peak RSS {[x // 2**20 for x in z['peak_rss_bytes']]} MiB; /optim at full logical shapes")
PY

echo "== (c) kill -9 at stage 3 after the first checkpoint, --resume: bitwise"
run="$DIR/kill"
for attempt in 1 2 3; do
  rm -rf "$run"
  run_tessera 2 "$run" "$run.out" "${ARGS[@]}" --set parallel.zero_stage=3 2>/dev/null &
  pid=$!
  for i in $(seq 3000); do
    [ -L "$run/checkpoints/latest" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.02
  done
  pkill -9 -f -- "$(literal_re "$run")( |$)"
  wait $pid 2>/dev/null
  sleep 0.5
  step=$(step_of "$run/checkpoints/latest" 2>/dev/null) || fail "kill: no committed checkpoint after the kill"
  [ "$step" -lt $STEPS ] && break
  [ $attempt = 3 ] && fail "kill: the run finished before every kill"
done
echo "  killed after the checkpoint of step $step"
train 2 "$run" --set parallel.zero_stage=3 --resume
bitwise "$DIR/z3" "$run"

echo "== (d) across stages and rank counts (--resume-from)"
train 2 "$DIR/z3to0" --resume-from "$(ck z3 40)"
bitwise "$DIR/ref" "$DIR/z3to0"
train 1 "$DIR/z3to1" --resume-from "$(ck z3 40)"
near_ref "$DIR/z3to1"
train 4 "$DIR/ref_to_z1" --resume-from "$(ck ref 40)" --set parallel.zero_stage=1
near_ref "$DIR/ref_to_z1"
train 4 "$DIR/ref_to_z3" --resume-from "$(ck ref 40)" --set parallel.zero_stage=3
near_ref "$DIR/ref_to_z3"
echo "ok ($((SECONDS - T0)) s)"
