#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, benchmarks, fla, sanitizers. Stages by name:
#   bench/cuda/gpu_run.sh build test bench fla memcheck racecheck build-base test-base bench-base
#   and for the whole model: bench-model fla-model profile-model memcheck-model smoke (train_lm on both devices,
#   float and bf16), fla-goldens (fixtures of fla's own RetNet for tests/io)
# ARCH (default 90a) is the CUDA architecture of build; build-base, test-base and bench-base build, test and time
# the same code for plain sm_90, where the kernels keep their mma.sync walks and float with key size 256 runs on
# the generic scan kernel. TARGETS narrows what build builds; TEST_FILTER and BENCH_FILTER the tests and benchmarks.
# Expects .gpu-debs (with libcli11-dev for the programs: ../shared/gpu/collect-debs.sh .gpu-debs libcli11-dev, and
# .peers/fla-src for fla) carried along; logs go to $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps
for f in .gpu-debs/*.deb; do dpkg -x "$f" /tmp/deps; done
B=/tmp/build-cuda
for stage in "$@"; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
      cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
        -DCMAKE_CUDA_ARCHITECTURES=${ARCH:-90a} -DRETNET_BUILD_EXAMPLES=ON -DRETNET_MPI=OFF -DCMAKE_CUDA_FLAGS="-Xptxas=-v" > "$OUT/build.log" 2>&1 &&
        cmake --build $B -j16 --target ${TARGETS:-test_cuda bench_cuda_retention bench_cuda_model train_lm} -- -k 0 >> "$OUT/build.log" 2>&1 ||
        { grep -E "error" -A3 "$OUT/build.log" | head -60; exit 1; }
      grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | sort -rn | head -12 ;;
    build-base)
      cmake -S . -B /tmp/build-base -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DRETNET_BUILD_EXAMPLES=OFF > "$OUT/build_base.log" 2>&1 &&
        cmake --build /tmp/build-base -j16 --target test_cuda bench_cuda_retention >> "$OUT/build_base.log" 2>&1 ||
        { grep -E "error" -A3 "$OUT/build_base.log" | head -30; exit 1; } ;;
    test-base) /tmp/build-base/tests/cuda/test_cuda ${TEST_FILTER:-} 2>&1 | tee "$OUT/test_base.log" | tail -30 ;;
    bench-base) /tmp/build-base/bench/cuda/bench_cuda_retention --benchmark_counters_tabular=true --benchmark_filter="${BENCH_FILTER:-bm_bf16/fwd(bwd)?/}" 2>&1 | tee "$OUT/bench_base.log" | grep -v "^-" ;;
    test) $B/tests/cuda/test_cuda ${TEST_FILTER:-} 2>&1 | tee "$OUT/test.log" | tail -60 ;;
    bench) $B/bench/cuda/bench_cuda_retention --benchmark_counters_tabular=true ${BENCH_FILTER:+--benchmark_filter=$BENCH_FILTER} 2>&1 | tee "$OUT/bench.log" | grep -v "^-" ;;
    fla) PYTHONPATH=$PWD/.peers/fla-src PYTHONUNBUFFERED=1 python3 bench/fla_bench.py "$OUT/fla.json" 2>&1 | tee "$OUT/fla.log" | tail -30 ;;
    memcheck) compute-sanitizer --tool memcheck --error-exitcode 3 $B/tests/cuda/test_cuda "[step],[errors]" 2>&1 | tail -5;
      SANITIZE=1 compute-sanitizer --tool memcheck --error-exitcode 3 $B/tests/cuda/test_cuda "[sanitize]" 2>&1 | tee "$OUT/memcheck.log" | tail -8 ;;
    bench-model) $B/bench/cuda/bench_cuda_model --benchmark_counters_tabular=true ${BENCH_FILTER:+--benchmark_filter=$BENCH_FILTER} 2>&1 | tee "$OUT/bench_model.log" | grep -v "^-" ;;
    fla-model) PYTHONPATH=$PWD/.peers/fla-src PYTHONUNBUFFERED=1 python3 bench/fla_model_bench.py 2>&1 | tee "$OUT/fla_model.log" | tail -12 ;;
    profile-model)  # GPU time per op of a training step for one benchmark shape (nsys; else ncu, each kernel timed alone)
      F=${PROFILE_FILTER:-bm_train_step/model:2/B:2/T:8192/precision:2}
      if command -v nsys > /dev/null; then
        nsys profile -t cuda -o /tmp/prof -f true $B/bench/cuda/bench_cuda_model --benchmark_filter="$F" \
          > "$OUT/profile_run.log" 2>&1 &&
          nsys stats -r cuda_gpu_kern_sum --format csv -o /tmp/prof /tmp/prof.nsys-rep > /dev/null 2>&1 &&
          cp /tmp/prof_cuda_gpu_kern_sum.csv /tmp/kernels.csv
      else
        ncu --csv --metrics gpu__time_duration.sum --cache-control none $B/bench/cuda/bench_cuda_model \
          --benchmark_filter="$F" --benchmark_min_time=0.001 > /tmp/kernels.csv 2> "$OUT/profile_run.log"
      fi &&
        gzip -c /tmp/kernels.csv > "$OUT/kernels.csv.gz" &&
        python3 bench/cuda/model_profile.py /tmp/kernels.csv | tee "$OUT/profile.md" ;;
    fla-goldens) PYTHONPATH=$PWD/.peers/fla-src python3 tests/fla/make_goldens.py --fla $PWD/.peers/fla-src \
        --out "$OUT/fla-goldens" 2>&1 | tail -12 ;;
    memcheck-model) compute-sanitizer --tool memcheck --error-exitcode 3 $B/tests/cuda/test_cuda "[model]" 2>&1 | tail -5 ;;
    smoke)  # train_lm on the CPU and the GPU from the same seed, then each resuming the other's checkpoint
      T=$B/examples/train_lm
      S="--batch 8 --seq 128 --layers 2 --dim 128 --heads 2 --value-dim 256 --ffn 256 --chunk 64 --eval-every 10 --ckpt-every 10 --max-new 80 --seed 7"
      rm -rf /tmp/smoke-c /tmp/smoke-g
      $T --device cpu $S --steps 20 --out /tmp/smoke-c > "$OUT/smoke_cpu.log" 2>&1 &&
        $T --device cuda $S --steps 20 --out /tmp/smoke-g > "$OUT/smoke_gpu.log" 2>&1 &&
        paste -d, /tmp/smoke-c/loss.csv /tmp/smoke-g/loss.csv | cut -d, -f1,2,9 &&
        $T --device cpu $S --steps 30 --resume --out /tmp/smoke-g 2>&1 | tail -2 &&
        $T --device cuda $S --steps 40 --resume --out /tmp/smoke-g 2>&1 | tail -2 &&
        rm -rf /tmp/smoke-b && $T --device cuda --precision bf16 $S --steps 20 --out /tmp/smoke-b > "$OUT/smoke_bf16.log" 2>&1 &&
        paste -d, /tmp/smoke-c/loss.csv /tmp/smoke-b/loss.csv | cut -d, -f1,2,9 | tail -3 &&
        $T --device cpu $S --steps 30 --resume --out /tmp/smoke-b 2>&1 | tail -2 ;;
    racecheck) SANITIZE=1 compute-sanitizer --tool racecheck --error-exitcode 3 $B/tests/cuda/test_cuda "[sanitize]" 2>&1 | tee "$OUT/racecheck.log" | tail -8 ;;
  esac
done
