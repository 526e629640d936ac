#!/usr/bin/env bash
# The model store as users drive it, through `tessera store` and `tessera train`:
#   1. train a small W1 job and publish its checkpoint; h5py and sha256sum read the version
#   2. 8 processes x 10 concurrent publishes of one model: 80 distinct versions, each verifying
#   3. kill -9 of a publisher at random moments, 24 trials: nothing partial is ever visible, every
#      listed version verifies, and the next publish succeeds
#   4. a damaged or missing file: `store verify` names it and exits non-zero
#   5. aliases, rollback and gc from the command line
#   6. train with publish { }, fine-tune from the store with a new head, publish: lineage links them
# Usage: store_cli_test.sh TESSERA SOURCE_DIR
set -uo pipefail
TESSERA=$(realpath "$1")
SRC=$(realpath "$2")
PY=/usr/bin/python3
work=$(mktemp -d /tmp/tessera_store_cli.XXXXXX)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
S="$work/store"
export OMP_WAIT_POLICY=PASSIVE

# ---- 1. a checkpoint to publish --------------------------------------------------------------
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir run --set train.steps=20 --set train.log_every_steps=20 \
  >train.log 2>&1 || { cat train.log; exit 1; }
if out=$("$TESSERA" store publish run --store "$S" --model w1 --alias staging 2>&1) && [[ $out == *"published w1 version 1"* ]]; then
  ok "publish a run directory: $out"
else
  bad "publish: $out"
fi
if "$PY" - "$S/w1/1" <<'EOF'
import h5py, hashlib, sys, re
d = sys.argv[1]
f = h5py.File(d + "/weights.h5", "r")
assert f.attrs["format"].decode() == "tessera.model", f.attrs["format"]
assert sorted(f["model"]) == ["1.bias", "1.weight", "3.bias", "3.weight", "5.bias", "5.weight"], list(f["model"])
assert f["model/1.weight"].shape == (512, 784)
manifest = open(d + "/manifest.pbtxt").read()
for name in ("weights.h5", "model.pbtxt"):
    sha = hashlib.sha256(open(d + "/" + name, "rb").read()).hexdigest()
    assert ('name: "%s"' % name) in manifest and sha in manifest, (name, sha)
EOF
then ok "h5py reads the version; sha256 of every file as the manifest says"; else bad "h5py or sha256 of version 1"; fi

# ---- 2. concurrent publishers ------------------------------------------------------------------
"$TESSERA" ckpt export run model.h5 >/dev/null
pids=()
for p in $(seq 8); do
  ( for i in $(seq 10); do "$TESSERA" store publish model.h5 --store "$S" --model busy --json >"pub-$p-$i.json" 2>"pub-$p-$i.err" || echo "publisher $p/$i failed" >>failures; done ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
[[ -f failures ]] && bad "concurrent publishes: $(cat failures) $(cat pub-*.err | head -3)"
versions=$(cat pub-*.json | "$PY" -c 'import sys, json; d = sys.stdin.read().replace("}\n{", "},{"); print(" ".join(str(v["version"]) for v in json.loads("[" + d + "]")))')
distinct=$(tr ' ' '\n' <<<"$versions" | sort -n | uniq | wc -l)
listed=$("$TESSERA" store list busy --store "$S" --json | "$PY" -c 'import sys, json; print(len(json.load(sys.stdin)))')
if [[ $distinct == 80 && $listed == 80 ]] && [[ $(tr ' ' '\n' <<<"$versions" | sort -n | tail -1) == 80 ]]; then
  ok "8 processes x 10 publishes: 80 distinct versions, 1 to 80, and store list shows 80"
else
  bad "concurrent publishes: $distinct distinct versions, $listed listed"
fi
if out=$("$TESSERA" store verify busy --store "$S" 2>&1) && [[ $(grep -c ": OK" <<<"$out") == 80 ]]; then
  ok "every one of the 80 versions verifies"
else
  bad "verify after concurrent publishes: $(grep -v ': OK' <<<"$out" | head -5)"
fi

# ---- 3. kill -9 during publish -----------------------------------------------------------------
# A model of about 40 MB, so that a publish takes long enough to be killed in the middle.
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir big --set train.steps=1 --set model.mlp.hidden=4096,2048 \
  >big.log 2>&1 || { cat big.log; exit 1; }
# How long one publish takes here: the kills are spread over 1.2 times that.
t0=$(date +%s%N)
"$TESSERA" store publish big --store "$S" --model timing >/dev/null 2>&1 || bad "a timed publish failed"
span_ms=$(( ($(date +%s%N) - t0) * 12 / 10000000 ))
landed=0
for trial in $(seq 24); do
  "$TESSERA" store publish big --store "$S" --model crash >/dev/null 2>&1 &
  pid=$!
  delay_ms=$((RANDOM % span_ms))
  sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))"
  if kill -0 "$pid" 2>/dev/null; then landed=$((landed + 1)); fi
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # What a reader sees: only complete versions, each of which verifies.
  for d in "$S"/crash/[0-9]*; do
    [[ -e $d ]] || continue
    if ! "$TESSERA" store verify "crash@$(basename "$d")" --store "$S" >/dev/null 2>verify.err; then
      bad "trial $trial: $d is visible but does not verify: $(head -2 verify.err)"
    fi
  done
