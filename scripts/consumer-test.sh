#!/usr/bin/env bash
# Installs the package into a temporary prefix, then configures, builds and runs tests/consumer, a separate
# project that finds it with find_package(retnet CONFIG REQUIRED). Usage: scripts/consumer-test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/install" >/dev/null
cmake -S tests/consumer -B "$prefix/consumer-build" -DCMAKE_PREFIX_PATH="$prefix/install" -DCMAKE_BUILD_TYPE=Release
cmake --build "$prefix/consumer-build" -j "$(nproc)"
"$prefix/consumer-build/consumer"
echo "consumer test passed"
