#!/usr/bin/env bash
# The main job: installs the dependencies, builds train_lm (Release) and trains a small byte-level RetNet
# on the embedded public-domain corpus (a few minutes on 2 cores), showing the loss falling and a sample.
# The embedded text is small (21 KB): the model memorises it, so the held-out loss bottoms out near step 100
# and then rises while the training loss keeps falling; give a larger text with --data for real generalisation.
# Extra arguments go to train_lm, e.g.  scripts/run.sh --steps 1000 --data my.txt
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=build
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DRETNET_CUDA=OFF > /dev/null
cmake --build "$build" -j "$(nproc)" --target train_lm
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec "$build/examples/train_lm" --out "$build/train_lm_out" "$@"
