#!/usr/bin/env bash
# A GPT end to end, as a user runs it: `tessera corpus` turns Debian's fortune files into token
# files, `tessera train` trains a small GPT on them until its test perplexity is well below the
# unigram baseline, an independent PyTorch GPT loaded from the checkpoint with h5py gets the same
# test loss and greedy continuation, and `tessera generate` prints what the model writes.
#   gpt_cli_test.sh TESSERA SOURCE_DIR
set -euo pipefail
TESSERA=$1 SRC=$2
FORTUNES=/usr/share/games/fortunes
[ -d "$FORTUNES" ] || { echo "gpt_cli_test: $FORTUNES is missing: run scripts/setup.sh (it installs fortunes)"; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_WAIT_POLICY=PASSIVE
fail() { echo "gpt_cli_test: $*"; exit 1; }

"$TESSERA" corpus "$FORTUNES" -o "$WORK/data" | tee "$WORK/corpus.log"
grep -q "train.bin  [0-9]* tokens" "$WORK/corpus.log" || fail "corpus printed no token count"

LAYERS=2 HEADS=4 CONTEXT=64
"$TESSERA" train "$SRC/jobs/examples/fortunes_gpt.pbtxt" --run-dir "$WORK/run" \
  --set data.train_path="$WORK/data/train.bin" --set data.test_path="$WORK/data/test.bin" \
  --set model.gpt.layers=$LAYERS --set model.gpt.heads=$HEADS --set model.gpt.width=64 \
  --set model.gpt.context=$CONTEXT --set train.steps=400 --set train.eval_every_steps=0 \
  --set optimizer.schedule.warmup_steps=20 --set train.threads=1 > "$WORK/train.log" 2>&1 \
  || { cat "$WORK/train.log"; fail "training failed"; }
grep -E "unigram|eval|done" "$WORK/train.log"
UNIGRAM=$(sed -n 's/.*unigram perplexity of the test split: \([0-9.]*\).*/\1/p' "$WORK/train.log")
[ -n "$UNIGRAM" ] || fail "the log names no unigram perplexity"
/usr/bin/python3 - "$WORK/run/summary.json" "$UNIGRAM" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
unigram = float(sys.argv[2])
for k in ("test_perplexity", "test_accuracy", "tokens_per_sec", "test_tokens"):
    assert k in s, "summary.json lacks " + k
for k in ("test_f1", "confusion_matrix"):
    assert k not in s, "summary.json of a language model has " + k
print("test perplexity %.3f against the unigram baseline %.3f" % (s["test_perplexity"], unigram))
assert s["test_perplexity"] < 0.6 * unigram, "the model learned little beyond token frequencies"
PY

CKPT=$(ls -d "$WORK"/run/checkpoints/step-*/checkpoint.h5 | tail -1)
"$TESSERA" generate "$WORK/run" --prompt "The " --temperature 0 --tokens 60 > "$WORK/greedy.txt" 2> "$WORK/gen.err" \
  || { cat "$WORK/gen.err"; fail "generate failed"; }
/usr/bin/python3 "$SRC/tests/jobs/gpt_torch_check.py" "$CKPT" "$WORK/data/test.bin" "$WORK/run/summary.json" \
  "$WORK/greedy.txt" "The " $LAYERS $HEADS $CONTEXT

# Sampling is a function of the seed; the text is printed for whoever reads the log.
echo "--- generated (temperature 0.8, top-k 40, seed 7) ---"
"$TESSERA" generate "$WORK/run" --prompt "A " --tokens 300 --top-k 40 --seed 7 2>/dev/null | tee "$WORK/a.txt"
echo "---"
"$TESSERA" generate "$WORK/run" --prompt "A " --tokens 300 --top-k 40 --seed 7 2>/dev/null > "$WORK/b.txt"
cmp -s "$WORK/a.txt" "$WORK/b.txt" || fail "the same seed sampled different text"
[ "$(head -c 2 "$WORK/a.txt")" = "A " ] || fail "the prompt is not echoed"

# Refusals name what is wrong.
if "$TESSERA" generate "$WORK/run" --temperature -1 > /dev/null 2> "$WORK/err"; then fail "a negative temperature was accepted"; fi
grep -q "temperature must be a finite number >= 0" "$WORK/err" || { cat "$WORK/err"; fail "unclear temperature message"; }
/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$WORK"
cat > "$WORK/mlp.pbtxt" <<'SPEC'
name: "blobs"
model { mlp { in_features: 4 hidden: 8 out_features: 3 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 }
train { steps: 2 threads: 1 }
SPEC
"$TESSERA" train "$WORK/mlp.pbtxt" --run-dir "$WORK/mlp" > /dev/null 2>&1 || fail "the MLP run failed"
if "$TESSERA" generate "$WORK/mlp" > /dev/null 2> "$WORK/err"; then fail "generate accepted an MLP"; fi
grep -q "generation needs a GPT" "$WORK/err" || { cat "$WORK/err"; fail "unclear message for an MLP"; }
echo "gpt_cli_test: OK"
