#!/usr/bin/env bash
# Installs the build and test dependencies from Debian's packages. Idempotent: does nothing when they
# are already present. Needs root (or sudo) only when something is missing.
set -euo pipefail
# libcli11-dev: the programs' command lines; clang, libclang-rt-dev (libFuzzer, sanitizer runtimes) and
# libomp-dev: the clang build and the fuzzers of .ci/run. libopenmpi-dev, openmpi-bin: data-parallel training
# (retnet::mpi) and its tests. bible-kjv: the default training text of scripts/run.sh.
pkgs=(cmake g++ make libeigen3-dev catch2 libbenchmark-dev nlohmann-json3-dev libcli11-dev clang libclang-rt-dev
  libomp-dev libopenmpi-dev openmpi-bin bible-kjv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
