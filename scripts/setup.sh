#!/usr/bin/env bash
# Installs every Debian package tessera needs (once; later runs only check) and builds it into
# build/ in Release mode. Idempotent: safe to run again, and again after a pull.
#
#   scripts/setup.sh            install what is missing, configure and build
#   scripts/setup.sh --no-build install only
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  cmake ninja-build g++ pkg-config
  libopenblas-dev libdnnl-dev zlib1g-dev
  libopenmpi-dev openmpi-bin
  libhdf5-dev libhdf5-openmpi-dev hdf5-tools
  libprotobuf-dev protobuf-compiler
  libgtest-dev libcli11-dev nlohmann-json3-dev libssl-dev libdeflate-dev
  libcpp-httplib-dev libgrpc++-dev protobuf-compiler-grpc curl
  slurmctld slurmd slurm-client munge
  clang-14 libclang-rt-14-dev
  dataset-fashion-mnist fortunes fortunes-min
  python3-h5py python3-numpy python3-torch python3-matplotlib
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--no-build" ] && exit 0

# CUDA sources compile wherever the toolkit is installed, with or without a GPU.
if [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${TESSERA_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$(nproc)"
