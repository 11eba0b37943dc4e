#!/usr/bin/env bash
# Runs two builds of the load generators interleaved, bench by bench: before, after, before,
# after… so that drifting load from other tenants of the machine hits both builds alike. Each
# run's report goes to OUT/<bench>-<side>-<round>.md; scripts/bench_compare.py turns them into
# the before/after ratio table recorded in BENCHMARKS.md.
#
# Usage: scripts/bench-interleaved.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR [ROUNDS]
# where each BIN_DIR holds `loadgen`, `profilegen` and `recgen` built with
#   cargo build --release -p consentgate-bench --bins
# at the commit in question (a git worktree per commit keeps the two builds apart).
set -euo pipefail
before=$1
after=$2
out=$3
rounds=${4:-2}
mkdir -p "$out"
for bench in loadgen profilegen recgen; do
  for round in $(seq 1 "$rounds"); do
    for side in before after; do
      dir=$before
      [ "$side" = after ] && dir=$after
      file="$out/$bench-$side-$round.md"
      : > "$file"
      echo "$(date -u +%H:%M:%S) $bench $side round $round"
      "$dir/$bench" --write "$file" > "$out/$bench-$side-$round.log" 2>&1
    done
  done
done
