#!/usr/bin/env bash
# Builds everything (Release, warnings as errors) and runs all tests. Usage: scripts/test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${1:-build}
jobs=$(nproc)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DRETNET_BUILD_TESTS=ON -DRETNET_BUILD_BENCHMARKS=ON \
  -DRETNET_BUILD_EXAMPLES=ON -DRETNET_CUDA=AUTO
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j 1
