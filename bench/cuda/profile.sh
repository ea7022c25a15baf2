#!/usr/bin/env bash
# Nsight Compute on the bf16 chunk engine, one benchmark shape (after `gpu_run.sh build` in the same call):
#   bench/cuda/profile.sh [benchmark filter]
set -o pipefail
B=/tmp/build-cuda
BIN=$B/bench/cuda/bench_cuda_retention
F=${1:-bm_bf16/fwd/8/4096/16/128/}
ncu --kernel-name regex:"scan|prefix" --launch-skip 3 --launch-count 3 --section SpeedOfLight --section Occupancy \
  --section WarpStateStats --section SchedulerStats --section LaunchStats \
  $BIN --benchmark_filter="$F" --benchmark_min_time=0.01 2>&1 | grep -v "^==PROF==" |
  grep -E "scan|prefix|Duration|Throughput|Achieved Occupancy|Warp Cycles Per Issued|Issued Warp|Eligible Warps|No Eligible|Registers Per|Block Limit|Stall|Theoretical Occ" | head -90
