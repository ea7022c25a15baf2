#!/usr/bin/env bash
# Fuzzes every target of a build for a bounded time, starting from the seed corpus (copied, so the
# repository's corpus is not changed). Fails on the first finding. Usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
seconds=${2:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for seeds in "$here"/corpus/*/; do
  name=$(basename "$seeds")
  exe="$build/tests/fuzz/$name"
  [ -x "$exe" ] || { echo "fuzz: $exe was not built"; exit 1; }
  mkdir -p "$work/$name"
  cp "$seeds"/* "$work/$name/"
  echo "== $name: ${seconds} s"
  log="$work/$name.log"
  if ! (cd "$work" && "$exe" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$work/$name" > "$log" 2>&1); then
    tail -n 60 "$log"
    echo "fuzz: $name found a problem (the input is printed above)"
    exit 1
  fi
  grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss_mb" "$log" | tail -n 3
done