done
before=$("$TESSERA" store list crash --store "$S" --json 2>/dev/null | "$PY" -c 'import sys, json; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
if out=$("$TESSERA" store publish big --store "$S" --model crash 2>&1); then ok "after 24 kills ($landed mid-publish, over ${span_ms} ms): $before complete versions, and the next publish succeeds: $out"; else bad "publish after the kills: $out"; fi
# Kills are drawn uniformly over 1.2 publish times: about 5 in 6 land in a publish.
(( landed >= 12 )) && ok "$landed of 24 kills hit a publish in progress" || bad "only $landed of 24 kills hit a publish in progress"
leftover=$(find "$S/crash" -maxdepth 1 -name '[0-9]*' | wc -l)
(( leftover == before + 1 )) && ok "no half-made version directory: $leftover numbered entries, $((before + 1)) versions" || bad "$leftover numbered entries for $((before + 1)) versions"
"$TESSERA" store verify crash --store "$S" >/dev/null 2>&1 && ok "store verify: every version of crash" || bad "store verify crash"

# ---- 4. damage ---------------------------------------------------------------------------------
cp -r "$S/w1/1" "$S/w1/2" && chmod u+w "$S/w1/2"/* && sed -i 's/publish_id: "/publish_id: "copy-/' "$S/w1/2/manifest.pbtxt"
printf 'x' | dd of="$S/w1/2/weights.h5" bs=1 seek=5000 conv=notrunc status=none
if out=$("$TESSERA" store verify w1@2 --store "$S" 2>&1); then bad "verify passed a damaged weights.h5"; else
  [[ $out == *"$S/w1/2/weights.h5: does not match manifest.pbtxt"* ]] && ok "verify names the damaged weights.h5 and exits non-zero" || bad "verify of a damaged file: $out"
fi
rm "$S/w1/2/model.pbtxt"
if out=$("$TESSERA" store verify w1@2 --store "$S" 2>&1); then bad "verify passed a missing model.pbtxt"; else
  [[ $out == *"$S/w1/2/model.pbtxt: no such file"* ]] && ok "verify names the missing model.pbtxt" || bad "verify of a missing file: $out"
fi
rm -rf "$S/w1/2"

# ---- 5. aliases, rollback, gc ------------------------------------------------------------------
"$TESSERA" store publish model.h5 --store "$S" --model w1 >/dev/null   # version 2
"$TESSERA" store publish model.h5 --store "$S" --model w1 >/dev/null   # version 3
out=$("$TESSERA" store alias w1@3 production --store "$S" 2>&1) && [[ $out == "w1@production -> version 3 (new alias)" ]] && ok "alias: $out" || bad "alias: $out"
out=$("$TESSERA" store alias w1@2 production --store "$S" 2>&1) && [[ $out == "w1@production: version 3 -> 2" ]] && ok "alias moves: $out" || bad "alias move: $out"
out=$("$TESSERA" store rollback w1@production --store "$S" 2>&1) && [[ $out == *"version 2 -> 3" ]] && ok "rollback: $out" || bad "rollback: $out"
out=$(TESSERA_STORE="$S" "$TESSERA" store show w1@production 2>&1) && [[ $out == "w1 version 3 "* && $out == *"aliases:   latest, production"* ]] &&
  ok "show (root from TESSERA_STORE): $(head -1 <<<"$out")" || bad "show: $out"
"$TESSERA" store publish model.h5 --store "$S" --model w1 >/dev/null   # version 4
out=$("$TESSERA" store gc w1 --keep 1 --store "$S" 2>&1) && ok "gc: $out" || bad "gc: $out"
remaining=$("$TESSERA" store list w1 --store "$S" --json | "$PY" -c 'import sys, json; print(",".join(str(v["version"]) for v in json.load(sys.stdin)))')
# 1: staging; 3: production (its rollback undid the move to 2, so nothing protects 2); 4: latest.
[[ $remaining == "1,3,4" ]] && ok "gc kept every aliased version: $remaining" || bad "gc left $remaining"
# staging moves 1 -> 4: version 1 stays, as the target of a staging rollback.
"$TESSERA" store alias w1@4 staging --store "$S" >/dev/null
out=$("$TESSERA" store gc w1 --keep 1 --store "$S" 2>&1)
remaining=$("$TESSERA" store list w1 --store "$S" --json | "$PY" -c 'import sys, json; print(",".join(str(v["version"]) for v in json.load(sys.stdin)))')
[[ $remaining == "1,3,4" ]] && ok "gc keeps a rollback target: $remaining ($out)" || bad "gc after moving staging left $remaining"
out=$("$TESSERA" store rollback w1@staging --store "$S" 2>&1) && [[ $out == *"version 4 -> 1" ]] && ok "rollback to the kept version: $out" || bad "rollback: $out"
out=$("$TESSERA" store show w1@nope --store "$S" 2>&1) && bad "show of a missing alias succeeded" || {
  [[ $out == *"model 'w1' in $S: no alias 'nope'"* ]] && ok "unknown alias: $out" || bad "unknown alias: $out"; }
out=$("$TESSERA" store show '../etc@1' --store "$S" 2>&1) && bad "a path trick was accepted" || {
  [[ $out == *"is not a model name"* ]] && ok "path trick refused: $out" || bad "path trick: $out"; }
out=$("$TESSERA" store list 2>&1) && bad "list without a store succeeded" || {
  [[ $out == *"--store ROOT or set TESSERA_STORE"* ]] && ok "no store named: $out" || bad "no store: $out"; }

# ---- 6. train -> publish -> fine-tune from the store -> publish --------------------------------
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir a --set train.steps=20 --set publish.store="$S" \
  --set publish.model=lineage --set publish.alias=production >a.log 2>&1 || { bad "train with publish: $(tail -3 a.log)"; }
grep -q "published: lineage version 1" a.log && ok "train published lineage version 1" || bad "train publish: $(tail -3 a.log)"
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir b --set train.steps=20 --set model.mlp.out_features=12 \
  --set train.init_from="store://$S/lineage@production" --set publish.store="$S" --set publish.model=lineage \
  >b.log 2>&1 || bad "fine-tune: $(tail -3 b.log)"
grep -q "5.weight: re-initialised" b.log && grep -q "1.weight: loaded from store://" b.log && ok "fine-tune loaded all but the new head" ||
  bad "fine-tune log: $(grep -A8 init_from b.log)"
if "$PY" - "$S" <<'EOF'
import sys, re
root = sys.argv[1]
m1 = open(root + "/lineage/1/manifest.pbtxt").read()
m2 = open(root + "/lineage/2/manifest.pbtxt").read()
sha1 = re.search(r'name: "weights.h5"\s+bytes: \d+\s+sha256: "([0-9a-f]{64})"', m1).group(1)
parent = re.search(r"parent \{(.*?)\}", m2, re.S).group(1)
assert 'model: "lineage"' in parent and "version: 1" in parent and sha1 in parent, parent
assert re.search(r'source_commit: "[0-9a-f]{40}', m2), "no source commit"
assert m2.count("datasets {") == 4, "the four Fashion-MNIST files"
EOF
then ok "version 2's lineage names version 1 and its weights' sha256"; else bad "lineage of version 2"; fi

exit $fail
