#!/usr/bin/env bash
# Table-driven test of the programs' bad inputs: each case runs a built program with its arguments and checks
# the exit status, words of the message, and that a failure is reported as exactly one line on stderr.
# Then the cases that need state: shell injection through --out, a locked output directory, temporary files of
# an interrupted run, loss.csv and the best checkpoint across --resume.
# Usage: bad_inputs.sh BIN_DIR (the folder holding train_lm, generate, retnet-logits and retnet-eval)
set -uo pipefail
bin=$(cd "$1" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
failures=0
cases=0

# expect STATUS 'WORD|WORD...' PROGRAM ARGS...
expect() {
  local want=$1 words=$2 prog=$3
  shift 3
  cases=$((cases + 1))
  "$bin/$prog" "$@" > out.txt 2> err.txt
  local got=$?
  local all
  all=$(cat out.txt err.txt)
  local why=""
  [ "$got" -eq "$want" ] || why="exit status $got, expected $want"
  if [ -z "$why" ]; then
    IFS='|' read -r -a list <<< "$words"
    for w in "${list[@]}"; do
      [[ "$all" == *"$w"* ]] || { why="output lacks '$w'"; break; }
    done
  fi
  if [ -z "$why" ] && [ "$want" -ne 0 ]; then
    [ "$(wc -l < err.txt)" -eq 1 ] || why="the error is not one line on stderr"
  fi
  if [ -n "$why" ]; then
    failures=$((failures + 1))
    echo "FAIL: $prog $*: $why"
    sed 's/^/    | /' err.txt | head -20
  else
    echo "ok: $prog $* -> $got"
  fi
}

# A tiny model that trains in well under a second.
tiny=(--batch 2 --seq 16 --layers 1 --dim 8 --heads 2 --value-dim 8 --ffn 8 --chunk 8 --max-new 0)
mkdir adir
echo "not a directory" > afile
big=9223372036854775807

# ---- train_lm: command line
expect 2 "--seq" train_lm --seq 0
expect 2 "--seq" train_lm --seq $big
expect 2 "--seq" train_lm --seq 99999999999999999999999
expect 2 "--batch" train_lm --batch $big
expect 2 "--batch" train_lm --batch 1000000000
expect 2 "--steps" train_lm --steps 0
expect 2 "--steps" train_lm --steps -3
expect 2 "--temperature|nan" train_lm --temperature nan
expect 2 "--lr|inf" train_lm --lr inf
expect 2 "--dropout" train_lm --dropout 1
expect 2 "--form" train_lm --form sideways
expect 2 "--bogus" train_lm --bogus
expect 2 "--steps" train_lm --steps
expect 2 "--accum" train_lm --batch 3 --accum 2
expect 2 "--device|gpu" train_lm --device gpu
expect 2 "--zero|2" train_lm --zero 2
expect 2 "--bucket-mb" train_lm --bucket-mb 0
expect 2 "--bucket-mb|nan" train_lm --bucket-mb nan
expect 2 "--tf32|--device cuda only" train_lm --tf32
if [ "${RETNET_TRAIN_LM_CUDA:-OFF}" != "ON" ]; then
  expect 1 "--device cuda|no CUDA support" train_lm --device cuda --out dc "${tiny[@]}"
fi
expect 0 "Usage: train_lm|--steps|--resume|--device|--zero|--bucket-mb" train_lm --help
expect 0 "train_lm (retnet " train_lm --version
# ---- train_lm: sizes and files
expect 1 "would need about|of memory" train_lm --batch 1048576 --seq 128 --out mem
expect 1 "parameters, more than the supported maximum" train_lm --dim 65536 --layers 4096 --heads 2 --out mem
expect 1 "/proc/x|cannot create the output directory" train_lm --out /proc/x "${tiny[@]}"
expect 1 "afile/sub|cannot create the output directory" train_lm --out afile/sub "${tiny[@]}"
expect 1 "/dev/zero: is not a regular file" train_lm --data /dev/zero --out dz "${tiny[@]}"
expect 1 "adir: is a directory" train_lm --data adir --out dd "${tiny[@]}"
expect 1 "nosuch.txt|cannot open" train_lm --data nosuch.txt --out dn "${tiny[@]}"
printf 'short' > short.txt
expect 1 "the text has 5 bytes" train_lm --data short.txt --out ds "${tiny[@]}"
expect 1 "nosuch.safetensors|cannot open" train_lm --resume nosuch.safetensors --out dr "${tiny[@]}"
expect 1 "adir: is a directory" train_lm --resume adir --out dr "${tiny[@]}"

# A training checkpoint whose metadata claims dim 2^40 (no tensors needed: refused from the header).
hostile_ckpt() {
  local cfg='{\"decoder_embed_dim\":1099511627776,\"decoder_value_embed_dim\":16,\"decoder_retention_heads\":2,\"decoder_ffn_embed_dim\":8,\"decoder_layers\":1,\"vocab_size\":256}'
  local header="{\"__metadata__\":{\"format\":\"retnet-training-checkpoint/1\",\"step\":\"1\",\"data_position\":\"0\",\"adam_steps\":\"1\",\"config\":\"$cfg\"}}"
  local n=${#header}
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((n & 255)) $((n >> 8 & 255)) $((n >> 16 & 255)) $((n >> 24 & 255)))\\x00\\x00\\x00\\x00" > "$1"
  printf '%s' "$header" >> "$1"
}
hostile_ckpt hostile.safetensors
expect 1 "hostile.safetensors|'decoder_embed_dim' = 1099511627776 exceeds" train_lm --resume hostile.safetensors --out dh "${tiny[@]}"

# ---- generate
expect 2 "exactly one of --weights and --model" generate --prompt hi
expect 2 "--samples" generate --weights x --prompt hi --samples 1000000000
expect 2 "--temperature" generate --weights x --prompt hi --temperature nan
expect 2 "--top-p" generate --weights x --prompt hi --top-p 0
expect 2 "exactly one of" generate --weights x
expect 2 "--prompt excludes --tokens" generate --weights x --prompt a --tokens 1
expect 2 "--max-new" generate --weights x --prompt a --max-new -1
expect 2 "--device" generate --weights x --prompt a --device gpu
expect 2 "--samples applies to --prompt" generate --weights x --batch-file p.txt --samples 2
expect 2 "CPU-only" generate --weights x --prompt a --device cuda --dtype double
expect 2 "excludes" generate --weights x --prompt a --batch-file p.txt
expect 0 "Usage: generate|--weights" generate --help
expect 0 "generate (retnet " generate --version
expect 1 "adir: is a directory, expected a safetensors file" generate --weights adir --prompt hi
expect 1 "afile: header length" generate --weights afile --prompt hi
expect 1 "nosuch|cannot open" generate --weights nosuch --prompt hi
expect 1 "hostile.safetensors|'decoder_embed_dim' = 1099511627776 exceeds" generate --weights hostile.safetensors --prompt hi

# model directories (--model): fla's format with a refused feature, fla's format without weights, not a directory
mkdir flaconv flanow
printf '{"model_type": "retnet", "hidden_size": 8, "num_heads": 2, "use_short_conv": true}' > flaconv/config.json
printf '{"model_type": "retnet", "hidden_size": 8, "num_heads": 2, "vocab_size": 10}' > flanow/config.json
expect 2 "--weights excludes --model|excludes" generate --weights x --model adir --prompt hi
expect 2 "--config goes with --weights" generate --model adir --config c.json --prompt hi
expect 1 "afile: --model expects a directory" generate --model afile --prompt hi
expect 1 "adir: no config.json" generate --model adir --prompt hi
expect 1 "'use_short_conv' = true" generate --model flaconv --prompt hi
expect 1 "neither model.safetensors nor model.safetensors.index.json" generate --model flanow --prompt hi
# ---- retnet-eval
expect 2 "--model is required" retnet-eval --text t.txt
expect 2 "--chunk" retnet-eval --model flanow --text t.txt --chunk 0
expect 0 "Usage: retnet-eval" retnet-eval --help
expect 1 "afile: --model expects a directory" retnet-eval --model afile --text afile
expect 1 "'use_short_conv' = true" retnet-eval --model flaconv --text afile
expect 1 "no tokenizer.json" retnet-eval --model flanow --text afile
# ---- retnet-logits
expect 2 "give --config and --weights, or --model" retnet-logits --config c --tokens t --out o --mode parallel
expect 1 "'use_short_conv' = true" retnet-logits --model flaconv --tokens t --out o --mode parallel
expect 2 "is required" retnet-logits --config c.json
expect 2 "--mode" retnet-logits --config c --weights w --tokens t --out o --mode sideways
expect 2 "--dtype" retnet-logits --config c --weights w --tokens t --out o --mode parallel --dtype half
expect 0 "Usage: retnet-logits" retnet-logits --help
printf '{"decoder_embed_dim": 1099511627776, "vocab_size": 256}' > huge.json
expect 1 "huge.json|'decoder_embed_dim' = 1099511627776 exceeds" retnet-logits --config huge.json --weights w --tokens t --out o --mode parallel
printf '{"decoder_layers": 1099511627776, "vocab_size": 4611686018427387904}' > huge2.json
expect 1 "huge2.json|exceeds" retnet-logits --config huge2.json --weights w --tokens t --out o --mode parallel
expect 1 "adir: is a directory, expected a configuration file" retnet-logits --config adir --weights w --tokens t --out o --mode parallel
expect 1 "/dev/zero: is not a regular file" retnet-logits --config /dev/zero --weights w --tokens t --out o --mode parallel

# ---- shell injection through --out: no shell may ever see the path
cases=$((cases + 1))
"$bin/train_lm" --steps 2 "${tiny[@]}" --out "o/x';touch INJECTED;'" > /dev/null 2>&1
if [ -e INJECTED ] || [ -e "o/INJECTED" ]; then
  failures=$((failures + 1)); echo "FAIL: --out with a quote ran a shell command"
elif [ ! -f "o/x';touch INJECTED;'/checkpoint.safetensors" ]; then
  failures=$((failures + 1)); echo "FAIL: the run with a quoted --out did not write its checkpoint"
else
  echo "ok: --out with shell metacharacters is only a path"
fi

# ---- a second run on a locked output directory is refused (flock(1) holds the same lock a run holds)
mkdir locked
if command -v flock > /dev/null; then
  flock locked/.lock sleep 30 &
  holder=$!
  sleep 0.3
  expect 1 "another train_lm run is using this directory" train_lm --steps 2 --out locked "${tiny[@]}"
  kill "$holder" 2> /dev/null
  wait "$holder" 2> /dev/null
fi

# ---- temporary files of an interrupted run are removed by the next run
mkdir stale
head -c 1000 /dev/zero > stale/checkpoint.safetensors.tmp.AbC123
expect 0 "removed 1 temporary file" train_lm --steps 2 --out stale "${tiny[@]}"
cases=$((cases + 1))
if [ -e stale/checkpoint.safetensors.tmp.AbC123 ]; then failures=$((failures + 1)); echo "FAIL: stale temporary kept"; fi

# ---- loss.csv and the best checkpoint across a resume
expect 0 "best held-out loss" train_lm --steps 4 --ckpt-every 2 --eval-every 1 --out r "${tiny[@]}"
printf '5,1.25' >> r/loss.csv  # half a row, as a kill mid-write leaves it
printf '9,1,,1,1,1,1\n' >> r/loss.csv  # a row past the checkpoint
expect 0 "resumed from|at step 4" train_lm --steps 6 --ckpt-every 2 --eval-every 1 --resume --out r "${tiny[@]}"
cases=$((cases + 1))
steps=$(tail -n +2 r/loss.csv | cut -d, -f1 | tr '\n' ' ')
if [ "$steps" != "1 2 3 4 5 6 " ] || [ "$(head -1 r/loss.csv)" != "step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s" ]; then
  failures=$((failures + 1)); echo "FAIL: loss.csv after resume has steps '$steps'"; cat r/loss.csv
else
  echo "ok: loss.csv holds steps 1..6 once each after a resume"
fi
cases=$((cases + 1))
if [ ! -f r/best.safetensors ]; then failures=$((failures + 1)); echo "FAIL: no best.safetensors"; else echo "ok: best.safetensors written"; fi
expect 0 "nothing left to train" train_lm --steps 3 --resume --out r "${tiny[@]}"
expect 0 "" generate --weights r/best.safetensors --prompt "The " --max-new 4
expect 0 "" generate --weights r/checkpoint.safetensors --tokens 1,2,3 --max-new 2 --greedy
printf 'The \nAnd \n\nIn the beginning\n' > prompts.txt
expect 0 "--- prompt 2 ---" generate --weights r/best.safetensors --batch-file prompts.txt --max-new 4 --slots 2
: > empty.txt
expect 1 "empty.txt: --batch-file holds no prompt" generate --weights r/best.safetensors --batch-file empty.txt

echo "$cases cases, $failures failed"
[ "$failures" -eq 0 ]
