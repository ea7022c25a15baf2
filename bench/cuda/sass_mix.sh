#!/usr/bin/env bash
# Opcode histogram of one kernel in the benchmark binary (static SASS, after `gpu_run.sh build`):
#   bench/cuda/sass_mix.sh [mangled-name fragment]     e.g. chunk_engine_kernelINS0_9EngineOpsIfEELi128ELi64ELb0E
B=/tmp/build-cuda
K=${1:-chunk_engine_kernelINS0_9EngineOpsIfEELi128ELi64ELb0E}
cuobjdump -sass $B/bench/cuda/bench_cuda_retention | awk -v k="$K" '
  /Function :/ { on = index($0, k) > 0 }
  on && /\/\*[0-9a-f][0-9a-f][0-9a-f][0-9a-f]\*\// {
    line = $0; sub(/^ *\/\*[0-9a-f]+\*\/ */, "", line); sub(/^@!?U?P[0-9T] +/, "", line)
    split(line, w, /[ .;]/); n[w[1]]++; total++ }
  END { for (o in n) printf "%6d %s\n", n[o], o; printf "%6d TOTAL\n", total }' | sort -rn | head -40
