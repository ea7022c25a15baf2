#!/usr/bin/env bash
# Builds everything (Release, warnings as errors) and runs all tests. Usage: scripts/test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${1:-build}
jobs=$(nproc)
# Without a GPU the CUDA code is compiled to PTX only: every template is instantiated and checked, and the machine
# code generation (ptxas), about 40 % of the CUDA build time, is left for the machines that can run it.
cuda_arch=()
if ! { command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; }; then
  cuda_arch=(-DCMAKE_CUDA_ARCHITECTURES=90a-virtual)
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DRETNET_BUILD_TESTS=ON -DRETNET_BUILD_BENCHMARKS=ON \
  -DRETNET_BUILD_EXAMPLES=ON -DRETNET_CUDA=AUTO "${cuda_arch[@]}"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j 1
