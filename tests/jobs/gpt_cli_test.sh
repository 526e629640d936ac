#!/usr/bin/env bash
# A GPT end to end, as a user runs it: `tessera corpus` turns Debian's fortune files into token
# files, `tessera train` trains a small GPT on them until its test perplexity is well below the
# unigram baseline, an independent PyTorch GPT loaded from the checkpoint with h5py gets the same
# test loss and greedy continuation, `tessera generate` prints what the model writes, and the
# version it published is served over HTTP (curl) with the next-token logits generate follows.
#   gpt_cli_test.sh TESSERA SOURCE_DIR
set -euo pipefail
TESSERA=$1 SRC=$2
FORTUNES=/usr/share/games/fortunes
[ -d "$FORTUNES" ] || { echo "gpt_cli_test: $FORTUNES is missing: run scripts/setup.sh (it installs fortunes)"; exit 1; }
WORK=$(mktemp -d)
SERVE_PID=""
trap '[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
export OMP_WAIT_POLICY=PASSIVE
fail() { echo "gpt_cli_test: $*"; exit 1; }

"$TESSERA" corpus "$FORTUNES" -o "$WORK/data" | tee "$WORK/corpus.log"
grep -q "train.bin  [0-9]* tokens" "$WORK/corpus.log" || fail "corpus printed no token count"

LAYERS=2 HEADS=4 CONTEXT=64
"$TESSERA" train "$SRC/jobs/examples/fortunes_gpt.pbtxt" --run-dir "$WORK/run" \
  --set data.train_path="$WORK/data/train.bin" --set data.test_path="$WORK/data/test.bin" \
  --set model.gpt.layers=$LAYERS --set model.gpt.heads=$HEADS --set model.gpt.width=64 \
  --set model.gpt.context=$CONTEXT --set train.steps=300 --set train.eval_every_steps=0 \
  --set optimizer.schedule.warmup_steps=20 --set train.threads=1 \
  --set publish.store="$WORK/store" --set publish.model=fortunes > "$WORK/train.log" 2>&1 \
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

# The published version: generation from the store follows the same weights.
"$TESSERA" generate "store://$WORK/store/fortunes@latest" --prompt "The " --temperature 0 --tokens 60 \
  > "$WORK/greedy-store.txt" 2>/dev/null
cmp -s "$WORK/greedy.txt" "$WORK/greedy-store.txt" || fail "the store version generates other text than the checkpoint"

# Served as any version is: token ids INT32 [n, 64] in, logits [n, 64, 256] out. The most likely
# token after a 64-byte window is the one greedy generation appends to it.
"$TESSERA" serve --store "$WORK/store" --http-port 0 --port-file "$WORK/ports.json" \
  > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 200); do [ -s "$WORK/ports.json" ] && break; sleep 0.05; done
[ -s "$WORK/ports.json" ] || { cat "$WORK/serve.log"; fail "the server did not start"; }
PORT=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["http"])' "$WORK/ports.json")
WINDOW="Q: What is the difference between a duck and a fortune cookie? A: "
WINDOW=${WINDOW:0:$CONTEXT}
"$TESSERA" generate "$WORK/run" --prompt "$WINDOW" --temperature 0 --tokens 1 > "$WORK/next.txt" 2>/dev/null
/usr/bin/python3 - "http://127.0.0.1:$PORT" "$WINDOW" "$WORK/next.txt" $CONTEXT <<'PY'
import json, sys, urllib.error, urllib.request
url, window, next_path, context = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
assert len(window) == context
def call(path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
status, meta = call("/v2/models/fortunes")
assert status == 200, meta
assert meta["inputs"][0]["datatype"] == "INT32" and meta["inputs"][0]["shape"] == [-1, context], meta
assert meta["outputs"][0]["shape"] == [-1, context, 256], meta
ids = list(window)
status, out = call("/v2/models/fortunes/infer", {"inputs": [{"name": "input", "datatype": "INT32",
    "shape": [2, context], "data": ids + ids}], "parameters": {"top_k": 1}})
assert status == 200, out
classes = next(o for o in out["outputs"] if o["name"] == "classes")
assert classes["shape"] == [2, context, 1], classes["shape"]
expected = open(next_path, "rb").read().rstrip(b"\n")[-1]
print("served next token after the window: %r; generate appended %r" % (chr(classes["data"][context - 1]), chr(expected)))
assert classes["data"][context - 1] == expected and classes["data"][2 * context - 1] == expected
status, err = call("/v2/models/fortunes/infer", {"inputs": [{"name": "input", "datatype": "INT32",
    "shape": [1, context], "data": [300] + ids[1:]}]})
assert status == 400 and "not a token id of the vocabulary [0, 256)" in err["error"], (status, err)
PY
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""

# A model trained on windows shorter than its context generates within them: the positions past
# them kept their initial embeddings.
"$TESSERA" train "$SRC/jobs/examples/fortunes_gpt.pbtxt" --run-dir "$WORK/short" \
  --set data.train_path="$WORK/data/train.bin" --set data.test_path="$WORK/data/test.bin" \
  --set model.gpt.layers=1 --set model.gpt.width=32 --set model.gpt.context=64 --set data.sequence_length=16 \
  --set train.steps=3 --set optimizer.schedule.warmup_steps=1 --set train.threads=1 > "$WORK/short.log" 2>&1 \
  || { cat "$WORK/short.log"; fail "the short-window run failed"; }
"$TESSERA" generate "$WORK/short" --tokens 40 > /dev/null 2> "$WORK/short.err"
grep -q "it sees the last 16 tokens" "$WORK/short.err" || { cat "$WORK/short.err"; fail "generation ran past the trained windows"; }

# A run that stopped after its checkpoint at step 20 of 40 (the later one removed, as if it died
# before writing it) resumes to the same bits as the run that did not stop: with dropout, whose
# masks follow the example positions, and a cosine schedule over the 40 steps.
RESUME=(--set data.train_path="$WORK/data/train.bin" --set data.test_path="$WORK/data/test.bin"
        --set model.gpt.layers=1 --set model.gpt.width=32 --set model.gpt.context=32 --set model.gpt.dropout=0.1
        --set train.steps=40 --set checkpoint.every_steps=20 --set checkpoint.keep_last=5 --set train.threads=1
        --set optimizer.schedule.warmup_steps=5)
for r in straight stopped; do
  "$TESSERA" train "$SRC/jobs/examples/fortunes_gpt.pbtxt" --run-dir "$WORK/$r" "${RESUME[@]}" > "$WORK/$r.log" 2>&1 \
    || { cat "$WORK/$r.log"; fail "the $r run failed"; }
done
rm -rf "$WORK/stopped/checkpoints/step-00000040" "$WORK/stopped/checkpoints/latest" "$WORK/stopped/summary.json"
"$TESSERA" train "$SRC/jobs/examples/fortunes_gpt.pbtxt" --run-dir "$WORK/stopped" "${RESUME[@]}" \
  > "$WORK/resumed.log" 2>&1 || { cat "$WORK/resumed.log"; fail "the resume failed"; }
grep -q "resume: .*step 20" "$WORK/resumed.log" || { cat "$WORK/resumed.log"; fail "the run did not resume from step 20"; }
/usr/bin/python3 "$SRC/tests/jobs/compare_checkpoints.py" bitwise "$WORK/straight/checkpoints/step-00000040/checkpoint.h5" \
  "$WORK/stopped/checkpoints/step-00000040/checkpoint.h5" || fail "the resumed GPT differs from the uninterrupted one"

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
