#!/usr/bin/env bash
# train_lm under mpirun: 2 ranks follow the 1-process run of the same global batch (losses within 1e-6
# relative, plain and ZeRO-1 with several gradient buckets); a checkpoint written by 2 ranks with ZeRO-1 resumes
# in one process onto the uninterrupted curve; only rank 0 prints; without a GPU, --device cuda with 2 ranks is
# refused on one line. Usage: mpi_train_lm.sh TRAIN_LM MPIEXEC NP_FLAG [MPIEXEC FLAGS...]
set -uo pipefail
train_lm=$1 mpiexec=$2 np_flag=$3
shift 3
mpi=("$mpiexec" "$np_flag" 2 "$@")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
failures=0
fail() { failures=$((failures + 1)); echo "FAIL: $*"; }

tiny=(--batch 5 --seq 16 --layers 2 --dim 16 --heads 2 --value-dim 16 --ffn 24 --chunk 8 --max-new 8
      --eval-every 2 --ckpt-every 3 --dropout 0.1)

# same_losses A.csv B.csv [FIRST_STEP]: the loss column of B's rows (from FIRST_STEP on) within 1e-6 relative of A's
same_losses() {
  awk -F, -v first="${3:-1}" 'NR == FNR { if (FNR > 1) a[$1] = $2; next }
    FNR > 1 && $1 >= first { n++; d = $2 - a[$1]; if (d < 0) d = -d; s = a[$1] < 0 ? -a[$1] : a[$1];
      if (!($1 in a) || d > 1e-6 * s) { printf "step %s: %s vs %s\n", $1, a[$1], $2; bad = 1 } }
    END { if (n == 0) { print "no rows"; bad = 1 } exit bad }' "$1" "$2"
}

"$train_lm" "${tiny[@]}" --steps 6 --out one > one.txt 2>&1 || { fail "1-process run failed"; cat one.txt; }

for zero in 0 1; do
  out=np2_zero$zero
  if ! "${mpi[@]}" "$train_lm" "${tiny[@]}" --steps 6 --zero $zero --bucket-mb 0.002 --out $out > $out.txt 2>&1; then
    fail "mpirun -np 2 --zero $zero failed"; cat $out.txt
    continue
  fi
  grep -q "on cpu, 2 ranks" $out.txt || fail "--zero $zero: no '2 ranks' in the first line"
  [ "$(grep -c '^step     2/6  loss' $out.txt)" -eq 1 ] || fail "--zero $zero: progress line of step 2 not printed exactly once"
  [ "$(grep -c '^--- sample' $out.txt)" -eq 1 ] || fail "--zero $zero: the sample is not printed exactly once"
  same_losses one/loss.csv $out/loss.csv || fail "--zero $zero: losses differ from the 1-process run"
  echo "ok: mpirun -np 2 --zero $zero follows the 1-process losses"
done

# 2 ranks with ZeRO-1 to step 3, then one process from that checkpoint to step 6
if "${mpi[@]}" "$train_lm" "${tiny[@]}" --zero 1 --steps 3 --out resumed > r1.txt 2>&1 &&
   "$train_lm" "${tiny[@]}" --steps 6 --resume --out resumed > r2.txt 2>&1; then
  grep -q "resumed from resumed/checkpoint.safetensors at step 3" r2.txt || fail "resume: no 'resumed from' line"
  same_losses one/loss.csv resumed/loss.csv || fail "resume: losses differ from the uninterrupted run"
  [ "$(tail -n +2 resumed/loss.csv | cut -d, -f1 | tr '\n' ' ')" = "1 2 3 4 5 6 " ] || fail "resume: loss.csv steps"
  echo "ok: a 2-rank ZeRO-1 checkpoint resumes in one process on the uninterrupted curve"
else
  fail "the 2-rank run or the 1-process resume failed"; cat r1.txt r2.txt
fi

# --device cuda with 2 ranks on a machine without a usable GPU (or a build without NCCL): refused, one error line
if ! nvidia-smi -L > /dev/null 2>&1; then
  "${mpi[@]}" "$train_lm" "${tiny[@]}" --steps 6 --device cuda --out gpu > gpu.txt 2>&1 &&
    fail "--device cuda with 2 ranks and no GPU ran"
  if [ "$(grep -c '^train_lm: error: --device cuda' gpu.txt)" -eq 1 ]; then
    echo "ok: --device cuda with 2 ranks and no GPU is refused on one line"
  else
    fail "--device cuda with 2 ranks and no GPU: not one error line"; cat gpu.txt
  fi
fi

echo "$failures failed"
[ "$failures" -eq 0 ]
