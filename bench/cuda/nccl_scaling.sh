#!/usr/bin/env bash
# Tokens/s of data-parallel training on 1, 2, 4 and 8 GPUs (one rank per GPU, as many as the machine has) and the
# speed-up over one GPU. Usage: bench/cuda/nccl_scaling.sh BUILD_DIR [model B T precision zero steps]
# (defaults: the 1.35 B model, 1 x 8192 tokens per GPU, bf16, no ZeRO, 10 steps).
set -euo pipefail
build=${1:?usage: nccl_scaling.sh BUILD_DIR [model B T precision zero steps]}
shift
args=("${@:-1 1 8192 2 0 10}")
gpus=$(nvidia-smi -L | wc -l)
flags=()
if mpirun --version 2>&1 | grep -q "Open MPI"; then flags=(--bind-to none); fi
base=""
for n in 1 2 4 8; do
  if [ "$n" -gt "$gpus" ]; then echo "$n GPUs: skipped (this machine has $gpus)"; continue; fi
  line=$(mpirun -np "$n" "${flags[@]}" "$build/bench/cuda/bench_cuda_nccl" ${args[@]} | grep '^ranks')
  tps=$(sed -E 's/.*tokens\/s ([0-9.]+).*/\1/' <<<"$line")
  [ -z "$base" ] && base=$tps
  echo "$line  speed-up $(awk -v a="$tps" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
done
