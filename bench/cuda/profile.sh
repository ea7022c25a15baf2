#!/usr/bin/env bash
# Nsight Compute on the chunk engine, one benchmark shape (after `gpu_run.sh build` in the same call):
#   bench/cuda/profile.sh [benchmark filter] [kernel regex]
# Prints each kernel's duration, issue rate, occupancy and where its warps stall (cycles per issued instruction).
set -o pipefail
B=/tmp/build-cuda
BIN=$B/bench/cuda/bench_cuda_retention
F=${1:-bm_bf16/fwd/8/4096/16/128/}
K=${2:-engine|scan|prefix}
S=smsp__average_warps_issue_stalled
M=gpu__time_duration.sum,smsp__issue_active.avg.per_cycle_active,sm__warps_active.avg.pct_of_peak_sustained_active
M=$M,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum
for r in barrier long_scoreboard short_scoreboard math_pipe_throttle mio_throttle wait not_selected selected \
  dispatch_stall lg_throttle no_instruction branch_resolving membar sleeping drain tex_throttle imc_miss; do
  M=$M,${S}_${r}_per_issue_active.ratio
done
ncu --kernel-name regex:"$K" --launch-skip 3 --launch-count ${NCU_COUNT:-3} --metrics "$M" \
  $BIN --benchmark_filter="$F" --benchmark_min_time=0.01 2>&1 | grep -v "^==PROF==" |
  grep -E "engine|scan|prefix|duration|issue_active|warps_active|hmma|inst_executed|stalled" |
  sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'
