#!/usr/bin/env bash
# Per-kernel GPU times (Nsight Compute, each kernel timed alone, so launch gaps are not included) of a few
# steady-state iterations of one benchmark:  bench/cuda/kernel_times.sh FILTER [SKIP] [COUNT]
# Run after `gpu_run.sh build`.
B=${B:-/tmp/build-cuda}
ncu --launch-skip "${2:-40}" --launch-count "${3:-12}" --metrics gpu__time_duration.sum --csv \
  "$B/bench/cuda/bench_cuda_retention" --benchmark_filter="$1" 2>/dev/null |
  python3 "$(dirname "$0")/kernel_times.py"
