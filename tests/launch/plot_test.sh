#!/usr/bin/env bash
# tessera plot, as a user runs it after a sweep: two real runs (different learning rates) drawn
# into one PNG, each run's confusion matrix written beside its summary; the PNGs are read back
# with matplotlib and must be images of the expected size with something drawn on them; broken
# run directories are refused with a message naming the file (and line).
#   plot_test.sh TESSERA SOURCE_DIR
set -euo pipefail
TESSERA=$1 SRC=$2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$WORK"
cat > "$WORK/job.pbtxt" <<'SPEC'
name: "blobs"
model { mlp { in_features: 4 hidden: 16 out_features: 3 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 }
optimizer { kind: SGD lr: 0.01 }
train { epochs: 3 log_every_steps: 3 seed: 3 threads: 1 }
SPEC
for lr in 0.01 0.1; do
  "$TESSERA" train "$WORK/job.pbtxt" --run-dir "$WORK/lr-$lr" --set optimizer.lr=$lr > "$WORK/train-$lr.log" 2>&1 \
    || { cat "$WORK/train-$lr.log"; fail "training lr $lr"; }
done

"$TESSERA" plot "$WORK/lr-0.01" "$WORK/lr-0.1" -o "$WORK/sweep.png" > "$WORK/plot.out" 2>&1 \
  || { cat "$WORK/plot.out"; fail "tessera plot"; }
cat "$WORK/plot.out"
grep -q "wrote $WORK/sweep.png (2 runs)" "$WORK/plot.out" || fail "no report of the curves"
"$TESSERA" plot "$WORK/lr-0.1" --no-confusion > /dev/null || fail "one run, default output"
/usr/bin/python3 - "$WORK" <<'PY' || fail "the PNGs are not what was asked for"
import sys
import matplotlib.image as mpimg
w = sys.argv[1]
def check(path, min_w, min_h):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    img = mpimg.imread(path)
    h, wd = img.shape[:2]
    assert wd >= min_w and h >= min_h, (path, img.shape)
    # Something is drawn: not one flat colour, and a fair share of pixels are not white.
    rgb = img[..., :3]
    nonwhite = (rgb < 0.95).any(axis=-1).mean()
    assert rgb.std() > 0.05 and 0.02 < nonwhite < 0.9, (path, rgb.std(), nonwhite)
    print(f"{path}: {wd}x{h}, {nonwhite:.1%} of pixels drawn")
check(f"{w}/sweep.png", 1000, 700)
check(f"{w}/lr-0.1/curves.png", 1000, 700)
check(f"{w}/lr-0.01/confusion_matrix.png", 300, 300)
check(f"{w}/lr-0.1/confusion_matrix.png", 300, 300)
PY

# Hostile or broken run directories: exit non-zero, name what is wrong and where.
expect_error() {  # WHAT PATTERN ARGS...
  local what=$1 pattern=$2; shift 2
  if "$TESSERA" plot "$@" -o "$WORK/bad.png" > "$WORK/err.out" 2>&1; then fail "$what: accepted"; fi
  grep -q -- "$pattern" "$WORK/err.out" || { cat "$WORK/err.out"; fail "$what: message lacks '$pattern'"; }
  echo "refused ($what): $(tail -1 "$WORK/err.out")"
}
expect_error "no such directory" "$WORK/nowhere: not a directory" "$WORK/nowhere"
mkdir "$WORK/empty"
expect_error "no metrics" "$WORK/empty/metrics.jsonl: missing" "$WORK/empty"
mkdir "$WORK/garbled" && printf '{"event":"train","step":1,"loss":1}\n{"event": tra\n' > "$WORK/garbled/metrics.jsonl"
expect_error "a line that is not JSON" "$WORK/garbled/metrics.jsonl:2: not JSON" "$WORK/garbled"
mkdir "$WORK/badcm" && cp "$WORK/lr-0.1/metrics.jsonl" "$WORK/badcm/" && echo '{"confusion_matrix": [[1, 2], [3]]}' > "$WORK/badcm/summary.json"
expect_error "a ragged confusion matrix" "summary.json: confusion_matrix is not a square matrix" "$WORK/badcm"
mkdir "$WORK/boolcm" && cp "$WORK/lr-0.1/metrics.jsonl" "$WORK/boolcm/" && echo '{"confusion_matrix": [[true, false], [false, true]]}' > "$WORK/boolcm/summary.json"
expect_error "a confusion matrix of booleans" "$WORK/boolcm/summary.json: confusion_matrix is not a square matrix" "$WORK/boolcm"
mkdir "$WORK/latin1" && cp "$WORK/lr-0.1/metrics.jsonl" "$WORK/latin1/" && printf '{"name": "caf\xe9", "confusion_matrix": [[1]]}\n' > "$WORK/latin1/summary.json"
expect_error "a summary.json that is not UTF-8" "$WORK/latin1/summary.json: not UTF-8 text" "$WORK/latin1"
echo "plot_test: ok"
