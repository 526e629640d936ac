#!/usr/bin/env bash
# The CMake package as a user gets it: `cmake --install` of this build into a fresh prefix, a
# project outside the tree (tests/package/downstream) configured with find_package(tessera) and
# linked against tessera::tessera, which trains W1 for one epoch on Fashion-MNIST through the C++
# API; then the installed command plots that run with the installed plot script.
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
BUILD=$1 SRC=$2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$BUILD" --prefix "$W/prefix" > "$W/install.log" || { cat "$W/install.log"; fail "cmake --install"; }
for f in lib/cmake/tessera/tesseraConfig.cmake lib/cmake/tessera/tesseraConfigVersion.cmake \
         lib/cmake/tessera/tesseraTargets.cmake lib/libtessera_core.a lib/libtessera_jobs.a \
         include/jobs/trainer.h include/jobs/job.pb.h include/core/model_spec.pb.h include/tessera/config.h \
         bin/tessera share/tessera/plot_runs.py; do
  [ -e "$W/prefix/$f" ] || fail "not installed: $f"
done
# The package names nothing of the tree it was built in.
if grep -rl -e "$(realpath "$SRC")" -e "$(realpath "$BUILD")" "$W/prefix/lib/cmake"; then
  fail "the installed CMake files point into the source or build tree"
fi
# Libraries are named by targets that find_package(tessera) looks up again, not by this machine's paths.
if grep -n '/[^ ;"]*\.so[;"]' "$W/prefix"/lib/cmake/tessera/tesseraTargets*.cmake; then
  fail "the exported targets name shared libraries by absolute path"
fi
echo "installed: $(du -sh "$W/prefix" | cut -f1) in $W/prefix"

# Configure and build the downstream project with nothing but the prefix.
CUDA_ARGS=()
[ -x /usr/local/cuda/bin/nvcc ] && CUDA_ARGS=(-DCUDAToolkit_ROOT=/usr/local/cuda)
cmake -S "$SRC/tests/package/downstream" -B "$W/downstream" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$W/prefix" "${CUDA_ARGS[@]}" > "$W/configure.log" 2>&1 \
  || { cat "$W/configure.log"; fail "find_package(tessera) in the downstream project"; }
cmake --build "$W/downstream" > "$W/build.log" 2>&1 || { tail -40 "$W/build.log"; fail "building against tessera::tessera"; }

"$W/downstream/train_w1" "$W/run" 1 > "$W/train.log" 2>&1 || { cat "$W/train.log"; fail "train_w1"; }
cat "$W/train.log"
/usr/bin/python3 - "$W/run/summary.json" <<'PY' || fail "the downstream run did not learn W1"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["steps"] == 469, s["steps"]            # one epoch of 60000 at batch 128
assert s["test_accuracy"] > 0.80, s["test_accuracy"]
print(f"summary.json: {s['steps']} steps, test accuracy {s['test_accuracy']:.4f}")
PY

# The installed command finds its plot script under share/tessera.
"$W/prefix/bin/tessera" plot "$W/run" > "$W/plot.log" 2>&1 || { cat "$W/plot.log"; fail "installed tessera plot"; }
[ -s "$W/run/curves.png" ] && [ -s "$W/run/confusion_matrix.png" ] || fail "installed tessera plot wrote no PNG"
echo "install_test: ok"
