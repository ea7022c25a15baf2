#!/usr/bin/env bash
# The main job: installs the dependencies, builds train_lm (Release) and trains a small byte-level RetNet on the
# King James Bible (4 MB of public-domain text from Debian's bible-kjv package), about 3.5 minutes on 2 cores, then
# prints a sample. The model sees less than one pass over the text, so the held-out loss falls to the end.
# Without the package (its `bible` program) it trains on the small corpus embedded in train_lm, briefly: the model
# would memorise those 21 KB if it trained longer.
# Extra arguments go to train_lm and override the defaults, e.g.  scripts/run.sh --steps 3000 --data my.txt
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=build
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DRETNET_CUDA=OFF > /dev/null
cmake --build "$build" -j "$(nproc)" --target train_lm
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

user=("$@")
args=()
# Adds a default (flag and value) unless the user gave that flag.
default() {
  local a
  for a in "${user[@]}"; do
    if [ "$a" = "$1" ] || [[ "$a" == "$1="* ]]; then return 0; fi
  done
  args+=("$@")
}
default --out "$build/train_lm_out"
text="$build/kjv.txt"
kjv=0
for a in "${user[@]}"; do [[ "$a" == --data* ]] && kjv=2; done
# One verse per line (-l 1000: no wrapping, whatever the terminal's width), the verse numbers dropped.
if [ "$kjv" = 0 ] && command -v bible > /dev/null 2>&1 && bible -l 1000 gen1:1-rev22:21 2> /dev/null |
  sed -E 's/^ +[0-9]+ //' > "$text.tmp" && [ "$(wc -c < "$text.tmp")" -gt 1000000 ]; then
  mv "$text.tmp" "$text"
  kjv=1
  default --data "$text"
  default --prompt "And God said"
fi
rm -f "$text.tmp"
if [ "$kjv" = 0 ]; then
  echo "run.sh: the King James text (Debian package bible-kjv) is not installed; training on the embedded corpus"
  default --steps 80
  default --eval-every 20
else
  default --steps 1000
  default --warmup 50
  default --eval-every 100
fi
exec "$build/examples/train_lm" "${args[@]}" "$@"
